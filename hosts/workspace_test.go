package hosts

import (
	"strings"
	"testing"

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
			`exec 'git' '--git-dir=./build/my app.operator/repo.git' '--work-tree=./build/my app' 'update-index' '-q' '--refresh'`},
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
