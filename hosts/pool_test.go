package hosts

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clusterops/operator/testbed"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// startNoStatusServer serves SSH on loopback and ends every command's
// session without an exit status, which OpenSSH never does on its own but
// RFC 4254 allows. It returns the target and its known_hosts line.
func startNoStatusServer(t *testing.T) (Target, string) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(ssh.ConnMetadata, ssh.PublicKey) (*ssh.Permissions, error) { return nil, nil }}
	cfg.AddHostKey(signer)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_, chans, reqs, err := ssh.NewServerConn(nc, cfg)
				if err != nil {
					nc.Close()
					return
				}
				go ssh.DiscardRequests(reqs)
				for nch := range chans {
					ch, creqs, err := nch.Accept()
					if err != nil {
						continue
					}
					go func() {
						for r := range creqs {
							r.Reply(r.Type == "exec", nil)
							if r.Type == "exec" {
								io.WriteString(ch.Stderr(), "going away\n")
								ch.Close()
							}
						}
					}()
				}
			}()
		}
	}()
	addr := ln.Addr().(*net.TCPAddr)
	tg := Target{Name: "fake", Address: "127.0.0.1", Port: addr.Port, User: "root"}
	return tg, knownhosts.Line([]string{knownhosts.Normalize(tg.Addr())}, signer.PublicKey())
}

func TestRunOutcomes(t *testing.T) {
	b := testbed.Start(t, "n1", "n2")
	fake, fakeLine := startNoStatusServer(t)
	bedHosts, err := os.ReadFile(b.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	p := newPool(t, b, func(c *Config) {
		c.KnownHosts = writeKnownHosts(t, strings.TrimSpace(string(bedHosts)), fakeLine)
		c.DialTimeout = time.Second
	})
	n1, n2 := target(b, "n1"), target(b, "n2")
	if err := b.Host("n2").Cut(t.Context()); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		target Target
		cmd    Cmd
		want   string
		stderr string // the CommandError's stderr tail
	}{
		{"exit 0", n1, Cmd{Args: []string{"true"}}, "ok", ""},
		{"exit 3", n1, ShellCmd("", "echo first >&2; echo it broke >&2; exit 3", nil), "exit 3", "first\nit broke\n"},
		{"killed by a signal", n1, ShellCmd("", "echo dying >&2; kill -9 $$", nil), "signal KILL", "dying\n"},
		{"no such program", n1, Cmd{Args: []string{"no-such-program-here"}}, "exit 127", ""},
		{"no exit status", fake, Cmd{Args: []string{"anything"}}, "no exit status", "going away\n"},
		{"host cut off", n2, Cmd{Args: []string{"true"}}, "conn dial", ""},
		{"invalid command", n1, Cmd{Args: []string{"true"}, Env: map[string]string{"NOT-A-NAME": "x"}}, `other: run export 'NOT-A-NAME=…' && exec 'true' on n1: environment name "NOT-A-NAME" is not a shell variable name`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := p.Run(t.Context(), tt.target, tt.cmd, Exec{Step: "test"})
			if got := outcome(err); got != tt.want {
				t.Fatalf("got %s (%v), want %s", got, err, tt.want)
			}
			var ce *CommandError
			if errors.As(err, &ce) && tt.stderr != "" {
				if ce.Stderr != tt.stderr || ce.Host != tt.target.Name || ce.Cmd != tt.cmd.Redacted() {
					t.Errorf("got host %q, cmd %q, stderr %q; want %q, %q, %q", ce.Host, ce.Cmd, ce.Stderr, tt.target.Name, tt.cmd.Redacted(), tt.stderr)
				}
			}
			t.Logf("%v", err)
		})
	}
	t.Run("kinds are distinct with errors.As", func(t *testing.T) {
		err := p.Run(t.Context(), fake, Cmd{Args: []string{"x"}}, Exec{})
		var missing *ssh.ExitMissingError
		var conn *ConnError
		if !errors.As(err, &missing) || errors.As(err, &conn) {
			t.Errorf("no exit status: got %T %v, want a CommandError wrapping *ssh.ExitMissingError and no ConnError", err, err)
		}
		err = p.Run(t.Context(), n2, Cmd{Args: []string{"true"}}, Exec{})
		var ce *CommandError
		if !errors.As(err, &conn) || errors.As(err, &ce) {
			t.Errorf("cut host: got %T %v, want a ConnError and no CommandError", err, err)
		}
	})
}

