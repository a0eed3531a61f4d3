// Package testbed makes real hosts on this machine for the integration tests,
// the benchmarks and the demo: each host is a Linux network namespace on a
// private bridge, running its own OpenSSH sshd with its own host key and
// reached with key auth and a known_hosts file, exactly as the operator
// reaches real servers.
//
// Every host sees the machine's file system (so Erlang, Elixir and git are
// installed everywhere at once) except three private mounts: /root (its home:
// authorized_keys, build workspace, Erlang cookie), /srv (where releases are
// deployed) and /run (sshd's privilege-separation dir, the HAProxy socket).
// So every host can deploy to the same path without seeing the others.
//
// It needs root (network namespaces, mounts). Each run claims a slot: a /24
// in 10.213.0.0/16, a bridge otb<slot> and namespaces otb<slot>-<host>,
// held by a lock file for the life of the process, so test packages running
// in parallel never collide and leftovers of a crashed run are recognised
// (their slot lock is free) and removed by the next run.
package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Bed is one set of hosts on one bridge.
type Bed struct {
	// Dir holds every file of the bed: per-host homes and keys, the client
	// key, known_hosts and an ssh_config for people.
	Dir string
	// Bridge is the bridge's name in the root namespace.
	Bridge string
	// Gateway is the bridge's own address: the operator's side of the subnet.
	Gateway netip.Addr
	// ClientKey is the path of the operator's private key (ed25519, no
	// passphrase), authorised on every host for root.
	ClientKey string
	// KnownHosts is the path of a known_hosts file listing every host's key.
	KnownHosts string

	hosts []*Host
	slot  *slot
	logf  func(format string, args ...any)

	closeOnce sync.Once
	closeErr  error
}

// Host is one machine of the bed.
type Host struct {
	// Name is the host's name in the bed (and in test manifests).
	Name string
	// Addr is its address on the bridge; sshd listens on Addr:22.
	Addr netip.Addr
	// Namespace is the network namespace's name.
	Namespace string
	// Dir holds the host's private files: root/ (its /root), srv/ (its /srv),
	// its sshd config, host key and log.
	Dir string
	// HostKey is the public half of its sshd host key, in authorized_keys
	// format.
	HostKey string

	bed    *Bed
	veth   string // root-namespace end of its link to the bridge
	keeper *exec.Cmd
	sshd   *exec.Cmd
	mu     sync.Mutex
}

// Options configures New.
type Options struct {
	// Dir is where the bed keeps its files; it must exist. Tests pass
	// t.TempDir().
	Dir string
	// Hosts names the hosts to make, in order. Names are short words such as
	// build, n1, n2, n3, lb.
	Hosts []string
	// Logf, when set, receives a line per notable step.
	Logf func(format string, args ...any)
}

// ErrNotRoot is returned by New when the process is not root: network
// namespaces, veth pairs and bind mounts need it.
var ErrNotRoot = errors.New("testbed: the real-host tests need root (ip netns, veth pairs, bind mounts); run `make test` as root")

// New makes the hosts of opts and starts their sshd. On error nothing is left
// behind. The caller must Close the bed.
func New(ctx context.Context, opts Options) (_ *Bed, err error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	if len(opts.Hosts) == 0 || len(opts.Hosts) > 200 {
		return nil, fmt.Errorf("testbed: want 1 to 200 hosts, got %d", len(opts.Hosts))
	}
	seen := map[string]bool{}
	for _, name := range opts.Hosts {
		if !validName(name) {
			return nil, fmt.Errorf("testbed: host name %q: use 1-12 lowercase letters and digits", name)
		}
		if seen[name] {
			return nil, fmt.Errorf("testbed: host name %q given twice", name)
		}
		seen[name] = true
	}
	for _, tool := range []string{"ip", "nsenter", "/usr/sbin/sshd"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("testbed: %s not found (scripts/install-deps.sh installs it): %w", tool, err)
		}
	}
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("testbed: %w", err)
	}
	Sweep(ctx, logf)
	s, err := claimSlot(ctx, logf)
	if err != nil {
		return nil, err
	}
	b := &Bed{
		Dir:     dir,
		Bridge:  fmt.Sprintf("otb%d", s.n),
		Gateway: netip.AddrFrom4([4]byte{10, 213, byte(s.n), 1}),
		slot:    s,
		logf:    logf,
	}
	defer func() {
		if err != nil {
			b.Close()
		}
	}()
	if err := b.writeClientKey(); err != nil {
		return nil, err
	}
	if err := b.makeBridge(ctx); err != nil {
		return nil, err
	}
	for i, name := range opts.Hosts {
		h := &Host{
			Name:      name,
			Addr:      netip.AddrFrom4([4]byte{10, 213, byte(s.n), byte(10 + i)}),
			Namespace: fmt.Sprintf("otb%d-%s", s.n, name),
			Dir:       filepath.Join(dir, "hosts", name),
			bed:       b,
			veth:      fmt.Sprintf("otb%dv%d", s.n, i),
		}
		b.hosts = append(b.hosts, h)
		if err := h.create(ctx); err != nil {
			return nil, fmt.Errorf("testbed: host %s: %w", name, err)
		}
	}
	if err := b.writeKnownHosts(); err != nil {
		return nil, err
	}
	if err := b.writeSSHConfig(); err != nil {
		return nil, err
	}
	for _, h := range b.hosts {
		if err := h.StartSSHD(ctx); err != nil {
			return nil, fmt.Errorf("testbed: host %s: %w", h.Name, err)
		}
	}
	logf("testbed: %d hosts up on %s (%s/24)", len(b.hosts), b.Bridge, b.Gateway)
	return b, nil
}

