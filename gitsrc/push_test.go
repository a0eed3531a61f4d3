package gitsrc

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clusterops/operator/hosts"
	"github.com/clusterops/operator/testbed"
	"golang.org/x/crypto/ssh"
)

// sshStarter runs commands in sessions of one plain SSH client: what the
// operator's pool does, without the pool.
type sshStarter struct {
	c        *ssh.Client
	commands []string
}

type sshProcess struct {
	s      *ssh.Session
	stdin  io.WriteCloser
	stdout io.Reader
	stderr *bytes.Buffer
	cmd    string
}

func (st *sshStarter) Start(ctx context.Context, argv ...string) (Process, error) {
	command := hosts.Cmd{Args: argv}.String()
	st.commands = append(st.commands, command)
	s, err := st.c.NewSession()
	if err != nil {
		return nil, err
	}
	p := &sshProcess{s: s, stderr: &bytes.Buffer{}, cmd: command}
	s.Stderr = p.stderr
	if p.stdin, err = s.StdinPipe(); err != nil {
		return nil, err
	}
	if p.stdout, err = s.StdoutPipe(); err != nil {
		return nil, err
	}
	return p, s.Start(command)
}

func (p *sshProcess) Stdin() io.WriteCloser { return p.stdin }
func (p *sshProcess) Stdout() io.Reader     { return p.stdout }
func (p *sshProcess) Wait() error {
	defer p.s.Close()
	if err := p.s.Wait(); err != nil {
		return fmt.Errorf("%s: %w: %s", p.cmd, err, p.stderr.String())
	}
	return nil
}

func TestPushSendsOnlyWhatTheBuildHostLacks(t *testing.T) {
	bed := testbed.Start(t, "build")
	ctx := t.Context()
	u := newUpstream(t)
	big := strings.Repeat("0123456789abcdef", 64*1024) // 1 MiB the second push must not resend
	c1 := u.commit("main", "one", map[string]string{"big.bin": big, "lib/a.ex": "a"})
	m, err := Open(Options{URL: u.bare, Branch: "main", Dir: filepath.Join(t.TempDir(), "mirror")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Fetch(ctx); err != nil {
		t.Fatal(err)
	}
	client, err := bed.Host("build").Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	build := bed.Host("build")
	const bare = "/root/build/chat.git"
	if _, err := build.Sh(ctx, "git init -q --bare "+bare); err != nil {
		t.Fatal(err)
	}
	st := &sshStarter{c: client}
	if err := m.Push(ctx, st, bare, c1); err != nil {
		t.Fatal(err)
	}
	headOf := func() string {
		out, err := build.Sh(ctx, "git --git-dir="+bare+" rev-parse "+DeployRef)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	if got := headOf(); got != c1 {
		t.Fatalf("build host's %s: got %s, want %s", DeployRef, got, c1)
	}
	packBytes := func() int {
		out, _ := build.Sh(ctx, "cat "+bare+"/objects/pack/*.pack "+bare+"/objects/??/* 2>/dev/null | wc -c")
		var n int
		fmt.Sscan(out, &n)
		return n
	}
	before := packBytes()

	c2 := u.commit("main", "one line", map[string]string{"lib/a.ex": "a\nb"})
	if _, err := m.Fetch(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Push(ctx, st, bare, c2); err != nil {
		t.Fatal(err)
	}
	if got := headOf(); got != c2 {
		t.Fatalf("after the second push: got %s, want %s", got, c2)
	}
	if grew := packBytes() - before; grew > 64*1024 {
		t.Fatalf("a one-line commit grew the build host's objects by %d bytes: the push resent what it had", grew)
	}
	// The same commit again: nothing to send, no error.
	if err := m.Push(ctx, st, bare, c2); err != nil {
		t.Fatalf("pushing a commit the build host has: %v", err)
	}
	// Rolling back to an older commit moves the ref back.
	if err := m.Push(ctx, st, bare, c1); err != nil || headOf() != c1 {
		t.Fatalf("push of an older commit: %v, head %s", err, headOf())
	}
	// A missing repository is an error that says so.
	if err := m.Push(ctx, st, "/root/nope.git", c1); err == nil || !strings.Contains(err.Error(), "nope.git") {
		t.Fatalf("push to a missing repository: got %v", err)
	}
	for _, c := range st.commands {
		if !strings.HasPrefix(c, "exec 'git-receive-pack' '/root/") {
			t.Errorf("unexpected remote command %q", c)
		}
	}
}