func TestRunStreamsOutput(t *testing.T) {
	b := testbed.Start(t, "n1")
	p := newPool(t, b, nil)
	n1 := target(b, "n1")
	var sink lines
	script := `printf "out 1\nout 2\r\n"; printf "err 1\n" >&2; printf "\377 not utf-8\n"; printf "no newline"`
	if err := p.Run(t.Context(), n1, ShellCmd("", script, nil), Exec{Step: "test", Sink: &sink}); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr []string
	for _, l := range sink.all() {
		if s, ok := strings.CutPrefix(l, "n1 stdout "); ok {
			stdout = append(stdout, s)
		} else if s, ok := strings.CutPrefix(l, "n1 stderr "); ok {
			stderr = append(stderr, s)
		}
	}
	if diff := cmp.Diff([]string{"out 1", "out 2", "\xff not utf-8", "no newline"}, stdout); diff != "" {
		t.Errorf("stdout lines (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"err 1"}, stderr); diff != "" {
		t.Errorf("stderr lines (-want +got):\n%s", diff)
	}

	out, err := p.Output(t.Context(), n1, ShellCmd("", script, nil))
	if got, want := string(out), "out 1\nout 2\r\n\xff not utf-8\nno newline"; err != nil || got != want {
		t.Errorf("Output: got %q, %v; want %q", got, err, want)
	}

	// Data through stdin, environment and directory arrive as given.
	var in strings.Builder
	for i := range 10000 {
		in.WriteString(strconv.Itoa(i) + " it's $(x)\n")
	}
	out, err = p.Output(t.Context(), n1, Cmd{Args: []string{"sh", "-c", `pwd; echo "$A"; sha256sum`}, Env: map[string]string{"A": "`a` 'b'"}, Dir: "/srv"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(out), "/srv\n`a` 'b'\n"+emptySum+"  -\n"; got != want {
		t.Errorf("no stdin: got %q, want %q", got, want)
	}
	var buf strings.Builder
	err = p.Run(t.Context(), n1, Cmd{Args: []string{"sha256sum"}}, Exec{Stdin: strings.NewReader(in.String()), Stdout: &buf})
	if got, want := buf.String(), sha256hex(in.String())+"  -\n"; err != nil || got != want {
		t.Errorf("stdin: got %q, %v; want %q", got, err, want)
	}
}

func TestCancelStopsRemoteProcess(t *testing.T) {
	b := testbed.Start(t, "n1")
	p := newPool(t, b, nil) // StopGrace 1s
	n1, h := target(b, "n1"), b.Host("n1")
	never, _ := io.Pipe()
	tests := []struct {
		name    string
		cmd     Cmd
		stdin   io.Reader
		pattern string
	}{
		{"sleep", Cmd{Args: []string{"sleep", "271.001"}}, nil, "sleep 271[.]001"},
		{"children of a shell", ShellCmd("", "sleep 271.002 & sleep 271.003; wait", nil), nil, "271[.]00[23]"},
		{"ignores TERM", ShellCmd("", `trap "" TERM; sleep 271.004; echo survived`, nil), nil, "271[.]004"},
		{"reading stdin", ShellCmd("", "read x; sleep 271.005", nil), never, "271[.]005"},
		{"reading stdin, ignores TERM", ShellCmd("", `trap "" TERM; read x; sleep 271.006`, nil), never, "271[.]006"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			errc := make(chan error, 1)
			go func() { errc <- p.Run(ctx, n1, tt.cmd, Exec{Stdin: tt.stdin}) }()
			if !waitFor(5*time.Second, func() bool { return running(t, h, tt.pattern) != "" }) {
				t.Fatal("the command never started")
			}
			start := time.Now()
			cancel()
			err := <-errc
			took := time.Since(start)
			if got, want := outcome(err), "canceled"; got != want {
				t.Errorf("got %s (%v), want %s", got, err, want)
			}
			if took > 3*time.Second {
				t.Errorf("Run took %v to return after cancel", took)
			}
			// The command's own processes are gone when Run returns. The
			// watchdog (a login shell whose command line, "bash -c exec
			// 3<&0 ...", holds the whole command, so only unanchored
			// patterns match it) may wait out its grace period before its
			// last KILL, then goes too.
			if left := running(t, h, "^(sleep |sh -c (read|trap|sleep) ).*"+tt.pattern); left != "" {
				t.Errorf("still running after Run returned:\n%s", left)
			}
			if !waitFor(2*time.Second, func() bool { return running(t, h, tt.pattern) == "" }) {
				t.Errorf("still running 2s after Run returned:\n%s", running(t, h, tt.pattern))
			}
			t.Logf("returned %v after cancel", took.Round(time.Millisecond))
		})
	}
}

func TestRedial(t *testing.T) {
	b := testbed.Start(t, "n1")
	p := newPool(t, b, nil) // keepalive every 300ms
	n1, h := target(b, "n1"), b.Host("n1")
	ctx := t.Context()
	run := func() error { return p.Run(ctx, n1, Cmd{Args: []string{"true"}}, Exec{}) }
	cl, _ := p.client(n1)

	t.Run("sshd restarted", func(t *testing.T) {
		if err := run(); err != nil {
			t.Fatal(err)
		}
		if err := h.StopSSHD(); err != nil {
			t.Fatal(err)
		}
		if err := h.StartSSHD(ctx); err != nil {
			t.Fatal(err)
		}
		// Stopping sshd leaves its connections up: the pool keeps its own.
		if err := run(); err != nil {
			t.Fatalf("after restart: %v", err)
		}
	})

	t.Run("connection killed during a command", func(t *testing.T) {
		before := cl.dials.Load()
		errc := make(chan error, 1)
		go func() { errc <- p.Run(ctx, n1, Cmd{Args: []string{"sleep", "271.101"}}, Exec{}) }()
		if !waitFor(5*time.Second, func() bool { return running(t, h, "sleep 271[.]101") != "" }) {
			t.Fatal("the command never started")
		}
		killConnections(t, h)
		if got, want := outcome(<-errc), "conn run"; got != want {
			t.Errorf("the running command: got %s, want %s", got, want)
		}
		// No signal can reach it now: the watchdog ends it when sshd's end
		// of its stdin closes.
		if !waitFor(3*time.Second, func() bool { return running(t, h, "sleep 271[.]101") == "" }) {
			t.Errorf("the command outlived its connection:\n%s", running(t, h, "sleep 271[.]101"))
		}
		if err := run(); err != nil {
			t.Fatalf("next command: %v", err)
		}
		if got, want := cl.dials.Load()-before, int32(1); got != want {
			t.Errorf("dialled %d times, want %d", got, want)
		}
	})

	t.Run("dead connection not yet noticed", func(t *testing.T) {
		// A connection that died without the pool noticing: the next
		// session open fails, and the pool dials again at once.
		before := cl.dials.Load()
		cn, err := cl.get(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cn.Client.Close()
		stale := &conn{Client: cn.Client, key: cn.key, done: make(chan struct{})}
		cl.mu.Lock()
		cl.cur = stale
		cl.mu.Unlock()
		if err := run(); err != nil {
			t.Fatalf("command on a stale connection: %v", err)
		}
		if got, want := cl.dials.Load()-before, int32(1); got != want {
			t.Errorf("dialled %d times, want %d", got, want)
		}
	})

	t.Run("host cut off then restored", func(t *testing.T) {
		if err := run(); err != nil {
			t.Fatal(err)
		}
		before := cl.dials.Load()
		if err := h.Cut(ctx); err != nil {
			t.Fatal(err)
		}
		noticed := waitFor(5*time.Second, func() bool {
			cl.mu.Lock()
			defer cl.mu.Unlock()
			return cl.cur == nil
		})
		if err := h.Restore(ctx); err != nil {
			t.Fatal(err)
		}
		if !noticed {
			t.Fatal("keepalive did not notice the dead connection within 5s")
		}
		if err := run(); err != nil {
			t.Fatalf("after restore: %v", err)
		}
		if got, want := cl.dials.Load()-before, int32(1); got != want {
			t.Errorf("dialled %d times, want %d", got, want)
		}
	})
}

func TestHostKeys(t *testing.T) {
	b := testbed.Start(t, "n1", "n2")
	ctx := t.Context()
	n1 := b.Host("n1")
	oldKey := n1.HostKey
	if err := n1.StopSSHD(); err != nil {
		t.Fatal(err)
	}
	if err := n1.RotateHostKey(); err != nil {
		t.Fatal(err)
	}
	if err := n1.StartSSHD(ctx); err != nil {
		t.Fatal(err)
	}
	onlyN1 := writeKnownHosts(t, n1.Addr.String()+" "+oldKey)
	tests := []struct {
		name       string
		knownHosts string
		host       string
		want       string
	}{
		{"known", b.KnownHosts, "n2", "ok"},
		{"changed", b.KnownHosts, "n1", "changed host key"},
		{"unknown", onlyN1, "n2", "unknown host key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPool(t, b, func(c *Config) { c.KnownHosts = tt.knownHosts })
			tg := target(b, tt.host)
			err := p.Run(ctx, tg, Cmd{Args: []string{"true"}}, Exec{})
			if got := outcome(err); got != tt.want {
				t.Fatalf("got %s (%v), want %s", got, err, tt.want)
			}
			if err == nil {
				return
			}
			t.Log(err)
			presented, _, _, _, perr := ssh.ParseAuthorizedKey([]byte(b.Host(tt.host).HostKey))
			if perr != nil {
				t.Fatal(perr)
			}
			var conn *ConnError
			var unknown *UnknownHostKeyError
			var changed *HostKeyChangedError
			switch {
			case !errors.As(err, &conn) || conn.Op != "handshake":
				t.Errorf("got %v, want a handshake ConnError", err)
			case errors.As(err, &unknown):
				if got, want := ssh.FingerprintSHA256(unknown.Key), ssh.FingerprintSHA256(presented); got != want {
					t.Errorf("unknown key fingerprint %s, want %s", got, want)
				}
			case errors.As(err, &changed):
				if got, want := ssh.FingerprintSHA256(changed.Key), ssh.FingerprintSHA256(presented); got != want {
					t.Errorf("changed key fingerprint %s, want %s", got, want)
				}
				if len(changed.Want) != 1 || changed.Want[0].Line != 1 {
					t.Errorf("known keys %+v, want line 1 of known_hosts", changed.Want)
				}
			}
		})
	}
}

func TestKnownAlgorithms(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaPub, err := ssh.NewPublicKey(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edKey, err := ssh.NewPublicKey(edPub)
	if err != nil {
		t.Fatal(err)
	}
	path := writeKnownHosts(t,
		knownhosts.Line([]string{"10.0.0.1"}, rsaPub),
		knownhosts.Line([]string{"10.0.0.1"}, edKey),
		knownhosts.Line([]string{knownhosts.Normalize("10.0.0.2:2222")}, edKey),
	)
	cb, err := knownhosts.New(path)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		addr string
		want []string
	}{
		{"10.0.0.1:22", []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA, ssh.KeyAlgoED25519}},
		{"10.0.0.2:2222", []string{ssh.KeyAlgoED25519}},
		{"10.0.0.2:22", nil},
		{"10.0.0.3:22", nil},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, knownAlgorithms(cb, tt.addr)); diff != "" {
				t.Errorf("algorithms (-want +got):\n%s", diff)
			}
		})
	}
}