// Host returns the host called name; it panics on an unknown name, which is
// a mistake in the test, not a condition to handle.
func (b *Bed) Host(name string) *Host {
	for _, h := range b.hosts {
		if h.Name == name {
			return h
		}
	}
	panic(fmt.Sprintf("testbed: no host %q", name))
}

// Hosts returns the bed's hosts in the order they were asked for.
func (b *Bed) Hosts() []*Host { return append([]*Host(nil), b.hosts...) }

// Close stops every process on every host and removes the namespaces, links
// and bridge. It is safe to call more than once.
func (b *Bed) Close() error {
	b.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var errs []error
		for _, h := range b.hosts {
			if err := removeNamespace(ctx, h.Namespace); err != nil {
				errs = append(errs, err)
			}
			// The kernel frees a deleted namespace's links lazily; delete
			// ours now so the next run finds a clean machine.
			if err := removeLink(ctx, h.veth); err != nil {
				errs = append(errs, err)
			}
			h.reap()
		}
		if err := removeLink(ctx, b.Bridge); err != nil {
			errs = append(errs, err)
		}
		if b.slot != nil {
			b.slot.release()
		}
		b.closeErr = errors.Join(errs...)
	})
	return b.closeErr
}

func (b *Bed) makeBridge(ctx context.Context) error {
	prefix := netip.PrefixFrom(b.Gateway, 24).String()
	return run(ctx, "ip", "link", "add", b.Bridge, "type", "bridge").
		then(ctx, "ip", "addr", "add", prefix, "dev", b.Bridge).
		then(ctx, "ip", "link", "set", b.Bridge, "up").err
}

func (h *Host) create(ctx context.Context) error {
	for _, d := range []string{"root/.ssh", "srv"} {
		if err := os.MkdirAll(filepath.Join(h.Dir, d), 0o700); err != nil {
			return err
		}
	}
	// sshd's StrictModes wants the home and .ssh private to root.
	if err := os.Chmod(filepath.Join(h.Dir, "root"), 0o700); err != nil {
		return err
	}
	if err := h.writeHostKey(); err != nil {
		return err
	}
	pub, err := os.ReadFile(h.bed.ClientKey + ".pub")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(h.Dir, "root/.ssh/authorized_keys"), pub, 0o600); err != nil {
		return err
	}
	peer := h.veth + "p"
	addr := netip.PrefixFrom(h.Addr, 24).String()
	r := run(ctx, "ip", "netns", "add", h.Namespace).
		then(ctx, "ip", "link", "add", h.veth, "type", "veth", "peer", "name", peer).
		then(ctx, "ip", "link", "set", peer, "netns", h.Namespace).
		then(ctx, "ip", "-n", h.Namespace, "link", "set", peer, "name", "eth0").
		then(ctx, "ip", "-n", h.Namespace, "addr", "add", addr, "dev", "eth0").
		then(ctx, "ip", "-n", h.Namespace, "link", "set", "eth0", "up").
		// Distributed Erlang talks to epmd on 127.0.0.1: without lo up it
		// hangs with "register/listen error: etimedout".
		then(ctx, "ip", "-n", h.Namespace, "link", "set", "lo", "up").
		then(ctx, "ip", "link", "set", h.veth, "master", h.bed.Bridge).
		then(ctx, "ip", "link", "set", h.veth, "up")
	if r.err != nil {
		return r.err
	}
	return h.startKeeper(ctx)
}

