package manifests

import (
	"os"
	"testing"
)

// The example app's manifest is the one users copy: it must stay valid and
// use every section.
func TestExampleAppManifest(t *testing.T) {
	data, err := os.ReadFile("../examples/cluster-app/deploy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := Parse("deploy.yaml", data)
	if err != nil {
		t.Fatalf("examples/cluster-app/deploy.yaml:\n%v", err)
	}
	if m.Health == nil || m.LoadBalancer == nil || m.Release.Migrate == "" || len(m.Release.Links) == 0 ||
		len(m.Release.Files) == 0 || len(m.Release.Env) == 0 || len(m.Build.Env) == 0 || m.Cluster.Settle == 0 {
		t.Fatalf("the example manifest leaves a section out: %+v", m)
	}
	for _, s := range m.Build.Steps[:2] {
		if len(s.WhenChanged) == 0 {
			t.Errorf("step %q has no when_changed", s.Run)
		}
	}
}
