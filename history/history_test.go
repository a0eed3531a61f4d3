package history

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDeployRecordAndLog(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Begin("production", "abc", "one-line change", "manual")
	if err != nil {
		t.Fatal(err)
	}
	if r.ID() != 1 {
		t.Fatalf("first ID: got %d, want 1", r.ID())
	}
	r.Line("n1", "out", "hello\n")
	r.Phase("build", time.Now().Add(-time.Second), "ok")
	r.Node(NodeResult{Host: "n1", From: "old", To: "abc", Outcome: "updated"})
	r.Node(NodeResult{Host: "n1", From: "old", To: "old", Outcome: "rolled back: membership"})
	if err := r.Finish(Failure, "membership check failed on n1"); err != nil {
		t.Fatal(err)
	}
	d, err := s.Get(1)
	if err != nil {
		t.Fatal(err)
	}
	if d.Result != Failure || len(d.Phases) != 1 || d.Phases[0].Duration < time.Second || len(d.Nodes) != 1 || d.Nodes[0].Outcome != "rolled back: membership" {
		t.Fatalf("record: %+v", d)
	}
	rc, err := s.Log(1)
	if err != nil {
		t.Fatal(err)
	}
	log, _ := io.ReadAll(rc)
	rc.Close()
	for _, want := range []string{" n1 out hello\n", "op phase build: ok", "op result failure: membership check failed on n1"} {
		if !strings.Contains(string(log), want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	r2, _ := s.Begin("production", "def", "", "poll")
	if r2.ID() != 2 {
		t.Fatalf("second ID: got %d", r2.ID())
	}
	list, _ := s.List(1)
	if len(list) != 1 || list[0].ID != 2 {
		t.Fatalf("List(1): %+v", list)
	}
	if _, err := s.Get(9); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(9): %v", err)
	}
}

func TestRunningDeployOfADeadOperatorIsInterrupted(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	r, _ := s.Begin("production", "abc", "", "manual")
	// Rewrite its PID to one that cannot be alive.
	d := r.Snapshot()
	d.PID = 1 << 30
	s.save(&d)
	s2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := s2.Get(r.ID())
	if got.Result != Interrupted {
		t.Fatalf("result: got %s, want interrupted", got.Result)
	}
	if _, err := os.Stat(filepath.Join(dir, "deploys", "1", "log")); err != nil {
		t.Fatal(err)
	}
}
