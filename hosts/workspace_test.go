package hosts

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clusterops/operator/testbed"
)

func TestWorkspaceBuildersAsStrings(t *testing.T) {
	w := Workspace{Dir: "build/my app"}
	tests := []struct {
		name string
		cmd  func() (Cmd, error)
		want string
	}{
		{"forget step", func() (Cmd, error) { return w.RecordStep("s0-abc", "") },
			`exec 'rm' '-f' '--' './build/my app.operator/steps/s0-abc'`},
		{"prepare", w.Prepare, sh(prepareWorkspaceScript, `'./build/my app' './build/my app.operator' ''`)},
		{"prepare, push, check out", func() (Cmd, error) { return w.PushSession(strings.Repeat("a", 40), "git-receive-pack", "it's") },
			sh(prepareWorkspaceScript, `'./build/my app' './build/my app.operator' '`+strings.Repeat("a", 40)+`' 'git-receive-pack' 'it'\''s'`)},
		{"refresh the index", w.Refresh,
			`exec 'git' '-C' './build/my app' 'update-index' '-q' '--refresh'`},
		{"read the built artifact", func() (Cmd, error) { return w.ReadBuilt("_build/prod/app-*.tar.gz") },
			sh(readBuiltScript, `'./build/my app' '_build/prod/app-*.tar.gz'`)},
		{"read artifact", func() (Cmd, error) { return w.ReadArtifact(strings.Repeat("ab", 32)) },
			`exec 'cat' '--' './build/my app.operator/artifacts/` + strings.Repeat("ab", 32) + `.tar.gz'`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.cmd()
			if err != nil {
				t.Fatal(err)
			}
			if got := c.String(); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
	bad := []struct {
		name string
		cmd  func() (Cmd, error)
	}{
		{"short sha", func() (Cmd, error) { return w.PushSession("abc", "git-receive-pack", "x") }},
		{"option as sha", func() (Cmd, error) {
			return w.PushSession("--orphan=x"+strings.Repeat("a", 30), "git-receive-pack", "x")
		}},
		{"push with no command", func() (Cmd, error) { return w.PushSession(strings.Repeat("a", 40)) }},
		{"glob with $()", func() (Cmd, error) { return w.StoreArtifact(strings.Repeat("a", 40), "$(reboot)*.tar.gz") }},
		{"glob with space", func() (Cmd, error) { return w.StoreArtifact(strings.Repeat("a", 40), "a *.tar.gz") }},
		{"absolute glob", func() (Cmd, error) { return w.StoreArtifact(strings.Repeat("a", 40), "/etc/*") }},
		{"read with a glob with $()", func() (Cmd, error) { return w.ReadBuilt("$(reboot)*.tar.gz") }},
		{"step key path", func() (Cmd, error) { return w.RecordStep("../x", "f") }},
		{"root dir", func() (Cmd, error) { return Workspace{Dir: "/"}.Prepare() }},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.cmd(); err == nil {
				t.Error("no error")
			}
		})
	}
}

