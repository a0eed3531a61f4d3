package manifests

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func parseTestdata(t *testing.T, file string) *Manifest {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Parse("deploy.yaml", data)
	if err != nil {
		t.Fatalf("Parse %s: %v", file, err)
	}
	return m
}

func TestParseAnchors(t *testing.T) {
	m := parseTestdata(t, "testdata/valid/anchors.yaml")
	want := map[string]Host{
		"nyc": {Name: "nyc", Address: "10.0.1.11", User: "deploy", Port: 2222, Node: "chat@10.0.1.11"},
		"lon": {Name: "lon", Address: "10.0.2.11", User: "deploy", Port: 2222, Node: "chat@10.0.2.11"},
	}
	if diff := cmp.Diff(want, m.Hosts); diff != "" {
		t.Errorf("Hosts mismatch (-want +got):\n%s", diff)
	}
	wantEnv := map[string]string{
		"MIX_ENV":      "prod",
		"PORT":         "4000",
		"RELEASE_NODE": "{{.Node}}",
		"PEERS":        `{{join .Peers ","}}`,
	}
	if diff := cmp.Diff(wantEnv, m.Release.Env); diff != "" {
		t.Errorf("Release.Env mismatch (-want +got):\n%s", diff)
	}
}

func TestManifestHelpers(t *testing.T) {
	m := parseTestdata(t, "testdata/valid/full.yaml")

	env, err := m.Environment("production")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := env.ReleaseDir("abc"), "/home/deploy/chat/releases/abc"; got != want {
		t.Errorf("ReleaseDir = %q, want %q", got, want)
	}
	if _, err := m.Environment("staging"); !errors.Is(err, ErrUnknownEnvironment) {
		t.Errorf("Environment(staging) error = %v, want ErrUnknownEnvironment", err)
	}

	nodes, err := m.NodeHosts("production")
	if err != nil {
		t.Fatal(err)
	}
	wantNodes := []Host{
		{Name: "nyc", Address: "10.0.1.11", User: "deploy", Port: 22, Node: "chat@10.0.1.11"},
		{Name: "lon", Address: "10.0.2.11", User: "deploy", Port: 22, Node: "chat@10.0.2.11"},
	}
	if diff := cmp.Diff(wantNodes, nodes); diff != "" {
		t.Errorf("NodeHosts mismatch (-want +got):\n%s", diff)
	}
	if _, err := m.NodeHosts("staging"); !errors.Is(err, ErrUnknownEnvironment) {
		t.Errorf("NodeHosts(staging) error = %v, want ErrUnknownEnvironment", err)
	}

	if got, want := m.BuildHost(), (Host{Name: "build", Address: "10.0.0.5", User: "deploy", Port: 22}); got != want {
		t.Errorf("BuildHost = %+v, want %+v", got, want)
	}

	peers, err := m.Peers("production", "lon")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"chat@10.0.1.11"}, peers); diff != "" {
		t.Errorf("Peers mismatch (-want +got):\n%s", diff)
	}
	if _, err := m.Peers("production", "build"); !errors.Is(err, ErrUnknownHost) {
		t.Errorf("Peers(production, build) error = %v, want ErrUnknownHost", err)
	}

	commit := strings.Repeat("ab", 20)
	data, err := m.TemplateData("production", "nyc", commit)
	if err != nil {
		t.Fatal(err)
	}
	wantData := TemplateData{
		App:        "chat",
		Env:        "production",
		Commit:     commit,
		Node:       "chat@10.0.1.11",
		Peers:      []string{"chat@10.0.2.11"},
		Host:       TemplateHost{Name: "nyc", Address: "10.0.1.11"},
		DeployTo:   "/home/deploy/chat",
		ReleaseDir: "/home/deploy/chat/releases/" + commit,
	}
	if diff := cmp.Diff(wantData, data); diff != "" {
		t.Errorf("TemplateData mismatch (-want +got):\n%s", diff)
	}
	url, err := Render(m.Health.URL, data)
	if err != nil {
		t.Fatal(err)
	}
	if want := "http://10.0.1.11:4000/health"; url != want {
		t.Errorf("health URL = %q, want %q", url, want)
	}
}

func TestRender(t *testing.T) {
	data := TemplateData{
		App:   "chat",
		Node:  "chat@10.0.1.11",
		Peers: []string{"chat@10.0.2.11", "chat@10.0.3.11"},
		Host:  TemplateHost{Name: "nyc", Address: "10.0.1.11"},
	}
	tests := []struct {
		name, tmpl, want, wantErr string
	}{
		{name: "plain", tmpl: "name", want: "name"},
		{name: "node", tmpl: "-name {{.Node}}", want: "-name chat@10.0.1.11"},
		{name: "host", tmpl: "{{.Host.Name}}/{{.Host.Address}}", want: "nyc/10.0.1.11"},
		{name: "join", tmpl: `[{{join .Peers ","}}]`, want: "[chat@10.0.2.11,chat@10.0.3.11]"},
		{name: "range", tmpl: "{{range .Peers}}'{{.}}' {{end}}", want: "'chat@10.0.2.11' 'chat@10.0.3.11' "},
		{name: "unknown field", tmpl: "{{.Nope}}", wantErr: "can't evaluate field Nope"},
		{name: "unclosed", tmpl: "{{.Node", wantErr: "unclosed action"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Render(tt.tmpl, data)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Render error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("Render = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestValidateBuiltInGo checks that Validate reports a Manifest assembled in
// Go by key alone, since it has no file or line.
func TestValidateBuiltInGo(t *testing.T) {
	m := parseTestdata(t, "testdata/valid/minimal.yaml")
	m.Build.Artifact = ""
	m.Rollout.Batch = 0
	h := m.Hosts["nyc"]
	h.Name = "" // a Host copied into the map without its name
	m.Hosts["nyc"] = h
	err := m.Validate()
	var errs *Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Validate error is %T, want *Errors: %v", err, err)
	}
	want := strings.Join([]string{
		"build.artifact: required",
		`hosts.nyc: Name is ""; it must be the host's key`,
		"rollout.batch: must be at least 1",
	}, "\n")
	if diff := cmp.Diff(want, err.Error()); diff != "" {
		t.Errorf("Validate mismatch (-want +got):\n%s", diff)
	}
}

func TestRevisionShort(t *testing.T) {
	for _, tt := range []struct{ commit, want string }{
		{"0123456789abcdef0123456789abcdef01234567", "0123456"},
		{"abc", "abc"},
		{"", ""},
	} {
		if got := (Revision{Commit: tt.commit}).Short(); got != tt.want {
			t.Errorf("Revision{%q}.Short() = %q, want %q", tt.commit, got, tt.want)
		}
	}
}

func TestReleaseEnv(t *testing.T) {
	data, err := os.ReadFile("testdata/valid/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := Parse("deploy.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	got, err := m.ReleaseEnv("production", "lon", "abc")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"RELEASE_NODE": "chat@10.0.2.11", "RELEASE_DISTRIBUTION": "name"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("ReleaseEnv (-want +got):\n%s", diff)
	}
	if _, err := m.ReleaseEnv("production", "nope", "abc"); err == nil {
		t.Fatal("unknown host: no error")
	}
}