// startKeeper starts the process that owns the host's mount namespace: `ip
// netns exec` gives its command a private mount namespace, where the keeper
// mounts the host's /run, /root and /srv and then sleeps. sshd and anything
// the harness runs on the host later join that namespace with nsenter, so
// they all see the same private mounts, and restarting sshd does not lose
// them.
func (h *Host) startKeeper(ctx context.Context) error {
	script := strings.Join([]string{
		"mount -t tmpfs -o mode=755 tmpfs /run",
		"mkdir -m 755 /run/sshd",
		"mount --bind " + shellQuote(filepath.Join(h.Dir, "root")) + " /root",
		"mount --bind " + shellQuote(filepath.Join(h.Dir, "srv")) + " /srv",
		"touch /run/testbed-ready",
		"exec sleep infinity",
	}, " && ")
	cmd := exec.Command("ip", "netns", "exec", h.Namespace, "sh", "-c", script)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start keeper: %w", err)
	}
	h.keeper = cmd
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	ready := fmt.Sprintf("/proc/%d/root/run/testbed-ready", cmd.Process.Pid)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			go func() { <-done }()
			return nil
		}
		select {
		case err := <-done:
			return fmt.Errorf("keeper exited: %v: %s", err, strings.TrimSpace(stderr.String()))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("keeper not ready after 10s: %s", strings.TrimSpace(stderr.String()))
		}
	}
}

// StartSSHD starts the host's sshd (after StopSSHD, or at creation) and waits
// until it accepts TCP connections.
func (h *Host) StartSSHD(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sshd != nil {
		return fmt.Errorf("sshd already running")
	}
	if err := h.writeSSHDConfig(); err != nil {
		return err
	}
	cmd := h.Command("/usr/sbin/sshd", "-D", "-f", filepath.Join(h.Dir, "sshd_config"), "-E", filepath.Join(h.Dir, "sshd.log"))
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start sshd: %w", err)
	}
	h.sshd = cmd
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	addr := netip.AddrPortFrom(h.Addr, 22).String()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			h.sshd = nil
			log, _ := os.ReadFile(filepath.Join(h.Dir, "sshd.log"))
			return fmt.Errorf("sshd exited at start: %s", tail(string(log), 500))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sshd not listening on %s after 10s: %w", addr, err)
		}
	}
}

// StopSSHD stops the host's sshd listener as `systemctl stop ssh` would:
// sessions already open and processes started from them go on.
func (h *Host) StopSSHD() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sshd == nil {
		return nil
	}
	p := h.sshd.Process
	h.sshd = nil
	p.Signal(os.Interrupt)
	// sshd -D exits on SIGTERM; wait until the port is closed.
	p.Kill()
	addr := netip.AddrPortFrom(h.Addr, 22).String()
	for i := 0; i < 200; i++ {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err != nil {
			return nil
		}
		c.Close()
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("sshd still listening on %s", addr)
}

// Reboot kills every process of the host at once (KILL: its sshd, the
// sessions it runs and whatever they started, the app and epmd too), as a
// crash or a power cut would, waits down for the given time, and starts
// sshd again as the host's boot would. Nothing else comes back by itself:
// there is no init to start the app. Files stay as they were (its disks).
func (h *Host) Reboot(ctx context.Context, down time.Duration) error {
	h.mu.Lock()
	keeper := h.keeper.Process.Pid
	sshd := h.sshd
	h.sshd = nil
	h.mu.Unlock()
	for _, pid := range namespacePIDs(ctx, h.Namespace) {
		if pid != fmt.Sprint(keeper) {
			run(ctx, "kill", "-KILL", pid)
		}
	}
	if sshd != nil {
		sshd.Process.Kill()
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(down):
	}
	return h.StartSSHD(ctx)
}

// Cut takes the host off the network (its link to the bridge goes down), as
// a failed switch or a partition would: packets to and from it are lost.
func (h *Host) Cut(ctx context.Context) error {
	return run(ctx, "ip", "link", "set", h.veth, "down").err
}

// Restore brings a cut host back onto the network.
func (h *Host) Restore(ctx context.Context) error {
	return run(ctx, "ip", "link", "set", h.veth, "up").err
}

