package reconcile_test

import (
	"strings"
	"sync"
	"testing"

	"github.com/clusterops/operator/history"
	"github.com/clusterops/operator/reconcile"
	"github.com/clusterops/operator/testbed"
)

// recorder is a Reporter that keeps what it was told, in place of GitHub
// (whose API the statuses package's own tests stand in for).
type recorder struct {
	mu  sync.Mutex
	got []reconcile.Status
}

func (r *recorder) Report(s reconcile.Status) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, s)
}

func (r *recorder) states(commit string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, s := range r.got {
		if s.Commit == commit {
			out = append(out, string(s.State)+" "+s.Description)
		}
	}
	return out
}

func TestReportedStates(t *testing.T) {
	f := newFixture(t)
	rec := &recorder{}
	f.r.Reporter = rec

	t.Run("a successful deploy", func(t *testing.T) {
		head, err := f.repo.Commit(t.Context(), "first", nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.sync(); err != nil {
			t.Fatal(err)
		}
		got := strings.Join(rec.states(head), "\n")
		want := strings.Join([]string{
			"pending queued", "pending building", "pending staging", "pending migrating",
			"pending rolling out 1/3", "pending rolling out 2/3", "pending rolling out 3/3",
			"success deployed " + head[:12] + " to 3 nodes",
		}, "\n")
		if got != want {
			t.Errorf("states:\n%s\nwant:\n%s", got, want)
		}
	})

	t.Run("a node that fails its check is named", func(t *testing.T) {
		bad, err := f.repo.Commit(t.Context(), "wrong cookie", testbed.AppendLine("rel/env.sh.eex", "export RELEASE_COOKIE=not-the-cluster-cookie"))
		if err != nil {
			t.Fatal(err)
		}
		f.sync()
		states := rec.states(bad)
		last := states[len(states)-1]
		if !strings.HasPrefix(last, "failure rollout on n1: membership:") || strings.Count(strings.Join(states, "\n"), "failure") != 1 {
			t.Errorf("states of a commit failing on n1: %q", states)
		}
	})

	t.Run("an invalid manifest is an error before any host is touched", func(t *testing.T) {
		bad, err := f.repo.Commit(t.Context(), "broken manifest", func(work string) error {
			return testbed.AppendLine("deploy.yaml", "rollout: {batch: two}")(work)
		})
		if err != nil {
			t.Fatal(err)
		}
		before, _ := f.bed.Host("build").Sh(t.Context(), "ls /root/build/chat.operator/commits | wc -l")
		out, err := f.sync()
		de := deployError(t, err)
		if de.Class != reconcile.ClassError || de.Phase != "manifest" || !strings.Contains(de.Error(), "deploy.yaml:") {
			t.Fatalf("got %v, want a manifest error naming the file and line", de)
		}
		if out.Deploy == nil || out.Deploy.Result != history.Error {
			t.Fatalf("record: %+v", out.Deploy)
		}
		states := rec.states(bad)
		if len(states) != 2 || states[0] != "pending queued" || !strings.HasPrefix(states[1], "error manifest: invalid manifest") {
			t.Errorf("states: %q", states)
		}
		if after, _ := f.bed.Host("build").Sh(t.Context(), "ls /root/build/chat.operator/commits | wc -l"); after != before {
			t.Error("the build host was touched by a deploy with an invalid manifest")
		}
	})
}
