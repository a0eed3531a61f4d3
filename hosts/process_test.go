package hosts

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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
// TCP port and says so, closes the port when a line of its stdin says
// "close" and says so, and exits when its stdin ends.
func TestHelperListener(t *testing.T) {
	if os.Getenv("HELPER_LISTEN") != "1" {
		t.Skip("a helper process, run by TestWaitStoppedRuns")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("listening\n")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "close" {
			l.Close()
			os.Stdout.WriteString("closed\n")
		}
	}
	os.Exit(0)
}

// TestWaitStoppedRuns runs the script here, against processes of this
// test: only a process seen running from the directory given and
// listening, and then gone, makes it exit 0; one that stops listening,
// never listened or does not run from there makes it unsure; one still
// listening exhausts the tries.
//
// Nothing in it races the clock: what the script is to see changes only
// once the script has made its first look (a child of it sleeps between
// looks: watching), and a process that goes, goes while the script is
// stopped, so that no look sees it half gone (its sockets closed, its
// exit not yet done: a look then is rightly unsure). Its helpers listen
// until told otherwise, however slow the machine.
func TestWaitStoppedRuns(t *testing.T) {
	if _, err := os.Stat("/proc/self/fd"); err != nil {
		t.Fatalf("this test needs /proc: %v", err)
	}
	dir := t.TempDir()
	elsewhere := t.TempDir()
	// listener starts a process of dir that listens until told (its
	// stdin) to close, and its stdin ends.
	type listenerProc struct {
		cmd  *exec.Cmd
		in   io.WriteCloser
		out  *bufio.Reader
		done chan struct{}
	}
	listener := func(t *testing.T) *listenerProc {
		c := exec.Command(os.Args[0], "-test.run=^TestHelperListener$")
		c.Dir = dir
		c.Env = append(os.Environ(), "HELPER_LISTEN=1")
		in, err := c.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		// A pipe of its own, which Wait leaves alone: the test reads the
		// helper's answers while a goroutine waits for its end.
		out, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		c.Stdout = w
		err = c.Start()
		w.Close()
		if err != nil {
			t.Fatal(err)
		}
		l := &listenerProc{cmd: c, in: in, out: bufio.NewReader(out), done: make(chan struct{})}
		go func() {
			c.Wait()
			close(l.done)
		}()
		t.Cleanup(func() {
			c.Process.Kill()
			<-l.done
			out.Close()
		})
		if line, err := l.out.ReadString('\n'); line != "listening\n" {
			t.Fatalf("helper: %q, %v", line, err)
		}
		return l
	}
	// start starts the script for pid in a process group of its own.
	type script struct {
		cmd  *exec.Cmd
		out  *bytes.Buffer
		done chan error
	}
	start := func(t *testing.T, pid int, dir string, limit time.Duration) *script {
		c, err := WaitStopped(pid, dir, limit)
		if err != nil {
			t.Fatal(err)
		}
		s := &script{cmd: exec.Command(c.Args[0], c.Args[1:]...), out: &bytes.Buffer{}, done: make(chan error, 1)}
		s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := s.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL) })
		go func() { s.done <- s.cmd.Wait() }()
		return s
	}
	// code waits for the script's exit status and checks what it said.
	code := func(t *testing.T, s *script, why string) int {
		t.Helper()
		err := <-s.done
		t.Logf("wait-stopped: %v: %s", err, s.out)
		if !strings.Contains(s.out.String(), why) {
			t.Errorf("it said %q, want %q", s.out, why)
		}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	}
	// watching waits until the script has made its first look and
	// watches: it has a child that is sleep. The bound is for a script
	// that hangs, not a guess at how long a look takes.
	watching := func(t *testing.T, s *script) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for !sleeping(s.cmd.Process.Pid) {
			select {
			case err := <-s.done:
				s.done <- err
				t.Fatalf("the script ended at its first look: %v: %s", err, s.out)
			case <-time.After(5 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatal("the script never got to watch")
			}
		}
	}

	t.Run("listening then gone, of dir", func(t *testing.T) {
		l := listener(t)
		s := start(t, l.cmd.Process.Pid, dir, time.Hour)
		watching(t, s)
		// It goes, and is reaped, while the script is stopped.
		if err := syscall.Kill(-s.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		l.cmd.Process.Kill()
		<-l.done
		if err := syscall.Kill(-s.cmd.Process.Pid, syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		if got := code(t, s, ""); got != 0 {
			t.Errorf("exit %d, want 0", got)
		}
	})
	t.Run("listening, of another directory", func(t *testing.T) {
		l := listener(t)
		if got := code(t, start(t, l.cmd.Process.Pid, elsewhere, time.Hour), "does not run from"); got != WaitStoppedUnsure {
			t.Errorf("exit %d, want %d (at once: not known to be the node)", got, WaitStoppedUnsure)
		}
	})
	t.Run("still listening", func(t *testing.T) {
		l := listener(t)
		if got := code(t, start(t, l.cmd.Process.Pid, dir, 60*time.Millisecond), "still running"); got != 1 {
			t.Errorf("exit %d, want 1", got)
		}
	})
	t.Run("stops listening, still running", func(t *testing.T) {
		l := listener(t)
		s := start(t, l.cmd.Process.Pid, dir, time.Hour)
		watching(t, s)
		io.WriteString(l.in, "close\n")
		if line, err := l.out.ReadString('\n'); line != "closed\n" {
			t.Fatalf("helper: %q, %v", line, err)
		}
		if got := code(t, s, "no longer listens"); got != WaitStoppedUnsure {
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
		if got := code(t, start(t, c.Process.Pid, dir, time.Hour), "listens on no TCP port"); got != WaitStoppedUnsure {
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
		if got := code(t, start(t, c.Process.Pid, dir, time.Hour), "is gone"); got != WaitStoppedUnsure {
			t.Errorf("exit %d, want %d", got, WaitStoppedUnsure)
		}
		c.Wait()
	})
}

// sleeping reports whether process pid has a child running sleep.
func sleeping(pid int) bool {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// "pid (comm) state ppid ...", and comm may hold anything.
		i := bytes.LastIndexByte(b, ')')
		j := bytes.IndexByte(b, '(')
		if i < 0 || j < 0 || j > i {
			continue
		}
		fields := strings.Fields(string(b[i+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) && string(b[j+1:i]) == "sleep" {
			return true
		}
	}
	return false
}
