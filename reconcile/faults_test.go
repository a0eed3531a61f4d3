package reconcile_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clusterops/operator/history"
	"github.com/clusterops/operator/reconcile"
	"github.com/clusterops/operator/testbed"
)

// beamPID is the PID of the Erlang VM of node, found from outside the host;
// it changes exactly when the node was restarted.
func (f *fixture) beamPID(node string) string {
	f.t.Helper()
	// [c] keeps the pattern from matching the shell that runs pgrep.
	out, _ := f.bed.Host(node).Sh(f.t.Context(), "pgrep -f -- '-name [c]hat@"+f.bed.Host(node).Addr.String()+" ' || true")
	return strings.TrimSpace(out)
}

// adminStates reads every server's srv_admin_state of the chat backend
// straight from HAProxy's socket (0 ready, 8 drain).
func (f *fixture) adminStates() map[string]string {
	out, err := f.bed.Host("lb").HAProxy(f.t.Context(), "show servers state chat")
	if err != nil {
		return nil
	}
	states := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		fl := strings.Fields(line)
		if len(fl) > 6 && fl[1] == "chat" {
			states[fl[3]] = fl[6]
		}
	}
	return states
}

// wantSwitchedNothing checks what a deploy whose migration failed leaves:
// the cluster whole on commit, no node restarted (its VM still pids'), and
// every node ready in HAProxy (n1 drained while the migration ran too).
func (f *fixture) wantSwitchedNothing(commit string, pids map[string]string) {
	f.t.Helper()
	f.wantCluster(commit)
	for _, n := range f.nodes {
		if got := f.beamPID(n); got != pids[n] {
			f.t.Errorf("%s was restarted by a deploy whose migration failed", n)
		}
	}
	for server, state := range f.adminStates() {
		if state != "0" {
			f.t.Errorf("after the failed migration HAProxy has %s in admin state %s, want 0 (ready)", server, state)
		}
	}
}

func (f *fixture) mustDeploy() string {
	f.t.Helper()
	head, err := f.repo.Commit(f.t.Context(), "deploy", nil)
	if err != nil {
		f.t.Fatal(err)
	}
	if out, err := f.sync(); err != nil {
		f.t.Fatalf("deploy of %s: %v\n%s", head, err, f.log(out.Deploy.ID))
	}
	return head
}

func deployError(t *testing.T, err error) *reconcile.DeployError {
	t.Helper()
	var de *reconcile.DeployError
	if !errors.As(err, &de) {
		t.Fatalf("got %v, want a *reconcile.DeployError", err)
	}
	return de
}

