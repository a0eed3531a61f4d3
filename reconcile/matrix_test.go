package reconcile_test

import (
	"bufio"
	"context"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clusterops/operator/history"
	"github.com/clusterops/operator/hosts"
	"github.com/clusterops/operator/reconcile"
	"github.com/clusterops/operator/statuses"
	"github.com/clusterops/operator/statuses/githubtest"
	"github.com/clusterops/operator/testbed"
)

// TestFaultMatrix runs, on one bed, deploys that meet the faults real
// fleets meet, each then cleared and the environment deployed again:
// GitHub hung, answering 500, and rate-limiting (429 with Retry-After, 403
// with X-RateLimit-Remaining 0) while deploys go on, the build host
// unreachable, a node's disk full while it stages, HAProxy's
// socket gone mid-rollout, a node rebooting mid-rollout (every process
// killed), and the operator killed during a rollback. Each ends with
// nothing lost: every node running a whole release and back in HAProxy, no
// release half-unpacked under its final name, and the history telling what
// happened.
func TestFaultMatrix(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	// Short SSH timers, so that a host gone is seen as gone within the
	// test's patience (the defaults are 15 s each).
	f.pool.Close()
	var err error
	f.pool, f.hist, f.r, err = newOperatorWith(f.repo.Bare, f.state, f.bed.ClientKey, f.bed.KnownHosts, t.Output(),
		func(line string) { t.Log("progress: " + line) },
		func(c *hosts.Config) { c.DialTimeout, c.KeepAlive = 3*time.Second, time.Second })
	if err != nil {
		t.Fatal(err)
	}
	// n2's releases live on a disk of their own, small enough to fill.
	n2 := f.bed.Host("n2")
	if _, err := n2.Sh(ctx, "mkdir -p "+deployTo+"/releases && mount -t tmpfs -o size=192m tmpfs "+deployTo+"/releases"); err != nil {
		t.Fatal(err)
	}
	current := f.mustDeploy()
	step := 0
	change := func(why string) string {
		t.Helper()
		step++
		c, err := f.repo.Commit(ctx, why, testbed.AppendLine("lib/chat.ex", "# fault matrix "+strings.Repeat("x", step)))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// whole checks what every fault must leave: the cluster whole on
	// commit, every node ready in HAProxy.
	whole := func(commit string) {
		t.Helper()
		f.wantCluster(commit)
		for server, state := range f.adminStates() {
			if state != "0" {
				t.Errorf("HAProxy has %s in admin state %s, want 0 (ready)", server, state)
			}
		}
	}
	// recovers deploys commit after the fault was cleared.
	recovers := func(commit string) {
		t.Helper()
		f.r.Progress = func(line string) { t.Log("progress: " + line) }
		out, err := f.sync()
		if err != nil {
			t.Fatalf("deploy after the fault was cleared: %v\n%s", err, f.log(out.Deploy.ID))
		}
		whole(commit)
		current = commit
	}

	t.Run("GitHub failing", func(t *testing.T) {
		gh := githubtest.New(t, githubtest.Config{Token: "gh-token"})
		rep, err := statuses.New(statuses.Options{
			APIURL: gh.URL(), Token: "gh-token", Repository: "acme/chat", Context: "deploy/production",
			MinRateLimitWait: 500 * time.Millisecond, RetryMin: 20 * time.Millisecond, RetryMax: 500 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		rep.Start(ctx)
		defer rep.Close()
		f.r.Reporter = githubStatuses{rep}
		defer func() { f.r.Reporter = nil }()
		// Hung: GitHub answers nothing while the deploy runs, which does
		// not wait for it; the statuses go once GitHub answers again.
		release := gh.Hold()
		next := change("one line, GitHub hung")
		if out, err := f.sync(); err != nil {
			release()
			t.Fatalf("deploy while GitHub hung: %v\n%s", err, f.log(out.Deploy.ID))
		}
		release()
		current = next
		awaitStatus(t, gh, next, "success")
		// 500s, then a secondary limit (429 with Retry-After), then a
		// primary one (403, X-RateLimit-Remaining 0): the deploys go on,
		// the statuses catch up.
		for _, fault := range []func(){
			func() { gh.FailNext(3) },
			func() { gh.LimitSecondary(http.StatusTooManyRequests, 2*time.Second) },
			func() { gh.LimitPrimary(time.Now().Add(2 * time.Second)) },
		} {
			fault()
			next := change("one line, GitHub refusing")
			if out, err := f.sync(); err != nil {
				t.Fatalf("deploy while GitHub refused: %v\n%s", err, f.log(out.Deploy.ID))
			}
			current = next
			awaitStatus(t, gh, next, "success")
		}
		whole(current)
	})

	t.Run("build host unreachable", func(t *testing.T) {
		next := change("one line, build host cut")
		pids := f.beamPIDs()
		if err := f.bed.Host("build").Cut(ctx); err != nil {
			t.Fatal(err)
		}
		_, err := f.sync()
		if de := deployError(t, err); de.Class != reconcile.ClassError {
			t.Errorf("deploy with the build host cut: %v (class %d), want an error (the operator could not act)", de, de.Class)
		}
		f.wantSwitchedNothing(current, pids)
		if err := f.bed.Host("build").Restore(ctx); err != nil {
			t.Fatal(err)
		}
		recovers(next)
	})

	t.Run("disk full while staging", func(t *testing.T) {
		next := change("one line, n2's disk full")
		pids := f.beamPIDs()
		n2.Sh(ctx, "dd if=/dev/zero of="+deployTo+"/releases/.fill bs=1M 2>/dev/null; sync")
		_, err := f.sync()
		if de := deployError(t, err); de.Phase != "stage" || !strings.Contains(de.Error(), "n2") {
			t.Errorf("deploy with n2's disk full: %v (phase %q), want the stage on n2 to fail", de, de.Phase)
		}
		f.wantSwitchedNothing(current, pids)
		if left, _ := n2.Sh(ctx, "ls -A "+deployTo+"/releases"); strings.Contains(left, next) {
			t.Errorf("n2 holds a release of %s after its staging failed:\n%s", next[:12], left)
		}
		if _, err := n2.Sh(ctx, "rm -f "+deployTo+"/releases/.fill"); err != nil {
			t.Fatal(err)
		}
		recovers(next)
	})

	t.Run("HAProxy socket gone mid-rollout", func(t *testing.T) {
		next := change("one line, HAProxy's socket gone")
		lb := f.bed.Host("lb")
		var once sync.Once
		f.r.Progress = func(line string) {
			t.Log("progress: " + line)
			if strings.HasPrefix(line, "rollout 2/3") {
				once.Do(func() {
					if _, err := lb.Sh(ctx, "rm -f "+testbed.HAProxySocket); err != nil {
						t.Error(err)
					}
				})
			}
		}
		_, err := f.sync()
		if de := deployError(t, err); de.Host != "n2" {
			t.Errorf("deploy with HAProxy's socket gone at n2: %v, want it to stop at n2", de)
		}
		if got := f.current("n1"); got != next {
			t.Errorf("n1, done before the socket went, is on %s, want %s", got, next)
		}
		for _, n := range []string{"n2", "n3"} {
			if got := f.current(n); got != current {
				t.Errorf("%s is on %s, want it untouched on %s", n, got, current)
			}
		}
		// HAProxy restarted, as an administrator would: its socket is back.
		if _, err := lb.Sh(ctx, "kill $(cat /run/haproxy.pid)"); err != nil {
			t.Fatal(err)
		}
		var backends []testbed.Backend
		for _, n := range f.nodes {
			backends = append(backends, testbed.Backend{Name: n, Addr: f.bed.Host(n).Addr.String() + ":4000"})
		}
		if err := lb.StartHAProxy(ctx, "chat", backends); err != nil {
			t.Fatal(err)
		}
		recovers(next)
	})

	t.Run("node rebooted mid-rollout", func(t *testing.T) {
		next := change("one line, n2 rebooted")
		var once sync.Once
		rebooted := make(chan struct{})
		f.r.Progress = func(line string) {
			t.Log("progress: " + line)
			if strings.HasPrefix(line, "rollout 2/3") {
				once.Do(func() {
					go func() { // while the rollout goes on into n2's restart
						defer close(rebooted)
						time.Sleep(300 * time.Millisecond)
						if err := n2.Reboot(ctx, time.Second); err != nil {
							t.Error(err)
						}
						t.Log("n2 rebooted")
					}()
				})
			}
		}
		_, err := f.sync()
		<-rebooted
		t.Logf("deploy with n2 rebooted: %v", err)
		// The hosts are the truth: the next sync starts what the reboot
		// stopped and finishes the rollout.
		recovers(next)
	})

	t.Run("operator killed during a rollback", func(t *testing.T) {
		if _, err := f.repo.Commit(ctx, "wrong cookie", testbed.AppendLine("rel/env.sh.eex", badCookieLine)); err != nil {
			t.Fatal(err)
		}
		f.pool.Close() // the killed operator works on this state alone
		f.runKilledOperator(t, "rollout: n1 failed", 500*time.Millisecond)
		var err error
		f.pool, f.hist, f.r, err = newOperatorWith(f.repo.Bare, f.state, f.bed.ClientKey, f.bed.KnownHosts, t.Output(),
			func(line string) { t.Log("rerun: " + line) }, nil)
		if err != nil {
			t.Fatal(err)
		}
		// The rerun tries the bad commit again (nobody said otherwise),
		// fails it on n1 and rolls n1 back: every node ends on the last
		// good release, running and ready.
		out, err := f.sync()
		if err == nil || out.Deploy.Result != history.Failure {
			t.Errorf("rerun of the bad commit: %v, want a failure", err)
		}
		whole(current)
	})
}

// githubStatuses turns the deploy's reports into commit statuses, as
// cmd/operator does.
type githubStatuses struct{ rep *statuses.Reporter }

func (g githubStatuses) Report(st reconcile.Status) {
	g.rep.Report(statuses.Update{Commit: st.Commit, State: string(st.State), Description: st.Description, Deploy: st.DeployID})
}

// awaitStatus waits until GitHub's newest status of commit is state.
func awaitStatus(t *testing.T, gh *githubtest.Server, commit, state string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := gh.Await(ctx, commit, state); err != nil {
		t.Errorf("status of %s: not %s within 30 s: %v (got %v)", commit[:12], state, err, gh.Statuses(commit))
	}
}

// beamPIDs is every node's VM pid, to tell later whether one restarted.
func (f *fixture) beamPIDs() map[string]string {
	pids := map[string]string{}
	for _, n := range f.nodes {
		pids[n] = f.beamPID(n)
	}
	return pids
}

// runKilledOperator runs an operator in a process of its own on the
// fixture's state, lets it deploy the head, and kills it (SIGKILL) after
// the given delay once it prints a progress line starting with killAt; the
// history must then record that deploy as interrupted.
func (f *fixture) runKilledOperator(t *testing.T, killAt string, after time.Duration) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperOperator$")
	cmd.Env = append(os.Environ(), "OPERATOR_HELPER=1", "HELPER_REPO="+f.repo.Bare, "HELPER_STATE="+f.state,
		"HELPER_KEY="+f.bed.ClientKey, "HELPER_KNOWN_HOSTS="+f.bed.KnownHosts)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		t.Log("killed operator: " + sc.Text())
		if strings.HasPrefix(sc.Text(), killAt) {
			time.Sleep(after)
			cmd.Process.Signal(syscall.SIGKILL)
			killed = true
			break
		}
	}
	cmd.Wait()
	if !killed {
		t.Fatalf("the operator ended without printing %q", killAt)
	}
	// The killed deploy is marked interrupted when the history is opened
	// again.
	hist, err := history.Open(f.state)
	if err != nil {
		t.Fatal(err)
	}
	list, _ := hist.List(1)
	if len(list) == 0 || list[0].Result != history.Interrupted {
		t.Fatalf("the killed deploy is recorded as %+v, want interrupted", list)
	}
}
