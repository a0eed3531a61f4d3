package hosts

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clusterops/operator/testbed"
)

// target is the bed host name as the operator reaches it.
func target(b *testbed.Bed, name string) Target {
	return Target{Name: name, Address: b.Host(name).Addr.String(), User: "root"}
}

// newPool makes a pool on the bed's client key and known_hosts, with short
// timers so faults show within a test's patience; mod adjusts the config.
func newPool(t testing.TB, b *testbed.Bed, mod func(*Config)) *Pool {
	t.Helper()
	cfg := Config{
		Identity:    b.ClientKey,
		KnownHosts:  b.KnownHosts,
		Logger:      slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo})),
		DialTimeout: 3 * time.Second,
		KeepAlive:   300 * time.Millisecond,
		StopGrace:   time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	p, err := NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// outcome names the kind of result err is, for table comparisons.
func outcome(err error) string {
	var ce *CommandError
	var conn *ConnError
	var unknown *UnknownHostKeyError
	var changed *HostKeyChangedError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &unknown):
		return "unknown host key"
	case errors.As(err, &changed):
		return "changed host key"
	case errors.As(err, &ce) && ce.Signal != "":
		return "signal " + ce.Signal
	case errors.As(err, &ce) && ce.ExitCode >= 0:
		return fmt.Sprintf("exit %d", ce.ExitCode)
	case errors.As(err, &ce):
		return "no exit status"
	case errors.As(err, &conn):
		return "conn " + conn.Op
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	}
	return "other: " + err.Error()
}

// killConnections kills the sshd processes that hold established SSH
// connections on h, as a crash or reboot would: the peers see them drop.
func killConnections(t testing.TB, h *testbed.Host) {
	t.Helper()
	out, err := h.Sh(context.Background(), `ss -Htnp state established "( sport = :22 )" | grep -o "pid=[0-9]*" | cut -d= -f2 | sort -u`)
	if err != nil {
		t.Fatal(err)
	}
	pids := strings.Fields(out)
	if len(pids) == 0 {
		t.Fatalf("no SSH connection on %s to kill", h.Name)
	}
	if _, err := h.Sh(context.Background(), "kill -9 "+strings.Join(pids, " ")); err != nil {
		t.Fatal(err)
	}
}

// running reports the processes on h whose command line matches pattern;
// write the pattern so it does not match itself (a bracket: "sleep 27[1]").
func running(t testing.TB, h *testbed.Host, pattern string) string {
	t.Helper()
	out, _ := h.Sh(context.Background(), "pgrep -af "+Quote(pattern)+" || true")
	return strings.TrimSpace(out)
}

// waitFor polls cond every 20ms until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cond()
}

// lines is a LogSink that keeps what it got.
type lines struct {
	mu  sync.Mutex
	got []string
}

func (l *lines) Line(host, stream, line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, host+" "+stream+" "+line)
}

func (l *lines) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.got...)
}

// emptySum is the SHA-256 of no bytes.
const emptySum = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

func sha256hex(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// writeKnownHosts writes a known_hosts file with the given lines.
func writeKnownHosts(t testing.TB, lines ...string) string {
	t.Helper()
	path := t.TempDir() + "/known_hosts"
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// shellHere returns c to run by /bin/sh on this machine the way a host
// runs it: envReader in front of its line, its envLine ahead of stdin.
func shellHere(c Cmd, stdin io.Reader) *exec.Cmd {
	line := c.String()
	if env := c.envLine(); env != "" {
		line = envReader + line
		if stdin == nil {
			stdin = strings.NewReader("")
		}
		stdin = io.MultiReader(strings.NewReader(env), stdin)
	}
	cmd := exec.Command("/bin/sh", "-c", line)
	cmd.Stdin = stdin
	return cmd
}