func TestConcurrentCommands(t *testing.T) {
	b := testbed.Start(t, "n1")
	p := newPool(t, b, nil)
	n1 := target(b, "n1")
	const n = 20
	outs := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var out []byte
			out, errs[i] = p.Output(t.Context(), n1, Cmd{Args: []string{"sh", "-c", `sleep 0.3; echo "$0"`, strconv.Itoa(i)}})
			outs[i] = strings.TrimSpace(string(out))
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || outs[i] != strconv.Itoa(i) {
			t.Errorf("command %d: got %q, %v; want %q", i, outs[i], errs[i], strconv.Itoa(i))
		}
	}
	cl, _ := p.client(n1)
	if got := cl.peak.Load(); got > 8 || got < 2 {
		t.Errorf("peak concurrent sessions %d, want 2..8", got)
	}
	if got := cl.dials.Load(); got != 1 {
		t.Errorf("dialled %d connections, want 1", got)
	}
}

func TestJumpHost(t *testing.T) {
	b := testbed.Start(t, "n1", "n2")
	jump := target(b, "n1")
	p := newPool(t, b, func(c *Config) { c.Jump = &jump })
	out, err := p.Output(t.Context(), target(b, "n2"), ShellCmd("", `echo "${SSH_CLIENT%% *}"; ip -4 -o addr show dev eth0 | awk "{print \$4}"`, nil))
	if err != nil {
		t.Fatal(err)
	}
	want := b.Host("n1").Addr.String() + "\n" + b.Host("n2").Addr.String() + "/24\n"
	if got := string(out); got != want {
		t.Errorf("got %q, want %q (n2, reached from n1)", got, want)
	}

	// The target's key is verified through the jump host too.
	p2 := newPool(t, b, func(c *Config) {
		c.Jump = &jump
		c.KnownHosts = writeKnownHosts(t, b.Host("n1").Addr.String()+" "+b.Host("n1").HostKey)
	})
	err = p2.Run(t.Context(), target(b, "n2"), Cmd{Args: []string{"true"}}, Exec{})
	var unknown *UnknownHostKeyError
	if !errors.As(err, &unknown) || unknown.Host != "n2" {
		t.Errorf("got %v, want n2's key unknown", err)
	}
}