// Command returns a command that runs on the host as root, in its network
// and mount namespaces, without SSH: for the harness's own set-up and checks
// (starting HAProxy, looking at processes), never for what the operator does.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	argv := append([]string{"-t", fmt.Sprint(h.keeper.Process.Pid), "-m", "-n", "--", name}, args...)
	cmd := exec.Command("nsenter", argv...)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"}
	return cmd
}

// Sh runs a shell script on the host through Command and returns its
// combined output; an error carries that output.
func (h *Host) Sh(ctx context.Context, script string) (string, error) {
	cmd := h.Command("sh", "-c", script)
	out, err := runCmd(ctx, cmd)
	if err != nil {
		return out, fmt.Errorf("on %s: %s: %w: %s", h.Name, script, err, tail(out, 1000))
	}
	return out, nil
}

// Path returns where a path of the host's private mounts (/root/..., /srv/...)
// lives on this machine, for a harness that inspects a host's files.
func (h *Host) Path(p string) string {
	for _, m := range []string{"/root", "/srv"} {
		if p == m || strings.HasPrefix(p, m+"/") {
			return filepath.Join(h.Dir, strings.TrimPrefix(m, "/"), strings.TrimPrefix(p, m))
		}
	}
	return p
}

// reap forgets the host's processes after its namespace has been emptied.
func (h *Host) reap() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range []*exec.Cmd{h.sshd, h.keeper} {
		if c != nil && c.Process != nil {
			c.Process.Kill()
		}
	}
	h.sshd, h.keeper = nil, nil
}

// removeNamespace kills every process in the namespace (TERM, then KILL),
// then deletes it, which also removes its end of the veth pair.
func removeNamespace(ctx context.Context, ns string) error {
	for attempt := 0; attempt < 3; attempt++ {
		pids := namespacePIDs(ctx, ns)
		if len(pids) == 0 {
			break
		}
		sig := "-TERM"
		if attempt > 0 {
			sig = "-KILL"
		}
		args := append([]string{sig}, pids...)
		execCommand("kill", args...).Run()
		for i := 0; i < 50 && len(namespacePIDs(ctx, ns)) > 0; i++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if left := namespacePIDs(ctx, ns); len(left) > 0 {
		return fmt.Errorf("testbed: namespace %s: processes %v outlived KILL", ns, left)
	}
	if err := run(ctx, "ip", "netns", "del", ns).err; err != nil && namespaceExists(ctx, ns) {
		return err
	}
	return nil
}

func namespacePIDs(ctx context.Context, ns string) []string {
	out, _ := exec.CommandContext(ctx, "ip", "netns", "pids", ns).Output()
	return strings.Fields(string(out))
}

func namespaceExists(ctx context.Context, ns string) bool {
	for _, n := range listNamespaces(ctx) {
		if n == ns {
			return true
		}
	}
	return false
}

func listNamespaces(ctx context.Context) []string {
	out, _ := exec.CommandContext(ctx, "ip", "netns", "list").Output()
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

// removeLink deletes a link; one already gone is fine, since the kernel
// removes a deleted namespace's veth pair by itself, at a moment of its own.
func removeLink(ctx context.Context, name string) error {
	out, err := runCmd(ctx, exec.Command("ip", "link", "del", name))
	// Either message means the link is gone: "No such device" when the
	// kernel freed it (its namespace was just deleted) between ip's lookup
	// and its delete.
	if err != nil && !strings.Contains(out, "Cannot find device") && !strings.Contains(out, "No such device") {
		return fmt.Errorf("ip link del %s: %w: %s", name, err, strings.TrimSpace(out))
	}
	return nil
}

func validName(s string) bool {
	if s == "" || len(s) > 12 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// chain runs commands one after another until one fails.
type chain struct{ err error }

func run(ctx context.Context, name string, args ...string) chain {
	return chain{}.then(ctx, name, args...)
}

func (c chain) then(ctx context.Context, name string, args ...string) chain {
	if c.err != nil {
		return c
	}
	out, err := runCmd(ctx, exec.Command(name, args...))
	if err != nil {
		return chain{fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out))}
	}
	return c
}

// runCmd runs cmd, killing it when ctx ends, and returns its combined output.
func runCmd(ctx context.Context, cmd *exec.Cmd) (string, error) {
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-ctx.Done():
		cmd.Process.Kill()
		<-done
		return out.String(), ctx.Err()
	}
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// shellQuote quotes s for sh; the harness's own paths only.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

var execCommand = exec.Command