func TestWorkspaceOnAHost(t *testing.T) {
	b := testbed.Start(t, "build")
	p := newPool(t, b, nil)
	ctx := t.Context()
	tg := target(b, "build")
	w := Workspace{Dir: "build/my app"} // relative to root's home, with a space
	run := func(c Cmd, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		out, err := p.Output(ctx, tg, c)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	run(w.Prepare())
	run(w.Prepare()) // again: idempotent
	if _, err := b.Host("build").Sh(ctx, "test -f '/root/build/my app.operator/repo.git/HEAD'"); err != nil {
		t.Fatal("no bare repository after Prepare")
	}
	commit := strings.Repeat("c", 40)
	if got := run(w.LookupArtifact(commit)); got != "" {
		t.Fatalf("artifact before any build: %q", got)
	}
	// No match, then two matches, then one.
	c, _ := w.StoreArtifact(commit, "_build/prod/app-*.tar.gz")
	if _, err := p.Output(ctx, tg, c); err == nil || !strings.Contains(err.Error(), "matches 0 files") {
		t.Fatalf("no artifact: got %v", err)
	}
	b.Host("build").Sh(ctx, "mkdir -p '/root/build/my app/_build/prod' && cd '/root/build/my app/_build/prod' && echo one > app-1.tar.gz && echo two > app-2.tar.gz")
	if _, err := p.Output(ctx, tg, c); err == nil || !strings.Contains(err.Error(), "matches 2 files") {
		t.Fatalf("two artifacts: got %v", err)
	}
	read, err := w.ReadBuilt("_build/prod/app-*.tar.gz")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Output(ctx, tg, read); err == nil || !strings.Contains(err.Error(), "matches 2 files") {
		t.Fatalf("read with two artifacts: got %v", err)
	}
	b.Host("build").Sh(ctx, "rm '/root/build/my app/_build/prod/app-2.tar.gz'")
	sum, err := ParseSum([]byte(run(c, nil)))
	if err != nil || sum != "2c8b08da5ce60398e1f19af0e5dccc744df274b826abe585eaba68c525434806" {
		t.Fatalf("stored sum: %q, %v", sum, err)
	}
	if got := run(read, nil); got != "one\n" {
		t.Fatalf("read of the built artifact printed %q", got)
	}
	if got, _ := ParseSum([]byte(run(w.LookupArtifact(commit)))); got != sum {
		t.Fatalf("lookup after store: %q, want %q", got, sum)
	}
	if out, _ := b.Host("build").Sh(ctx, "cat '/root/"+w.ArtifactPath(sum)+"'"); out != "one\n" {
		t.Fatalf("kept artifact holds %q", out)
	}

	run(w.RecordStep("s0", "fp-1"))
	run(w.RecordStep("s1", "fp-2"))
	run(w.RecordStep("s1", "fp-3"))
	got := ParseSteps([]byte(run(w.ReadSteps())))
	if len(got) != 2 || got["s0"] != "fp-1" || got["s1"] != "fp-3" {
		t.Fatalf("steps: %v", got)
	}
	run(w.RecordStep("s0", ""))
	if got := ParseSteps([]byte(run(w.ReadSteps()))); len(got) != 1 {
		t.Fatalf("steps after forgetting s0: %v", got)
	}
}

// TestWorkspaceIsAGitWorkTree runs the push session's script with this
// machine's git and sh (the receive-pack replaced by a push done before):
// git in the work tree then names the commit checked out, a second checkout
// keeps build products and the mtimes of files it does not change, and a
// workspace of the earlier layout (its index in the bare repository) keeps
// its index, so nothing is rewritten when it becomes a work tree.
func TestWorkspaceIsAGitWorkTree(t *testing.T) {
	home := t.TempDir()
	git := func(dir string, args ...string) string {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@t", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@t")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	src := filepath.Join(home, "src")
	os.MkdirAll(src, 0o755)
	git(src, "init", "-q", "-b", "main")
	os.WriteFile(filepath.Join(src, "a.ex"), []byte("a\n"), 0o644)
	os.WriteFile(filepath.Join(src, "b.ex"), []byte("b\n"), 0o644)
	git(src, "add", ".")
	git(src, "commit", "-q", "-m", "one")
	first := git(src, "rev-parse", "HEAD")
	os.WriteFile(filepath.Join(src, "a.ex"), []byte("a, changed\n"), 0o644)
	git(src, "commit", "-q", "-am", "two")
	second := git(src, "rev-parse", "HEAD")

	w := Workspace{Dir: "build/my app"} // relative to the home, with a space
	dir := filepath.Join(home, "build", "my app")
	bare := filepath.Join(home, "build", "my app.operator", "repo.git")
	// session runs the push session for commit, a push from src into the
	// bare repository standing in for the receive-pack it runs.
	session := func(commit string) {
		t.Helper()
		c, err := w.PushSession(commit, "sh", "-c", `git -C "$1" push -q -f "$2" "$3:refs/heads/main"`, "sh", src, bare, commit)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("sh", "-c", c.String())
		cmd.Dir = home
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("push session for %s: %v: %s", commit, err, out)
		}
	}
	session(first)
	for _, tt := range []struct{ args, want string }{
		{"rev-parse HEAD", first},
		{"describe --always", first[:7]},
		{"log -1 --format=%H", first},
		{"status --porcelain --untracked-files=no", ""},
	} {
		if got := git(dir, strings.Fields(tt.args)...); got != tt.want {
			t.Errorf("git %s in the work tree: %q, want %q", tt.args, got, tt.want)
		}
	}
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	os.Chtimes(filepath.Join(dir, "b.ex"), old, old)
	git(dir, "update-index", "-q", "--refresh") // as Refresh does after a build
	os.MkdirAll(filepath.Join(dir, "_build"), 0o755)
	os.WriteFile(filepath.Join(dir, "_build", "kept"), []byte("x"), 0o644)
	session(second)
	if got := git(dir, "rev-parse", "HEAD"); got != second {
		t.Errorf("HEAD after the second checkout: %s, want %s", got, second)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "a.ex")); string(data) != "a, changed\n" {
		t.Errorf("a.ex after the second checkout: %q", data)
	}
	if _, err := os.Stat(filepath.Join(dir, "_build", "kept")); err != nil {
		t.Errorf("build product gone after a checkout: %v", err)
	}
	if st, _ := os.Stat(filepath.Join(dir, "b.ex")); !st.ModTime().Equal(old) {
		t.Errorf("unchanged b.ex rewritten by the checkout: mtime %v, want %v", st.ModTime(), old)
	}

	// The earlier layout: the index in the bare repository, the work tree
	// checked out with --git-dir and --work-tree and no .git of its own.
	os.RemoveAll(filepath.Join(home, "build"))
	os.MkdirAll(dir, 0o755)
	git(home, "init", "-q", "--bare", bare)
	git(src, "push", "-q", "-f", bare, first+":refs/heads/main")
	git(home, "--git-dir="+bare, "--work-tree="+dir, "checkout", "-q", "-f", "--detach", first)
	os.Chtimes(filepath.Join(dir, "b.ex"), old, old)
	git(home, "--git-dir="+bare, "--work-tree="+dir, "update-index", "-q", "--refresh")
	session(second)
	if got := git(dir, "rev-parse", "HEAD"); got != second {
		t.Errorf("HEAD after moving to a work tree: %s, want %s", got, second)
	}
	if st, _ := os.Stat(filepath.Join(dir, "b.ex")); !st.ModTime().Equal(old) {
		t.Errorf("unchanged b.ex rewritten when the workspace became a work tree: mtime %v, want %v", st.ModTime(), old)
	}
	if _, err := os.Stat(filepath.Join(bare, "index")); err == nil {
		t.Error("the bare repository still has an index of its own")
	}
}
