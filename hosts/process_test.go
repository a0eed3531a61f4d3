package hosts

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestWaitStopped(t *testing.T) {
	if strings.Contains(waitStoppedScript, "'") {
		t.Fatal("wait-stopped script holds a single quote")
	}
	tests := []struct {
		pid   int
		dir   string
		limit time.Duration
		want  string
	}{
		{4242, "/srv/chat/releases/abc", 2 * time.Minute, sh(waitStoppedScript, "'4242' '/srv/chat/releases/abc' '6000'")},
		{2, "/srv/it's $(x)\n`y`\xff/-r/", time.Millisecond, sh(waitStoppedScript, "'2' '/srv/it'\\''s $(x)\n`y`\xff/-r' '1'")},
	}
	for _, tt := range tests {
		c, err := WaitStopped(tt.pid, tt.dir, tt.limit)
		if err != nil {
			t.Fatalf("WaitStopped(%d, %q, %v): %v", tt.pid, tt.dir, tt.limit, err)
		}
		if got := c.String(); got != tt.want {
			t.Errorf("WaitStopped(%d, %q, %v)\n got %q\nwant %q", tt.pid, tt.dir, tt.limit, got, tt.want)
		}
		if !strings.HasPrefix(c.Redacted(), "wait-stopped '") {
			t.Errorf("label %q", c.Redacted())
		}
	}
	// kill -0 0 asks about the process group, kill -0 -1 about every
	// process: neither is a process id.
	for _, pid := range []int{1, 0, -1} {
		if _, err := WaitStopped(pid, "/srv", time.Second); err == nil {
			t.Errorf("WaitStopped(%d) accepted", pid)
		}
	}
	if _, err := WaitStopped(42, "srv", time.Second); err == nil {
		t.Errorf("WaitStopped accepted a relative directory")
	}
}

// TestHelperListener is a process for TestWaitStoppedRuns: it listens on a
// TCP port for HELPER_LISTEN, then exits.
func TestHelperListener(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv("HELPER_LISTEN"))
	if err != nil {
		t.Skip("a helper process, run by TestWaitStoppedRuns")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("listening\n")
	time.Sleep(d)
	l.Close()
	os.Exit(0)
}

// TestWaitStoppedRuns runs the script here, against processes of this
// test: only a process seen running from the directory given and
// listening, and then gone, makes it exit 0; one that stops listening,
// never listened or does not run from there makes it unsure; one still
// listening exhausts the tries.
func TestWaitStoppedRuns(t *testing.T) {
	if _, err := os.Stat("/proc/self/fd"); err != nil {
		t.Fatalf("this test needs /proc: %v", err)
	}
	code := func(pid int, dir string, limit time.Duration) int {
		c, err := WaitStopped(pid, dir, limit)
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(c.Args[0], c.Args[1:]...).CombinedOutput()
		t.Logf("wait-stopped %d: %v: %s", pid, err, out)
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	}
	dir := t.TempDir()
	elsewhere := t.TempDir()
	// listener starts a process of dir that listens for d, then exits.
	listener := func(d time.Duration) *exec.Cmd {
		c := exec.Command(os.Args[0], "-test.run=^TestHelperListener$")
		c.Dir = dir
		c.Env = append(os.Environ(), "HELPER_LISTEN="+d.String())
		out, err := c.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 10)
		if _, err := out.Read(buf); err != nil {
			t.Fatal(err)
		}
		go c.Wait()
		t.Cleanup(func() { c.Process.Kill() })
		return c
	}

	t.Run("listening then gone, of dir", func(t *testing.T) {
		// Long enough for the script's first look on a busy machine.
		c := listener(1500 * time.Millisecond)
		if got := code(c.Process.Pid, dir, time.Minute); got != 0 {
			t.Errorf("exit %d, want 0", got)
		}
	})
	t.Run("listening, of another directory", func(t *testing.T) {
		c := listener(time.Minute)
		if got := code(c.Process.Pid, elsewhere, time.Minute); got != WaitStoppedUnsure {
			t.Errorf("exit %d, want %d (at once: not known to be the node)", got, WaitStoppedUnsure)
		}
	})
	t.Run("still listening", func(t *testing.T) {
		c := listener(time.Minute)
		if got := code(c.Process.Pid, dir, 60*time.Millisecond); got != 1 {
			t.Errorf("exit %d, want 1", got)
		}
	})
	t.Run("stops listening, still running", func(t *testing.T) {
		// This test process: it listens, and closes while the script waits.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		wd, err := os.Getwd()
		if err != nil {
			t.Fatal(err)
		}
		time.AfterFunc(300*time.Millisecond, func() { l.Close() })
		if got := code(os.Getpid(), wd, time.Minute); got != WaitStoppedUnsure {
			t.Errorf("exit %d, want %d", got, WaitStoppedUnsure)
		}
	})
	t.Run("never listened", func(t *testing.T) {
		c := exec.Command("sleep", "60")
		c.Dir = dir
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill(); c.Wait() })
		if got := code(c.Process.Pid, dir, time.Minute); got != WaitStoppedUnsure {
			t.Errorf("exit %d, want %d", got, WaitStoppedUnsure)
		}
	})
	t.Run("a zombie", func(t *testing.T) {
		// Exits at once and is not waited for until the script has run.
		c := exec.Command("true")
		c.Dir = dir
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		for {
			b, err := os.ReadFile("/proc/" + strconv.Itoa(c.Process.Pid) + "/stat")
			if err != nil || strings.Contains(string(b), ") Z") {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if got := code(c.Process.Pid, dir, time.Minute); got != WaitStoppedUnsure {
			t.Errorf("exit %d, want %d", got, WaitStoppedUnsure)
		}
		c.Wait()
	})
}
