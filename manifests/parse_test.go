package manifests

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the .errors golden files from Parse's output")

// testdataFiles returns the .yaml files of testdata/dir, failing the test
// when there are none so that a misplaced directory cannot pass silently.
func testdataFiles(t testing.TB, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no testdata/%s/*.yaml files", dir)
	}
	return files
}

func parseFile(t *testing.T, file string) (*Manifest, error) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return Parse("deploy.yaml", data)
}

func TestParseValid(t *testing.T) {
	for _, file := range testdataFiles(t, "valid") {
		t.Run(filepath.Base(file), func(t *testing.T) {
			m, err := parseFile(t, file)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if err := m.Validate(); err != nil {
				t.Errorf("Validate after Parse: %v", err)
			}
		})
	}
}

// TestParseFull checks the example of PRODUCT.md section 2 key by key.
func TestParseFull(t *testing.T) {
	got, err := parseFile(t, "testdata/valid/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := &Manifest{
		App: "chat",
		Hosts: map[string]Host{
			"build": {Name: "build", Address: "10.0.0.5", User: "deploy", Port: 22},
			"nyc":   {Name: "nyc", Address: "10.0.1.11", User: "deploy", Port: 22, Node: "chat@10.0.1.11"},
			"lon":   {Name: "lon", Address: "10.0.2.11", User: "deploy", Port: 22, Node: "chat@10.0.2.11"},
			"lb":    {Name: "lb", Address: "10.0.0.2", User: "deploy", Port: 22},
		},
		Build: Build{
			Host: "build",
			Dir:  "/home/deploy/build/chat",
			Env:  map[string]string{"MIX_ENV": "prod"},
			Steps: []Step{
				{Run: "mix deps.get --only prod", WhenChanged: []string{"mix.exs", "mix.lock"}},
				{Run: "npm ci --prefix assets", WhenChanged: []string{"assets/package.json", "assets/package-lock.json"}},
				{Run: "npm run deploy --prefix assets && mix release --overwrite"},
			},
			Artifact: "_build/prod/chat-*.tar.gz",
			Timeout:  DefaultBuildTimeout,
		},
		Environments: map[string]Environment{
			"production": {Name: "production", Hosts: []string{"nyc", "lon"}, DeployTo: "/home/deploy/chat", KeepReleases: 5},
		},
		Release: Release{
			Env:     map[string]string{"RELEASE_NODE": "{{.Node}}", "RELEASE_DISTRIBUTION": "name"},
			Links:   []string{"releases/COOKIE", "config/prod.secret.exs"},
			Files:   []ReleaseFile{{Template: "deploy/vm.args.tmpl", Path: "releases/vm.args"}},
			Start:   "bin/chat daemon",
			Stop:    "bin/chat stop",
			Ping:    "bin/chat pid",
			Migrate: "bin/chat eval 'Chat.Release.migrate()'",
		},
		Cluster: Cluster{Members: "bin/chat rpc 'Enum.each(Node.list(), &IO.puts/1)'", Settle: 30 * time.Second},
		Health:  &Health{URL: "http://{{.Host.Address}}:4000/health", ExpectStatus: 200},
		Rollout: Rollout{Batch: 1, Timeout: 2 * time.Minute},
		LoadBalancer: &LoadBalancer{HAProxy: HAProxy{
			Host: "lb", Socket: "/run/haproxy/admin.sock", Backend: "www-backend",
		}, DrainTimeout: 5 * time.Second},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Parse mismatch (-want +got):\n%s", diff)
	}
}

// TestParseDefaults checks every default on a manifest that leaves them out.
func TestParseDefaults(t *testing.T) {
	got, err := parseFile(t, "testdata/valid/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := &Manifest{
		App: "chat",
		Hosts: map[string]Host{
			"nyc": {Name: "nyc", Address: "10.0.1.11", User: "deploy", Port: DefaultPort, Node: "chat@10.0.1.11"},
		},
		Build: Build{
			Host:     "nyc",
			Dir:      "build/chat",
			Steps:    []Step{{Run: "mix release --overwrite"}},
			Artifact: "_build/prod/chat-*.tar.gz",
			Timeout:  DefaultBuildTimeout,
		},
		Environments: map[string]Environment{
			"production": {Name: "production", Hosts: []string{"nyc"}, DeployTo: "/home/deploy/chat", KeepReleases: 5},
		},
		Release: Release{Start: "bin/chat daemon", Stop: "bin/chat stop", Ping: "bin/chat pid"},
		Cluster: Cluster{Members: "bin/chat rpc 'Enum.each(Node.list(), &IO.puts/1)'", Settle: 30 * time.Second},
		Rollout: Rollout{Batch: 1, Timeout: 2 * time.Minute},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Parse mismatch (-want +got):\n%s", diff)
	}
}

// TestParseSectionDefaults checks the defaults inside optional sections,
// which exist only when the section does.
func TestParseSectionDefaults(t *testing.T) {
	data, err := os.ReadFile("testdata/valid/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	data = append(data, "health: {url: \"http://{{.Host.Address}}/\"}\nloadbalancer: {haproxy: {host: nyc, backend: www}}\n"...)
	m, err := Parse("deploy.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&Health{URL: "http://{{.Host.Address}}/", ExpectStatus: 200}, m.Health); diff != "" {
		t.Errorf("Health mismatch (-want +got):\n%s", diff)
	}
	wantLB := &LoadBalancer{HAProxy: HAProxy{Host: "nyc", Socket: "/run/haproxy/admin.sock", Backend: "www"}, DrainTimeout: DefaultDrainTimeout}
	if diff := cmp.Diff(wantLB, m.LoadBalancer); diff != "" {
		t.Errorf("LoadBalancer mismatch (-want +got):\n%s", diff)
	}
}

// TestParseBuildTimeout checks that build.timeout, when given, replaces
// its default.
func TestParseBuildTimeout(t *testing.T) {
	data, err := os.ReadFile("testdata/valid/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	data = []byte(strings.Replace(string(data), "build:\n", "build:\n  timeout: 45m\n", 1))
	m, err := Parse("deploy.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m.Build.Timeout, 45*time.Minute; got != want {
		t.Errorf("Build.Timeout = %v, want %v", got, want)
	}
}

// TestParseInvalid compares Parse's problems with the golden .errors file
// beside each invalid manifest. Run with -update to rewrite them, then read
// the diff: the golden files are the specification of the messages.
func TestParseInvalid(t *testing.T) {
	for _, file := range testdataFiles(t, "invalid") {
		t.Run(filepath.Base(file), func(t *testing.T) {
			_, err := parseFile(t, file)
			if err == nil {
				t.Fatal("Parse succeeded, want problems")
			}
			var errs *Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse error is %T, want *Errors: %v", err, err)
			}
			got := err.Error() + "\n"
			golden := strings.TrimSuffix(file, ".yaml") + ".errors"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("problems mismatch (-want +got):\n%s", diff)
			}
		})
	}
}
