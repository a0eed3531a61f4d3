package hosts

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clusterops/operator/testbed"
	"github.com/google/go-cmp/cmp"
)

// TestLayoutOnHost runs the builders on a real host, under a deploy_to and
// with release names a naive script would mangle, and checks the files they
// leave.
func TestLayoutOnHost(t *testing.T) {
	b := testbed.Start(t, "n1")
	p := newPool(t, b, nil)
	n1, h := target(b, "n1"), b.Host("n1")
	ctx := t.Context()
	l := Layout{DeployTo: "/srv/it's $(x)\n`y` -z\xff"}
	rel1, rel2 := "one $(touch pwned) 'q'", "-two`touch pwned`\xfe"
	run := func(c Cmd, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		out, err := p.Output(ctx, n1, c)
		var ce *CommandError
		if errors.As(err, &ce) {
			t.Fatalf("%v\nstderr:\n%s", err, ce.Stderr)
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	local := func(p string) string { return h.Path(p) }

	if _, err := h.Sh(ctx, `mkdir -p /root/rel/bin /root/rel/releases && printf "#!/bin/sh\necho \"app in \$(pwd -P) says\" \"\$@\" \"\$X\"\n" >/root/rel/bin/app && chmod +x /root/rel/bin/app && echo from-tarball >/root/rel/releases/COOKIE`); err != nil {
		t.Fatal(err)
	}
	run(l.Prepare())
	tarball := l.Tarball(rel1)
	run(Cmd{Args: []string{"tar", "-czf", tarball, "-C", "/root/rel", "."}}, nil)
	cookie := "cookie'$(x)\n"
	if err := p.Put(ctx, n1, l.Shared()+"/releases/COOKIE", 0o600, strings.NewReader(cookie), sha256hex(cookie)); err != nil {
		t.Fatal(err)
	}

	for _, rel := range []string{rel1, rel2} {
		run(l.Unpack(rel, tarball))
		run(l.Unpack(rel, tarball)) // again: a staged release stays as it is
		if _, err := os.Stat(local(l.ReleaseDir(rel) + "/bin/app")); err != nil {
			t.Fatalf("unpacked %q: %v", rel, err)
		}

		c, _ := l.LinkShared(rel, []string{"releases/COOKIE", "config/missing"})
		err := p.Run(ctx, n1, c, Exec{})
		var ce *CommandError
		if !errors.As(err, &ce) || !strings.Contains(ce.Stderr, "missing "+l.Shared()+"/config/missing") {
			t.Errorf("linking a missing shared file: got %v, want an error naming it", err)
		}
		run(l.LinkShared(rel, []string{"releases/COOKIE"}))
		// The link's target is a path on the host: read it there.
		if got, err := p.Output(ctx, n1, Cmd{Args: []string{"cat", "--", l.ReleaseDir(rel) + "/releases/COOKIE"}}); err != nil || string(got) != cookie {
			t.Errorf("linked cookie of %q: got %q, %v; want %q", rel, got, err, cookie)
		}
		if got, _ := os.Readlink(local(l.ReleaseDir(rel) + "/releases/COOKIE")); got != l.Shared()+"/releases/COOKIE" {
			t.Errorf("link of %q points at %q, want %q", rel, got, l.Shared()+"/releases/COOKIE")
		}

		vmArgs := "-name chat@" + rel + "\n-setcookie $(x)\n"
		c, _ = l.WriteFile(rel, "releases/new dir/vm.args", 0o640, sha256hex(vmArgs))
		if err := p.Run(ctx, n1, c, Exec{Stdin: strings.NewReader(vmArgs)}); err != nil {
			t.Fatal(err)
		}
		path := local(l.ReleaseDir(rel) + "/releases/new dir/vm.args")
		got, err := os.ReadFile(path)
		if err != nil || string(got) != vmArgs {
			t.Errorf("rendered file: got %q, %v; want %q", got, err, vmArgs)
		}
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o640 {
			t.Errorf("rendered file mode: got %v, %v; want 0640", fi.Mode(), err)
		}
		// Bytes that do not hash to the sum never take the name.
		c, _ = l.WriteFile(rel, "releases/new dir/vm.args", 0o640, sha256hex("something else"))
		if err := p.Run(ctx, n1, c, Exec{Stdin: strings.NewReader("evil")}); err == nil {
			t.Error("a write with the wrong sha256 succeeded")
		}
		if got, _ := os.ReadFile(path); string(got) != vmArgs {
			t.Errorf("after a refused write: got %q, want %q", got, vmArgs)
		}
		entries, _ := os.ReadDir(local(l.ReleaseDir(rel) + "/releases/new dir"))
		if len(entries) != 1 {
			t.Errorf("temporary files left beside vm.args: %v", entries)
		}

		// The start runs in the release just switched to, in the same session.
		start := ShellCmd(l.Current(), `bin/app started`, map[string]string{"X": "`x` $y"})
		if out, want := run(l.SwitchThen(rel, "", "", start)), "app in "+l.ReleaseDir(rel)+" says started `x` $y\n"; out != want {
			t.Errorf("switch then start: got %q, want %q", out, want)
		}
		o, err := l.ParseObserve([]byte(run(l.Observe())), 0)
		if err != nil || o.Current != rel {
			t.Errorf("current: got %q, %v; want %q", o.Current, err, rel)
		}
	}

	c, _ := l.SwitchThen("never-staged", "", "", ShellCmd(l.Current(), "bin/app", nil))
	if err := p.Run(ctx, n1, c, Exec{}); err == nil {
		t.Error("switched to a release that is not staged")
	}

	out := run(ShellCmd(l.Current(), `bin/app "it's" $(echo sub)`, map[string]string{"X": "`x` $y"}), nil)
	if want := "app in " + l.ReleaseDir(rel2) + " says it's sub `x` $y\n"; out != want {
		t.Errorf("release command: got %q, want %q", out, want)
	}

	o, err := l.ParseObserve([]byte(run(l.Observe())), 0)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range o.Releases {
		names = append(names, r.Name)
	}
	slices.Sort(names)
	if diff := cmp.Diff([]string{rel2, rel1}, names); diff != "" {
		t.Errorf("releases (-want +got):\n%s", diff)
	}

	// A leftover of an interrupted unpack, then a prune that forgets the
	// current release: only current survives.
	if err := os.Mkdir(local(l.Releases()+"/."+rel1+".unpack.abcdef"), 0o700); err != nil {
		t.Fatal(err)
	}
	// And what an earlier prune moved aside but did not finish removing.
	if err := os.MkdirAll(local(l.Releases()+"/.pruned.123/"+rel1+"/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	removed := strings.Split(strings.TrimSpace(run(l.Prune(nil))), "\n")
	slices.Sort(removed)
	if diff := cmp.Diff([]string{"." + rel1 + ".unpack.abcdef", rel1, rel1 + ".tar.gz"}, removed); diff != "" {
		t.Errorf("pruned (-want +got):\n%s", diff)
	}
	// What went is out of sight at once, and gone once the removal left
	// running in the background ends.
	visible := func() (names []string, hidden int) {
		entries, _ := os.ReadDir(local(l.Releases()))
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") {
				hidden++
			} else {
				names = append(names, e.Name())
			}
		}
		return names, hidden
	}
	if names, _ := visible(); len(names) != 1 || names[0] != rel2 {
		t.Errorf("left in releases/: %v, want only %q", names, rel2)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		names, hidden := visible()
		if hidden == 0 && len(names) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("releases/ still holds %v and %d hidden entries 10 s after the prune", names, hidden)
		}
	}
	for _, dir := range []string{"/root", "/srv", l.DeployTo, l.Releases(), l.Current()} {
		if _, err := os.Stat(local(dir + "/pwned")); err == nil {
			t.Errorf("a release name ran as code: %s/pwned exists", dir)
		}
	}
	if o, err := l.ParseObserve([]byte(run(l.Observe())), 0); err != nil || o.Current != rel2 {
		t.Errorf("current after prune: got %q, %v; want %q", o.Current, err, rel2)
	}
}

func TestLayoutFreshHost(t *testing.T) {
	b := testbed.Start(t, "n1")
	p := newPool(t, b, nil)
	l := Layout{DeployTo: "/srv/never-deployed"}
	c, _ := l.Prune(nil)
	out, err := p.Output(t.Context(), target(b, "n1"), c)
	if err != nil || len(out) != 0 {
		t.Errorf("%s: got %q, %v; want no output and no error", c.Redacted(), out, err)
	}
	c, _ = l.Observe()
	out, err = p.Output(t.Context(), target(b, "n1"), c)
	o, perr := l.ParseObserve(out, 0)
	if err != nil || perr != nil || o.Current != "" || len(o.Releases) != 0 {
		t.Errorf("%s: got %q, %v, %v; want no current, no release and no error", c.Redacted(), out, err, perr)
	}
}
