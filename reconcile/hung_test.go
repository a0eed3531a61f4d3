package reconcile_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clusterops/operator/history"
	"github.com/clusterops/operator/reconcile"
)

// syncWithin runs a sync under ctx and returns its outcome, failing t when
// it has not ended after limit: a hung command holds it.
func (f *fixture) syncWithin(t *testing.T, ctx context.Context, limit time.Duration) (*reconcile.Outcome, error) {
	t.Helper()
	type result struct {
		out *reconcile.Outcome
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		out, err := f.r.Sync(ctx, "test")
		done <- result{out, err}
	}()
	select {
	case res := <-done:
		t.Logf("sync took %v: %v", time.Since(start).Round(time.Millisecond), res.err)
		return res.out, res.err
	case <-time.After(limit):
		t.Fatalf("the deploy has not ended after %v: a hung command holds it", limit)
		return nil, nil
	}
}

// hungSleep is a command that never returns, unique to this run so that
// the test can find it in the bed's process table (which the hosts share)
// and tell that it is gone.
func hungSleep(n int) string {
	return fmt.Sprintf("sleep %d", 1_000_000+rand.IntN(1_000_000)*10+n)
}

// hungPattern matches the process of command (a hungSleep) alone: not the
// shell running a ping that only names it, nor the pgrep's own shell.
func hungPattern(command string) string { return "^" + command + "$" }

// wantGone waits a little for every process running command to end, and
// fails t when one stays: a command cut by its deadline must not go on.
func (f *fixture) wantGone(t *testing.T, command string) {
	t.Helper()
	var out string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		out, _ = f.bed.Host("n1").Sh(t.Context(), "pgrep -a -f -- '"+hungPattern(command)+"' || true")
		if strings.TrimSpace(out) == "" || time.Now().After(deadline) {
			break
		}
	}
	if strings.TrimSpace(out) != "" {
		t.Errorf("%q still runs after the deploy ended:\n%s", command, out)
	}
}

