package reconcile_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// examplePing is the example manifest's release.ping.
const examplePing = "bin/ping"

// setPing returns a commit change that makes the manifest's release.ping
// the given command.
func setPing(command string) func(work string) error {
	return func(work string) error {
		path := filepath.Join(work, "deploy.yaml")
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		old := "  ping: " + examplePing + "\n"
		if !strings.Contains(string(b), old) {
			return os.ErrNotExist
		}
		return os.WriteFile(path, []byte(strings.Replace(string(b), old, "  ping: "+command+"\n", 1)), 0o644)
	}
}

// TestPingPrintingAnotherProcessIsNoHint deploys with a ping that succeeds
// when the node answers but prints the pid of a process that is not the
// node (the oldest sshd: alive, listening, not of the release): the stop
// must not take that process for the node, and every node is updated and
// checked as usual.
func TestPingPrintingAnotherProcessIsNoHint(t *testing.T) {
	f := newFixture(t)
	f.mustDeploy()
	commit, err := f.repo.Commit(t.Context(), "a ping that prints another pid", setPing(`"`+examplePing+` >/dev/null && pgrep -o sshd"`))
	if err != nil {
		t.Fatal(err)
	}
	out, err := f.sync()
	if err != nil {
		t.Fatalf("deploy: %v\n%s", err, f.log(out.Deploy.ID))
	}
	f.wantCluster(commit)
	log := f.log(out.Deploy.ID)
	if got := strings.Count(log, "does not run from"); got != len(f.nodes) {
		t.Errorf("%d stops saw that the pid is not the node's, want %d:\n%s", got, len(f.nodes), log)
	}

	// The next deploy stops nodes whose ping printed their own pid.
	next, err := f.repo.Commit(t.Context(), "the usual ping", setPingBack)
	if err != nil {
		t.Fatal(err)
	}
	if out, err = f.sync(); err != nil {
		t.Fatalf("deploy: %v\n%s", err, f.log(out.Deploy.ID))
	}
	f.wantCluster(next)
}

func setPingBack(work string) error {
	path := filepath.Join(work, "deploy.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	i := strings.Index(string(b), "  ping: ")
	if i < 0 {
		return os.ErrNotExist
	}
	j := strings.IndexByte(string(b[i:]), '\n')
	return os.WriteFile(path, []byte(string(b[:i])+"  ping: "+examplePing+"\n"+string(b[i+j+1:])), 0o644)
}
