package gitsrc

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
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

func TestRedactURL(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"token as password", "https://x-access-token:SECRET@github.com/acme/chat.git", "https://x-access-token:REDACTED@github.com/acme/chat.git"},
		{"token as user", "https://ghp_SECRET@github.com/acme/chat.git", "https://REDACTED@github.com/acme/chat.git"},
		{"plain http", "http://user:SECRET@git.acme.test:8080/chat.git", "http://user:REDACTED@git.acme.test:8080/chat.git"},
		{"scheme in capitals", "HTTPS://SECRET@github.com/acme/chat.git", "HTTPS://REDACTED@github.com/acme/chat.git"},
		{"password holding @", "https://user:p@ss@SECRET@git.acme.test/chat.git", "https://user:REDACTED@git.acme.test/chat.git"},
		{"password holding :", "https://user:pa:ss:SECRET@git.acme.test/chat.git", "https://user:REDACTED@git.acme.test/chat.git"},
		{"password holding / and #", "https://user:pa/ss#SECRET@git.acme.test/chat.git", "https://user:REDACTED@git.acme.test/chat.git"},
		{"percent-encoded password", "https://user:p%40ss%3ASECRET@git.acme.test/chat.git", "https://user:REDACTED@git.acme.test/chat.git"},
		{"percent-encoded user kept", "https://us%40er:SECRET@git.acme.test/chat.git", "https://us%40er:REDACTED@git.acme.test/chat.git"},
		{"password only", "https://:SECRET@git.acme.test/chat.git", "https://:REDACTED@git.acme.test/chat.git"},
		{"empty password", "https://user:@git.acme.test/chat.git", "https://user:@git.acme.test/chat.git"},
		{"ssh user and password", "ssh://git:SECRET@git.acme.test:2222/acme/chat.git", "ssh://git:REDACTED@git.acme.test:2222/acme/chat.git"},
		{"ssh user kept", "ssh://git@github.com/acme/chat.git", "ssh://git@github.com/acme/chat.git"},
		{"git+ssh", "git+ssh://deploy:SECRET@git.acme.test/chat.git", "git+ssh://deploy:REDACTED@git.acme.test/chat.git"},
		{"no userinfo", "https://github.com/acme/chat.git", "https://github.com/acme/chat.git"},
		{"empty userinfo", "https://@github.com/acme/chat.git", "https://@github.com/acme/chat.git"},
		{"scp-like", "git@github.com:acme/chat.git", "git@github.com:acme/chat.git"},
		{"scp-like with a port-like path", "deploy@git.acme.test:2222/chat.git", "deploy@git.acme.test:2222/chat.git"},
		{"file URL", "file:///srv/git/chat.git", "file:///srv/git/chat.git"},
		{"file URL with @ in its path", "file:///srv/git/chat@2:x.git", "file:///srv/git/chat@2:x.git"},
		{"absolute path", "/srv/git/chat@2:x.git", "/srv/git/chat@2:x.git"},
		{"relative path", "../chat.git", "../chat.git"},
		{"path that looks like a scheme", "/srv/a://b:c@d", "/srv/a://b:c@d"},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := RedactURL(tt.in)
			if got != tt.want {
				t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if strings.Contains(got, "SECRET") {
				t.Errorf("RedactURL(%q) = %q: the secret shows", tt.in, got)
			}
			if again := RedactURL(got); again != got {
				t.Errorf("RedactURL twice: %q, then %q", got, again)
			}
		})
	}
}

