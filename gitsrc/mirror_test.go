package gitsrc

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// upstream is a real bare repository and a clone that pushes to it, driven
// by the git binary as a developer would.
type upstream struct {
	t    testing.TB
	bare string
	work string
}

func newUpstream(t testing.TB) *upstream {
	t.Helper()
	dir := t.TempDir()
	u := &upstream{t: t, bare: filepath.Join(dir, "app.git"), work: filepath.Join(dir, "work")}
	u.git(dir, "init", "-q", "--bare", "-b", "main", u.bare)
	u.git(dir, "clone", "-q", u.bare, u.work)
	u.git(u.work, "checkout", "-q", "-b", "main")
	return u
}

func (u *upstream) git(dir string, args ...string) string {
	u.t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=Dev", "GIT_AUTHOR_EMAIL=dev@example.test",
		"GIT_COMMITTER_NAME=Dev", "GIT_COMMITTER_EMAIL=dev@example.test", "GIT_CONFIG_GLOBAL=/dev/null")
	out, err := cmd.CombinedOutput()
	if err != nil {
		u.t.Fatalf("git %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// commit writes files (name → content; "" deletes) and pushes to branch.
func (u *upstream) commit(branch, msg string, files map[string]string) string {
	u.t.Helper()
	for name, content := range files {
		p := filepath.Join(u.work, name)
		if content == "" {
			os.Remove(p)
			continue
		}
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			u.t.Fatal(err)
		}
	}
	u.git(u.work, "add", "-A")
	u.git(u.work, "commit", "-q", "--allow-empty", "-m", msg)
	u.git(u.work, "push", "-q", "origin", "HEAD:refs/heads/"+branch)
	return u.git(u.work, "rev-parse", "HEAD")
}

func packCount(t *testing.T, dir string) int {
	t.Helper()
	packs, err := filepath.Glob(filepath.Join(dir, "objects", "pack", "*.pack"))
	if err != nil {
		t.Fatal(err)
	}
	return len(packs)
}

func TestMirrorFetchesOnlyWhenTheHeadMoved(t *testing.T) {
	u := newUpstream(t)
	first := u.commit("main", "first\n\nbody", map[string]string{"deploy.yaml": "app: chat\n", "mix.exs": "v1", "lib/a.ex": "a"})
	m, err := Open(Options{URL: u.bare, Branch: "main", Dir: filepath.Join(t.TempDir(), "mirror")})
	if err != nil {
		t.Fatal(err)
	}
	if got := m.LocalHead(); got != "" {
		t.Fatalf("LocalHead before any fetch: got %q, want empty", got)
	}
	got, err := m.Fetch(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if got != first {
		t.Fatalf("Fetch: got %s, want %s", got, first)
	}
	packs := packCount(t, m.Dir())
	if got, err := m.Fetch(t.Context()); err != nil || got != first {
		t.Fatalf("second Fetch: got %s, %v; want %s", got, err, first)
	}
	if n := packCount(t, m.Dir()); n != packs {
		t.Fatalf("an unmoved head fetched anyway: %d packs, was %d", n, packs)
	}

	// A push to another branch moves nothing.
	u.commit("feature", "elsewhere", map[string]string{"lib/a.ex": "feature"})
	if got, _ := m.Fetch(t.Context()); got != first {
		t.Fatalf("a push to another branch moved the mirror to %s", got)
	}

	u.git(u.work, "checkout", "-q", "main")
	u.git(u.work, "reset", "-q", "--hard", first)
	second := u.commit("main", "second", map[string]string{"lib/a.ex": "a2"})
	if got, _ := m.Fetch(t.Context()); got != second {
		t.Fatalf("Fetch after a push: got %s, want %s", got, second)
	}
	data, err := m.ReadFile(first, "deploy.yaml")
	if err != nil || string(data) != "app: chat\n" {
		t.Fatalf("ReadFile at first: got %q, %v", data, err)
	}
	c, err := m.Commit(first)
	if err != nil || c.Subject != "first" || c.Author != "Dev" {
		t.Fatalf("Commit: got %+v, %v", c, err)
	}
	if ok, err := m.IsAncestor(first, second); err != nil || !ok {
		t.Fatalf("IsAncestor(first, second): got %v, %v", ok, err)
	}
	if ok, _ := m.IsAncestor(second, first); ok {
		t.Fatal("IsAncestor(second, first): got true")
	}
	if _, err := m.ReadFile(first, "missing.yaml"); err == nil {
		t.Fatal("ReadFile of a missing file: no error")
	}

	// Reopened, it keeps what it fetched; another URL is refused.
	if m2, err := Open(Options{URL: u.bare, Branch: "main", Dir: m.Dir()}); err != nil || m2.LocalHead() != second {
		t.Fatalf("reopen: %v, head %s", err, m2.LocalHead())
	}
	if _, err := Open(Options{URL: u.work, Branch: "main", Dir: m.Dir()}); err == nil {
		t.Fatal("reopening the mirror for another URL: no error")
	}
}

func TestFingerprintFollowsOnlyTheNamedFiles(t *testing.T) {
	u := newUpstream(t)
	base := map[string]string{"mix.exs": "v1", "mix.lock": "%{}", "assets/package.json": "{}", "lib/a.ex": "a"}
	c1 := u.commit("main", "one", base)
	c2 := u.commit("main", "code only", map[string]string{"lib/a.ex": "a2"})
	c3 := u.commit("main", "deps", map[string]string{"mix.lock": "%{x: 1}"})
	c4 := u.commit("main", "assets dir", map[string]string{"assets/js/app.js": "x"})
	m, err := Open(Options{URL: u.bare, Branch: "main", Dir: filepath.Join(t.TempDir(), "mirror")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Fetch(t.Context()); err != nil {
		t.Fatal(err)
	}
	fp := func(sha string, patterns ...string) string {
		t.Helper()
		f, err := m.Fingerprint(sha, patterns)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	deps := []string{"mix.exs", "mix.lock"}
	tests := []struct {
		name     string
		a, b     string
		patterns []string
		same     bool
	}{
		{"code change leaves deps alone", c1, c2, deps, true},
		{"lock change moves deps", c2, c3, deps, false},
		{"glob", c2, c3, []string{"mix.*"}, false},
		{"directory pattern sees new file", c3, c4, []string{"assets"}, false},
		{"file pattern ignores sibling", c3, c4, []string{"assets/package.json"}, true},
		{"patterns are part of the print", c1, c1, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fp(tt.a, tt.patterns...) == fp(tt.b, tt.patterns...); got != tt.same {
				t.Errorf("same fingerprint: got %v, want %v", got, tt.same)
			}
		})
	}
	if fp(c1, "mix.exs") == fp(c1, "mix.lock") {
		t.Error("different patterns over different files gave one fingerprint")
	}
	// The digest's form is kept on build hosts (a step's record): it must
	// not change, or every step runs again once.
	blob := sha1.Sum([]byte("blob 2\x00v1"))
	want := sha256.Sum256([]byte("pattern mix.exs\nmix.exs\x00" + hex.EncodeToString(blob[:]) + "\x000100644\n"))
	if got := fp(c1, "mix.exs"); got != hex.EncodeToString(want[:]) {
		t.Errorf("fingerprint of mix.exs: got %s, want %s", got, hex.EncodeToString(want[:]))
	}
}

// The daemon and a CLI command share a mirror: what one fetched, the other
// must find.
func TestMirrorSharedBetweenTwoOperators(t *testing.T) {
	u := newUpstream(t)
	u.commit("main", "one", map[string]string{"a": "1"})
	dir := filepath.Join(t.TempDir(), "mirror")
	daemon, err := Open(Options{URL: u.bare, Branch: "main", Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := daemon.Fetch(t.Context()); err != nil {
		t.Fatal(err)
	}
	second := u.commit("main", "two", map[string]string{"a": "2"})
	cli, err := Open(Options{URL: u.bare, Branch: "main", Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := cli.Fetch(t.Context()); err != nil || got != second {
		t.Fatalf("the CLI's fetch: %s, %v", got, err)
	}
	got, err := daemon.Fetch(t.Context())
	if err != nil || got != second {
		t.Fatalf("the daemon's fetch after the CLI's: %s, %v", got, err)
	}
	if _, err := daemon.Commit(second); err != nil {
		t.Fatalf("the daemon cannot read a commit the CLI fetched: %v", err)
	}
}

func TestResolveNamesOneCommit(t *testing.T) {
	u := newUpstream(t)
	first := u.commit("main", "first", map[string]string{"a": "1"})
	u.commit("main", "second", map[string]string{"a": "2"})
	m, err := Open(Options{URL: u.bare, Branch: "main", Dir: filepath.Join(t.TempDir(), "mirror")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Fetch(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, rev := range []string{first, first[:7], strings.ToUpper(first[:10]), " " + first[:12] + "\n"} {
		if got, err := m.Resolve(rev); err != nil || got != first {
			t.Errorf("Resolve(%q): got %q, %v; want %s", rev, got, err, first)
		}
	}
	for _, tt := range []struct{ rev, want string }{
		{first[:6], "not a commit SHA"},
		{"main", "not a commit SHA"},
		{"HEAD~1", "not a commit SHA"},
		{"$(reboot)", "not a commit SHA"},
		{"0000000", "no commit 0000000"},
		{strings.Repeat("0", 40), "commit 0000000000000000000000000000000000000000"},
	} {
		if got, err := m.Resolve(tt.rev); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Resolve(%q): got %q, %v; want an error saying %q", tt.rev, got, err, tt.want)
		}
	}
	// Two commits sharing 7 digits are too rare to make here; the choice
	// among candidates is tested on its own.
	all := []string{"abcdef1111", "abcdef1222", "abcdef2333"}
	if got, err := m.pick("abcdef2", all); err != nil || got != "abcdef2333" {
		t.Errorf("pick of a unique prefix: %q, %v", got, err)
	}
	if got, err := m.pick("abcdef1", all); err == nil || !strings.Contains(err.Error(), "ambiguous: it starts abcdef1111, abcdef1222") {
		t.Errorf("pick of a shared prefix: got %q, %v; want both candidates named", got, err)
	}
}