func TestNodeThatCannotJoinIsRolledBackAndTheOthersUntouched(t *testing.T) {
	f := newFixture(t)
	good := f.mustDeploy()
	pids := map[string]string{}
	for _, n := range f.nodes {
		pids[n] = f.beamPID(n)
	}
	// The commit gives its nodes another cookie: they start, answer ping,
	// and cannot join the cluster.
	bad, err := f.repo.Commit(t.Context(), "wrong cookie", testbed.AppendLine("rel/env.sh.eex", "export RELEASE_COOKIE=not-the-cluster-cookie"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := f.sync()
	de := deployError(t, err)
	if de.Class != reconcile.ClassFailure || de.Host != "n1" || de.Check != "membership" {
		t.Fatalf("got %v (class %d host %q check %q), want a membership failure on n1", de, de.Class, de.Host, de.Check)
	}
	if !strings.Contains(de.Error(), "missing chat@") {
		t.Errorf("the error does not say what n1's peers printed: %v", de)
	}
	if out.Deploy.Result != history.Failure {
		t.Errorf("result %s, want failure", out.Deploy.Result)
	}
	f.wantCluster(good) // n1 back on the good release and in the cluster
	for _, n := range []string{"n2", "n3"} {
		if got := f.beamPID(n); got != pids[n] || got == "" {
			t.Errorf("%s was restarted (VM %s, was %s): it should never have been touched", n, got, pids[n])
		}
	}
	outcomes := map[string]string{}
	for _, n := range out.Deploy.Nodes {
		outcomes[n.Host] = n.Outcome
	}
	if !strings.HasPrefix(outcomes["n1"], "rolled back after membership failed: back on") || outcomes["n2"] != "untouched" || outcomes["n3"] != "untouched" {
		t.Errorf("node outcomes: %v", outcomes)
	}
	_ = bad
	// A failed commit is not retried by itself: the next sync sees nodes on
	// the good release and the head on the bad one, and tries again only
	// because a person asked (here, the test).
}

func TestFailingMigrationSwitchesNothing(t *testing.T) {
	f := newFixture(t)
	good := f.mustDeploy()
	pids := map[string]string{}
	for _, n := range f.nodes {
		pids[n] = f.beamPID(n)
	}
	_, err := f.repo.Commit(t.Context(), "migration that fails", func(work string) error {
		if err := os.MkdirAll(work+"/priv", 0o755); err != nil {
			return err
		}
		return os.WriteFile(work+"/priv/MIGRATE_FAIL", []byte("fail\n"), 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.sync()
	de := deployError(t, err)
	if de.Phase != "migrate" || de.Class != reconcile.ClassFailure || de.Host != "n1" {
		t.Fatalf("got %v, want a migrate failure on n1", de)
	}
	f.wantSwitchedNothing(good, pids)

	// A commit that does not compile fails in the build, with the
	// compiler's words in the log, and touches no node either.
	if _, err := f.repo.Commit(t.Context(), "does not compile", func(work string) error {
		if err := os.Remove(work + "/priv/MIGRATE_FAIL"); err != nil {
			return err
		}
		return testbed.AppendLine("lib/chat.ex", "defmodule Broken do def f( end")(work)
	}); err != nil {
		t.Fatal(err)
	}
	out, err := f.sync()
	de = deployError(t, err)
	if de.Phase != "build" || de.Class != reconcile.ClassFailure || !strings.Contains(de.Error(), "step 3") {
		t.Fatalf("got %v, want a build failure in step 3", de)
	}
	if log := f.log(out.Deploy.ID); !strings.Contains(log, "lib/chat.ex:") {
		t.Errorf("the log does not hold the compiler's error output:\n%s", log)
	}
	f.wantCluster(good)
	for _, n := range f.nodes {
		if got := f.beamPID(n); got != pids[n] {
			t.Errorf("%s was restarted by a deploy whose build failed", n)
		}
	}
}

func TestHAProxyDrainedAndRestored(t *testing.T) {
	f := newFixture(t)
	f.mustDeploy()
	if _, err := f.repo.Commit(t.Context(), "one line", testbed.AppendLine("lib/chat.ex", "# one line")); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	sawDrain := map[string]bool{}
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { // read HAProxy's own view while the rollout runs
		defer close(done)
		for ctx.Err() == nil {
			for server, state := range f.adminStates() {
				if state == "8" {
					mu.Lock()
					sawDrain[server] = true
					mu.Unlock()
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	_, err := f.sync()
	stop()
	<-done
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range f.nodes {
		if !sawDrain[n] {
			t.Errorf("HAProxy never showed %s draining during its restart", n)
		}
	}
	for server, state := range f.adminStates() {
		if state != "0" {
			t.Errorf("after the deploy HAProxy has %s in admin state %s, want 0 (ready)", server, state)
		}
	}
}

func TestNodeCutOffMidRollout(t *testing.T) {
	f := newFixture(t)
	good := f.mustDeploy()
	next, err := f.repo.Commit(t.Context(), "one line", testbed.AppendLine("lib/chat.ex", "# one line"))
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	f.r.Progress = func(line string) {
		t.Log("progress: " + line)
		if strings.HasPrefix(line, "rollout 2/3") {
			once.Do(func() {
				if err := f.bed.Host("n3").Cut(t.Context()); err != nil {
					t.Error(err)
				}
				t.Log("n3 cut off")
			})
		}
	}
	out, err := f.sync()
	de := deployError(t, err)
	if out.Deploy.Result == history.Success {
		t.Fatal("a deploy with a node cut off succeeded")
	}
	t.Logf("deploy ended: %v", de)
	if got := f.current("n1"); got != next {
		t.Errorf("n1 (done before the cut) is on %s, want %s", got, next)
	}
	if got := f.current("n2"); got != good {
		t.Errorf("n2 (failing after the cut) is on %s, want it rolled back to %s", got, good)
	}
	if got := f.current("n3"); got != good {
		t.Errorf("n3 (cut off, never reached) is on %s, want %s", got, good)
	}
	// Back on the network, the next sync finishes the job.
	if err := f.bed.Host("n3").Restore(t.Context()); err != nil {
		t.Fatal(err)
	}
	if out, err := f.sync(); err != nil {
		t.Fatalf("sync after restore: %v\n%s", err, f.log(out.Deploy.ID))
	}
	f.wantCluster(next)
}

// TestHelperOperator is not a test: it is the operator process that
// TestOperatorKilledMidRolloutConverges starts and kills.
func TestHelperOperator(t *testing.T) {
	if os.Getenv("OPERATOR_HELPER") != "1" {
		return
	}
	pool, _, r, err := newOperator(os.Getenv("HELPER_REPO"), os.Getenv("HELPER_STATE"), os.Getenv("HELPER_KEY"), os.Getenv("HELPER_KNOWN_HOSTS"), os.Stderr,
		func(line string) { fmt.Println(line) })
	if err != nil {
		fmt.Println("helper:", err)
		os.Exit(1)
	}
	defer pool.Close()
	r.Sync(context.Background(), "helper")
	os.Exit(0)
}

func TestOperatorKilledMidRolloutConverges(t *testing.T) {
	f := newFixture(t)
	f.mustDeploy()
	next, err := f.repo.Commit(t.Context(), "one line", testbed.AppendLine("lib/chat.ex", "# one line"))
	if err != nil {
		t.Fatal(err)
	}
	// Let it get into a node's restart, then kill it hard.
	f.runKilledOperator(t, "rollout 2/3", 700*time.Millisecond)
	// A new operator converges from what the hosts say.
	pool, _, r, err := newOperator(f.repo.Bare, f.state, f.bed.ClientKey, f.bed.KnownHosts, t.Output(), func(line string) { t.Log("rerun: " + line) })
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	out, err := r.Sync(t.Context(), "rerun")
	if err != nil {
		t.Fatalf("rerun: %v\n%s", err, f.log(out.Deploy.ID))
	}
	f.wantCluster(next)
	// The rerun's build was free (the artifact existed) and nothing migrated twice.
	log := f.log(out.Deploy.ID)
	if !strings.Contains(log, "phase build: skipped: the artifact of") {
		t.Errorf("the rerun rebuilt the commit")
	}
	if !strings.Contains(log, "phase migrate: skipped: already migrated") {
		t.Errorf("the rerun migrated again")
	}
	migrations, _ := f.bed.Host("n1").Sh(t.Context(), "grep -c "+next+" "+deployTo+"/shared/migrations.log")
	if strings.TrimSpace(migrations) != "1" {
		t.Errorf("n1 ran the migration of %s %s times", next[:12], strings.TrimSpace(migrations))
	}
}