func TestAgentAuth(t *testing.T) {
	b := testbed.Start(t, "n1")
	pem, err := os.ReadFile(b.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ssh.ParseRawPrivateKey(pem)
	if err != nil {
		t.Fatal(err)
	}
	keyring := agent.NewKeyring()
	// Keys the server does not accept come first in the agent, as in an
	// agent full of keys; the pool still gets in.
	for range 3 {
		_, other, _ := ed25519.GenerateKey(rand.Reader)
		keyring.Add(agent.AddedKey{PrivateKey: other})
	}
	keyring.Add(agent.AddedKey{PrivateKey: key})
	sock := t.TempDir() + "/agent.sock"
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { agent.ServeAgent(keyring, c); c.Close() }()
		}
	}()
	p := newPool(t, b, func(c *Config) { c.Identity, c.AgentSocket = "", sock })
	if err := p.Run(t.Context(), target(b, "n1"), Cmd{Args: []string{"true"}}, Exec{}); err != nil {
		t.Fatal(err)
	}
}

func TestNewPoolRefuses(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no known_hosts", Config{Identity: "x"}, "known_hosts is required"},
		{"missing known_hosts", Config{KnownHosts: "/nonexistent/known_hosts", AgentSocket: "x"}, "read known_hosts"},
		{"no key", Config{KnownHosts: writeKnownHosts(t)}, "nothing to authenticate with"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewPool(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestClosedPool(t *testing.T) {
	b := testbed.Start(t, "n1")
	p := newPool(t, b, nil)
	n1 := target(b, "n1")
	if err := p.Run(t.Context(), n1, Cmd{Args: []string{"true"}}, Exec{}); err != nil {
		t.Fatal(err)
	}
	p.Close()
	err := p.Run(t.Context(), n1, Cmd{Args: []string{"true"}}, Exec{})
	if !errors.Is(err, errPoolClosed) {
		t.Errorf("got %v, want %v", err, errPoolClosed)
	}
}