// gitHTTP serves the bare repositories under root over git's smart HTTP
// protocol (git http-backend, as a web server runs it), to clients that
// send the basic auth user:password.
func gitHTTP(t *testing.T, root, user, password string) *httptest.Server {
	t.Helper()
	out, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		t.Fatalf("git --exec-path: %v: this test needs git and its http-backend", err)
	}
	backend := filepath.Join(strings.TrimSpace(string(out)), "git-http-backend")
	if _, err := os.Stat(backend); err != nil {
		t.Fatalf("this test needs git http-backend, which git installs: %v", err)
	}
	cgiHandler := &cgi.Handler{Path: backend, Env: []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"}, Stderr: io.Discard}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != password {
			w.Header().Set("WWW-Authenticate", `Basic realm="git"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		cgiHandler.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// A token in the repository's URL authenticates the mirror and shows in
// none of its errors, whatever fails: go-git and net/http quote the URL of
// a failed request, and url.Parse the whole URL it rejects.
func TestMirrorErrorsCarryNoSecret(t *testing.T) {
	const secret = "SECRET0123456789"
	u := newUpstream(t)
	head := u.commit("main", "first", map[string]string{"a": "1"})
	srv := gitHTTP(t, filepath.Dir(u.bare), "x-access-token", secret)
	host := strings.TrimPrefix(srv.URL, "http://")
	repo := "/" + filepath.Base(u.bare)

	// The secret authenticates: it went from the URL into basic auth.
	good := "http://x-access-token:" + secret + "@" + host + repo
	dir := filepath.Join(t.TempDir(), "mirror")
	m, err := Open(Options{URL: good, Branch: "main", Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := m.Fetch(t.Context()); err != nil || got != head {
		t.Fatalf("Fetch with the token in the URL: %s, %v; want %s", got, err, head)
	}
	// A rotated token is the same repository.
	if _, err := Open(Options{URL: "http://x-access-token:NEW" + secret + "@" + host + repo, Branch: "main", Dir: dir}); err != nil {
		t.Errorf("reopen with another token: %v", err)
	}

	closed := freeAddr(t)
	errs := map[string]func() error{
		"wrong password": func() error {
			_, err := openAt(t, "http://x-access-token:WRONG"+secret+"@"+host+repo).Fetch(t.Context())
			return err
		},
		"token as user, refused": func() error {
			_, err := openAt(t, "http://"+secret+"@"+host+repo).RemoteHead(t.Context())
			return err
		},
		"no such repository": func() error {
			_, err := openAt(t, "http://x-access-token:"+secret+"@"+host+"/missing.git").Fetch(t.Context())
			return err
		},
		"no such branch": func() error {
			m, err := Open(Options{URL: good, Branch: "other", Dir: filepath.Join(t.TempDir(), "mirror")})
			if err != nil {
				return err
			}
			_, err = m.Fetch(t.Context())
			return err
		},
		"connection refused, token as password": func() error {
			_, err := openAt(t, "http://x-access-token:"+secret+"@"+closed+repo).Fetch(t.Context())
			return err
		},
		"connection refused, token as user": func() error {
			_, err := openAt(t, "https://"+secret+"@"+closed+repo).Fetch(t.Context())
			return err
		},
		"another repository in the mirror": func() error {
			_, err := Open(Options{URL: "http://x-access-token:" + secret + "@" + host + "/other.git", Branch: "main", Dir: dir})
			return err
		},
		"a URL that does not parse": func() error {
			_, err := Open(Options{URL: "https://x-access-token:pa/ss" + secret + "@" + host + repo, Branch: "main", Dir: filepath.Join(t.TempDir(), "mirror")})
			return err
		},
	}
	for name, f := range errs {
		t.Run(name, func(t *testing.T) {
			err := f()
			if err == nil {
				t.Fatal("no error")
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("the error shows the secret: %v", err)
			}
			if !strings.Contains(err.Error(), host) && !strings.Contains(err.Error(), closed) {
				t.Errorf("the error does not name the repository: %v", err)
			}
			t.Log(err)
		})
	}
}

// openAt opens a new mirror of url.
func openAt(t *testing.T, url string) *Mirror {
	t.Helper()
	m, err := Open(Options{URL: url, Branch: "main", Dir: filepath.Join(t.TempDir(), "mirror")})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// freeAddr is a local address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