// TestHungCommandsEndWithinTheirBounds deploys commits whose release
// commands never return on hosts that answer (their sshd, their
// keepalives): a stop, a ping of the new release only (then with the
// deploy cancelled, as the daemon's SIGTERM does, while it hangs), a ping
// of every release. Each deploy ends, within rollout.timeout for the node
// plus its rollback's own rollout.timeout, with the node running its
// previous release and ready in HAProxy, the hung command gone; then a
// good commit deploys as usual (PRODUCT.md §10).
func TestHungCommandsEndWithinTheirBounds(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	good := f.mustDeploy()
	original, err := os.ReadFile(filepath.Join(f.repo.Work, "deploy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// manifest returns a commit change that writes the original deploy.yaml
	// with each pair of strings (old, new) replaced, and the file HANG in
	// the release's root (an overlay) when hang is set.
	manifest := func(hang bool, oldNew ...string) func(work string) error {
		return func(work string) error {
			text := string(original)
			for i := 0; i+1 < len(oldNew); i += 2 {
				if !strings.Contains(text, oldNew[i]) {
					return fmt.Errorf("deploy.yaml has no %q", oldNew[i])
				}
				text = strings.Replace(text, oldNew[i], oldNew[i+1], 1)
			}
			hangFile := filepath.Join(work, "rel/overlays/HANG")
			if hang {
				if err := os.WriteFile(hangFile, []byte("ping hangs in this release\n"), 0o644); err != nil {
					return err
				}
			} else if err := os.Remove(hangFile); err != nil && !os.IsNotExist(err) {
				return err
			}
			return os.WriteFile(filepath.Join(work, "deploy.yaml"), []byte(text), 0o644)
		}
	}
	const (
		rolloutTimeout = "  batch: 1\n  timeout: 2m\n"
		stop           = "  stop: bin/chat stop\n"
		ping           = "  ping: bin/ping\n"
		drain          = 10 * time.Second // the example's loadbalancer.drain_timeout
	)
	timeout := func(d time.Duration) string { return fmt.Sprintf("  batch: 1\n  timeout: %v\n", d) }
	// rolloutStarted is when the deploy in progress began its rollout.
	var mu sync.Mutex
	var rolloutStarted time.Time
	f.r.Progress = func(line string) {
		t.Log("progress: " + line)
		if strings.HasPrefix(line, "rollout 1/3") {
			mu.Lock()
			rolloutStarted = time.Now()
			mu.Unlock()
		}
	}
	sinceRollout := func() time.Duration {
		mu.Lock()
		defer mu.Unlock()
		if rolloutStarted.IsZero() {
			return 0
		}
		d := time.Since(rolloutStarted)
		rolloutStarted = time.Time{}
		return d
	}
	// whole checks every node runs good, in the cluster, ready in HAProxy.
	whole := func(t *testing.T) {
		t.Helper()
		f.wantCluster(good)
		for server, state := range f.adminStates() {
			if state != "0" {
				t.Errorf("HAProxy has %s in admin state %s, want 0 (ready)", server, state)
			}
		}
	}
	outcomeOf := func(out *reconcile.Outcome, host string) string {
		if out == nil || out.Deploy == nil {
			return ""
		}
		for _, n := range out.Deploy.Nodes {
			if n.Host == host {
				return n.Outcome
			}
		}
		return ""
	}
	// logIfFailed shows the deploy's log when t failed, to say why.
	logIfFailed := func(t *testing.T, out *reconcile.Outcome) {
		if t.Failed() && out != nil && out.Deploy != nil {
			t.Logf("the deploy's log:\n%s", f.log(out.Deploy.ID))
		}
	}
	// bound is the longest the rollout of a failing first node may take:
	// its drain, rollout.timeout for its update and rollout.timeout for its
	// rollback, and generous room for the commands' own ends.
	bound := func(limit time.Duration) time.Duration { return drain + 2*limit + time.Minute }

	t.Run("a stop that never returns", func(t *testing.T) {
		const limit = 8 * time.Second
		hung := hungSleep(1)
		if _, err := f.repo.Commit(ctx, "a stop that hangs", manifest(false, stop, "  stop: "+hung+"\n", rolloutTimeout, timeout(limit))); err != nil {
			t.Fatal(err)
		}
		out, err := f.syncWithin(t, ctx, 10*time.Minute)
		defer logIfFailed(t, out)
		took := sinceRollout()
		t.Logf("rollout to the deploy's end: %v", took.Round(time.Millisecond))
		de := deployError(t, err)
		if de.Class != reconcile.ClassFailure || de.Host != "n1" || de.Check != "stop" {
			t.Errorf("got %v (class %d, host %q, check %q), want a stop failure on n1", de, de.Class, de.Host, de.Check)
		}
		if took > bound(limit) {
			t.Errorf("the rollout took %v, want it within about %v", took, bound(limit))
		}
		if got := outcomeOf(out, "n1"); !strings.HasPrefix(got, "stop failed: still running "+good[:12]) {
			t.Errorf("n1's outcome: %q", got)
		}
		whole(t)
		f.wantGone(t, hung)
	})

	t.Run("a ping that hangs in the new release", func(t *testing.T) {
		const limit = 12 * time.Second
		hung := hungSleep(2)
		hangingPing := `  ping: "[ ! -e HANG ] || ` + hung + `; bin/ping"` + "\n"
		if _, err := f.repo.Commit(ctx, "a ping that hangs in its release", manifest(true, ping, hangingPing, rolloutTimeout, timeout(limit))); err != nil {
			t.Fatal(err)
		}
		out, err := f.syncWithin(t, ctx, 10*time.Minute)
		defer logIfFailed(t, out)
		took := sinceRollout()
		t.Logf("rollout to the deploy's end: %v (bound: drain %v + 2 × rollout.timeout %v)", took.Round(time.Millisecond), drain, limit)
		de := deployError(t, err)
		if de.Class != reconcile.ClassFailure || de.Host != "n1" || de.Check != "ping" {
			t.Errorf("got %v (class %d, host %q, check %q), want a ping failure on n1", de, de.Class, de.Host, de.Check)
		}
		if took > bound(limit) {
			t.Errorf("the rollout took %v, want it within about %v", took, bound(limit))
		}
		if got, want := outcomeOf(out, "n1"), "rolled back after ping failed: back on "+good[:12]+", checks passed"; got != want {
			t.Errorf("n1's outcome: %q, want %q", got, want)
		}
		whole(t)
		f.wantGone(t, hung)
	})

	t.Run("the deploy cancelled while a ping hangs", func(t *testing.T) {
		const limit = 30 * time.Second // the cancel comes well before it
		hung := hungSleep(3)
		hangingPing := `  ping: "[ ! -e HANG ] || ` + hung + `; bin/ping"` + "\n"
		if _, err := f.repo.Commit(ctx, "a ping that hangs, cancelled", manifest(true, ping, hangingPing, rolloutTimeout, timeout(limit))); err != nil {
			t.Fatal(err)
		}
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		cancelled := make(chan time.Time, 1)
		go func() { // cancel once the new release's ping hangs on n1
			for sctx.Err() == nil {
				if out, _ := f.bed.Host("n1").Sh(ctx, "pgrep -f -- '"+hungPattern(hung)+"' || true"); strings.TrimSpace(out) != "" {
					t.Log("the ping hangs: cancelling the deploy")
					cancelled <- time.Now()
					cancel()
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
		out, err := f.syncWithin(t, sctx, 10*time.Minute)
		defer logIfFailed(t, out)
		var at time.Time
		select {
		case at = <-cancelled:
		default:
			t.Fatalf("the deploy ended (%v) before its ping hung", err)
		}
		after := time.Since(at)
		t.Logf("cancel to the deploy's end: %v (bound: the rollback's rollout.timeout %v)", after.Round(time.Millisecond), limit)
		if after > limit+time.Minute {
			t.Errorf("the deploy ended %v after it was cancelled, want it within about %v", after, limit)
		}
		if de := deployError(t, err); de.Host != "n1" {
			t.Errorf("got %v, want it to stop at n1", de)
		}
		if got, want := outcomeOf(out, "n1"), "rolled back after ping failed: back on "+good[:12]+", checks passed"; got != want {
			t.Errorf("n1's outcome: %q, want %q", got, want)
		}
		whole(t)
		f.wantGone(t, hung)
	})

	t.Run("a ping that hangs in every release", func(t *testing.T) {
		const limit = 8 * time.Second
		hung := hungSleep(4)
		pids := f.beamPIDs()
		if _, err := f.repo.Commit(ctx, "a ping that always hangs", manifest(false, ping, "  ping: "+hung+"; bin/ping\n", rolloutTimeout, timeout(limit))); err != nil {
			t.Fatal(err)
		}
		out, err := f.syncWithin(t, ctx, 10*time.Minute)
		defer logIfFailed(t, out)
		sinceRollout()
		if err == nil || out.Deploy.Result == history.Success {
			t.Fatalf("a deploy that cannot ping any node succeeded")
		}
		t.Logf("deploy ended: %v", err)
		for _, n := range f.nodes {
			if got := f.beamPID(n); got != pids[n] {
				t.Errorf("%s was restarted by a deploy that could not tell whether it runs", n)
			}
		}
		whole(t)
		f.wantGone(t, hung)
	})

	t.Run("then a good commit deploys", func(t *testing.T) {
		next, err := f.repo.Commit(ctx, "the usual manifest", manifest(false))
		if err != nil {
			t.Fatal(err)
		}
		if out, err := f.syncWithin(t, ctx, 10*time.Minute); err != nil {
			t.Fatalf("deploy: %v\n%s", err, f.log(out.Deploy.ID))
		}
		f.wantCluster(next)
		for server, state := range f.adminStates() {
			if state != "0" {
				t.Errorf("HAProxy has %s in admin state %s, want 0 (ready)", server, state)
			}
		}
	})
}
