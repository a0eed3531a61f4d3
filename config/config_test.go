package config

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func write(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "operator.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func load(t *testing.T, path string, args ...string) (*Config, error) {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	flags := RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return Load(path, false, flags)
}

func TestDefaultsAndDerivedValues(t *testing.T) {
	t.Setenv("HOME", "/home/op")
	c, err := load(t, write(t, "repo: git@github.com:acme/chat.git\n"))
	if err != nil {
		t.Fatal(err)
	}
	poll := DefaultPoll
	want := &Config{
		Repo: "git@github.com:acme/chat.git", Branch: "main", Environment: "production", Manifest: "deploy.yaml",
		StateDir: "/var/lib/operator", Listen: "127.0.0.1:8080", PublicURL: "http://127.0.0.1:8080", Poll: &poll,
		SSH:    SSH{KnownHosts: "/home/op/.ssh/known_hosts"},
		GitHub: GitHub{APIURL: "https://api.github.com/", Repository: "acme/chat", StatusContext: "deploy/production"},
	}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Fatalf("config (-want +got):\n%s", diff)
	}
}

func TestFlagsWinOverTheFile(t *testing.T) {
	path := write(t, "repo: /srv/app.git\nbranch: main\nenvironment: production\npoll: \"@every 1m\"\n")
	c, err := load(t, path, "--branch", "release", "--environment", "staging", "--poll", "", "--public-url", "https://deploy.acme.test/")
	if err != nil {
		t.Fatal(err)
	}
	if c.Branch != "release" || c.Environment != "staging" || *c.Poll != "" || c.PublicURL != "https://deploy.acme.test" {
		t.Fatalf("got branch %q env %q poll %q public %q", c.Branch, c.Environment, *c.Poll, c.PublicURL)
	}
	if c.GitHub.StatusContext != "deploy/staging" || c.GitHub.Repository != "" {
		t.Fatalf("derived: context %q repository %q", c.GitHub.StatusContext, c.GitHub.Repository)
	}
}

func TestBadConfigNamesEveryProblem(t *testing.T) {
	tests := []struct {
		name, file string
		want       []string
	}{
		{"unknown key", "repo: x\nrepos: y\n", []string{"line 2: field repos not found"}},
		{"wrong type", "repo: [a]\n", []string{"operator.yaml", "line 1"}},
		{"several", "branch: 'a b'\nlisten: nope\npoll: every minute\nssh: {jump: bastion}\n", []string{
			"operator.yaml: repo: required", "operator.yaml: branch:", "operator.yaml: listen:", "operator.yaml: poll:", "operator.yaml: ssh.jump:",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, write(t, tt.file))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestMissingFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "operator.yaml")
	if _, err := Load(missing, true, nil); err == nil {
		t.Fatal("a required missing file: no error")
	}
	c, err := load(t, missing, "--repo", "/srv/app.git")
	if err != nil || c.Repo != "/srv/app.git" {
		t.Fatalf("flags alone: %v, %+v", err, c)
	}
}

func TestGitHubRepository(t *testing.T) {
	for in, want := range map[string]string{
		"git@github.com:acme/chat.git":     "acme/chat",
		"https://github.com/acme/chat":     "acme/chat",
		"https://github.com/acme/chat.git": "acme/chat",
		"ssh://git@github.com/acme/ch.at":  "acme/ch.at",
		"file:///srv/chat.git":             "",
		"git@gitlab.com:acme/chat.git":     "",
	} {
		if got := GitHubRepository(in); got != want {
			t.Errorf("GitHubRepository(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSecretsNeverPrint(t *testing.T) {
	s := Secrets{GitHubToken: "ghp_secret", WebhookSecret: "hook-secret", APIToken: "api-secret"}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		got := fmt.Sprintf(verb, s)
		for _, secret := range []string{"ghp_secret", "hook-secret", "api-secret"} {
			if strings.Contains(got, secret) {
				t.Errorf("%s printed a secret: %s", verb, got)
			}
		}
	}
}
