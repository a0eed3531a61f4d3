package hosts

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestWaitExit(t *testing.T) {
	if strings.Contains(waitExitScript, "'") {
		t.Fatal("wait-exit script holds a single quote")
	}
	tests := []struct {
		pid   int
		dir   string
		limit time.Duration
		want  string
	}{
		{4242, "/srv/chat/releases/abc", 2 * time.Minute, sh(waitExitScript, "'4242' '/srv/chat/releases/abc' '6000'")},
		{2, "/srv/it's $(x)\n`y`\xff/-r/", time.Millisecond, sh(waitExitScript, "'2' '/srv/it'\\''s $(x)\n`y`\xff/-r' '1'")},
	}
	for _, tt := range tests {
		c, err := WaitExit(tt.pid, tt.dir, tt.limit)
		if err != nil {
			t.Fatalf("WaitExit(%d, %q, %v): %v", tt.pid, tt.dir, tt.limit, err)
		}
		if got := c.String(); got != tt.want {
			t.Errorf("WaitExit(%d, %q, %v)\n got %q\nwant %q", tt.pid, tt.dir, tt.limit, got, tt.want)
		}
		if !strings.HasPrefix(c.Redacted(), "wait-exit '") {
			t.Errorf("label %q", c.Redacted())
		}
	}
	// kill -0 0 asks about the process group, kill -0 -1 about every
	// process: neither is a process id.
	for _, pid := range []int{1, 0, -1} {
		if _, err := WaitExit(pid, "/srv", time.Second); err == nil {
			t.Errorf("WaitExit(%d) accepted", pid)
		}
	}
	if _, err := WaitExit(42, "srv", time.Second); err == nil {
		t.Errorf("WaitExit accepted a relative directory")
	}
}

// TestWaitExitRuns runs the script here, against processes of this test:
// a live process exhausts the tries; a zombie (exited, not yet waited for)
// and a reaped process count as gone; only a process seen running from the
// directory given makes it exit 0.
func TestWaitExitRuns(t *testing.T) {
	code := func(pid int, dir string, limit time.Duration) int {
		c, err := WaitExit(pid, dir, limit)
		if err != nil {
			t.Fatal(err)
		}
		err = exec.Command(c.Args[0], c.Args[1:]...).Run()
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

	live := exec.Command("sleep", "60")
	live.Dir = dir
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { live.Process.Kill(); live.Wait() })
	if got := code(live.Process.Pid, dir, 60*time.Millisecond); got != 1 {
		t.Errorf("a live process: exit %d, want 1", got)
	}

	// Exits at once, so the script sees it only as a zombie.
	zombie := exec.Command("true")
	zombie.Dir = dir
	if err := zombie.Start(); err != nil {
		t.Fatal(err)
	}
	for {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(zombie.Process.Pid) + "/stat")
		if err != nil || strings.Contains(string(b), ") Z") {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := code(zombie.Process.Pid, dir, time.Minute); got != WaitExitUnowned {
		t.Errorf("a zombie: exit %d, want %d (gone, never seen running from the directory)", got, WaitExitUnowned)
	}
	zombie.Wait()
	if got := code(zombie.Process.Pid, dir, time.Minute); got != WaitExitUnowned {
		t.Errorf("a reaped process: exit %d, want %d", got, WaitExitUnowned)
	}

	// Running from dir, then ending while the script waits.
	for _, tt := range []struct {
		dir  string
		want int
	}{{dir, 0}, {elsewhere, WaitExitUnowned}} {
		short := exec.Command("sleep", "0.3")
		short.Dir = dir
		if err := short.Start(); err != nil {
			t.Fatal(err)
		}
		go short.Wait()
		if got := code(short.Process.Pid, tt.dir, time.Minute); got != tt.want {
			t.Errorf("a process of %s waited for with %s: exit %d, want %d", dir, tt.dir, got, tt.want)
		}
	}
}
