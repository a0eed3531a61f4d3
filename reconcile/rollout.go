package reconcile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/clusterops/operator/history"
	"github.com/clusterops/operator/hosts"
	"github.com/clusterops/operator/manifests"
)

// migrate runs release.migrate once, from the new release on the first node,
// before any node is switched, and records on that node that it ran for
// this commit (in the same command), so a rerun never migrates twice. A failure stops the deploy
// with nothing switched.
func (r *Reconciler) migrate(ctx context.Context, run *run) error {
	p := run.plan
	sha := p.Commit.SHA
	if p.Manifest.Release.Migrate == "" {
		run.phaseNote = "skipped: no release.migrate"
		return nil
	}
	first := p.Nodes[0]
	if first.migrated { // as the plan saw it
		run.phaseNote = "skipped: already migrated for " + short(sha) + " on " + first.Name()
		run.progress("migrate: already done for %s", short(sha))
		return nil
	}
	r.report(run, Pending, "migrating")
	run.progress("migrate: on %s", first.Name())
	// The drain outlives the migration (the rollout takes it), and has
	// bounds of its own.
	r.startPredrain(ctx, run)
	env, err := r.releaseEnv(p, first, sha)
	if err != nil {
		return err
	}
	ctx, cancel := within(ctx, p.Manifest.Build.Timeout, "build.timeout", true)
	defer cancel()
	layout := hosts.Layout{DeployTo: p.Env.DeployTo}
	// The record is written by the same command, once the migration
	// succeeded.
	c := hosts.RecordAfter(hosts.ShellCmd(layout.ReleaseDir(sha), p.Manifest.Release.Migrate, env),
		migratedFile(p.Env, sha), time.Now().UTC().Format(time.RFC3339)+" "+sha)
	if err := run.timed("migrate", func() error {
		return run.execTail(ctx, first.Target, "migrate", p.Manifest.Release.Migrate, c)
	}); err != nil {
		return &DeployError{Class: classOf(err), Phase: "migrate", Host: first.Name(), Err: err}
	}
	first.migrated = true
	return nil
}

// predrain is the rollout's first node drained in the load balancer while
// the migration runs: a drain waits for the node's requests in flight,
// which a slow request can make last up to loadbalancer.drain_timeout, and
// it switches nothing. The rollout takes it (takePredrain); a deploy that ends
// before its rollout (a failed migration, for one) puts the node back
// (undrain).
type predrain struct {
	n    *Node
	done chan error
}

func (r *Reconciler) startPredrain(ctx context.Context, run *run) {
	p := run.plan
	n := p.Nodes[0]
	if p.Manifest.LoadBalancer == nil || n.Current == p.Commit.SHA {
		return
	}
	pd := &predrain{n: n, done: make(chan error, 1)}
	run.rec.Logf(n.Name(), "draining in the load balancer while the migration runs")
	go func() { pd.done <- r.setLB(ctx, run, n, "drain") }()
	run.mu.Lock()
	run.predrain = pd
	run.mu.Unlock()
}

// takePredrain returns n's drain started during the migration, if any.
func (run *run) takePredrain(n *Node) *predrain {
	run.mu.Lock()
	defer run.mu.Unlock()
	if pd := run.predrain; pd != nil && pd.n == n {
		run.predrain = nil
		return pd
	}
	return nil
}

// undrain puts back in the load balancer a node drained during the
// migration that the rollout did not take.
func (r *Reconciler) undrain(ctx context.Context, run *run) {
	run.mu.Lock()
	pd := run.predrain
	run.predrain = nil
	run.mu.Unlock()
	if pd == nil {
		return
	}
	<-pd.done
	// Not cancelled with the deploy, which may end because it was: the
	// node must not stay drained.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lbTimeout)
	defer cancel()
	if err := r.setLB(ctx, run, pd.n, "ready"); err != nil {
		run.rec.Logf(pd.n.Name(), "back in the load balancer after the migration: %v", err)
	}
}

// live is the set of nodes that run the app: the ones the membership check
// asks, and expects to see.
type live struct {
	mu    sync.Mutex
	nodes map[string]*Node
}

func (l *live) set(n *Node, running bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if running {
		l.nodes[n.Name()] = n
	} else {
		delete(l.nodes, n.Name())
	}
}

func (l *live) list() []*Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*Node
	for _, n := range l.nodes {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out
}

// rollout switches the nodes that are not on the commit, rollout.batch at a
// time in the environment's order. Each node is drained, stopped, switched,
// started and checked (ping, membership, health), then put back in the load
// balancer. A node that fails a check is rolled back and the rollout stops:
// nodes not reached yet are untouched.
func (r *Reconciler) rollout(ctx context.Context, run *run) error {
	r.refreshWorkspace(ctx, run)
	p := run.plan
	sha := p.Commit.SHA
	alive := &live{nodes: map[string]*Node{}}
	var todo []*Node
	for _, n := range p.Nodes {
		if err := r.confirmRunning(ctx, run, n); err != nil {
			return classify("rollout", n.Name(), err)
		}
		alive.set(n, n.Running)
		if n.upToDate(sha) {
			run.rec.Node(history.NodeResult{Host: n.Name(), From: n.Current, To: n.Current, Outcome: "unchanged"})
		} else {
			todo = append(todo, n)
		}
	}
	// A node left drained by a deploy that did not finish goes first: until
	// it is checked and back (or rolled back), a release it runs that
	// cannot join would fail every other node's membership check.
	slices.SortStableFunc(todo, func(a, b *Node) int {
		switch {
		case a.Drained == b.Drained:
			return 0
		case a.Drained:
			return -1
		}
		return 1
	})
	batch := max(p.Manifest.Rollout.Batch, 1)
	for i := 0; i < len(todo); i += batch {
		nodes := todo[i:min(i+batch, len(todo))]
		if err := r.checkStop(); err != nil {
			for _, n := range todo[i:] {
				run.rec.Node(history.NodeResult{Host: n.Name(), From: n.Current, To: n.Current, Outcome: "untouched"})
			}
			return &DeployError{Class: ClassError, Phase: "rollout", Err: err}
		}
		r.report(run, Pending, fmt.Sprintf("rolling out %d/%d", i+len(nodes), len(todo)))
		err := forEach(nodes, func(n *Node) error {
			run.progress("rollout %d/%d: %s", slices.Index(todo, n)+1, len(todo), n.Name())
			return r.updateNode(ctx, run, n, alive)
		})
		if err != nil {
			for _, n := range todo[i+len(nodes):] {
				run.rec.Node(history.NodeResult{Host: n.Name(), From: n.Current, To: n.Current, Outcome: "untouched"})
			}
			return err
		}
	}
	return nil
}

// nodeStep names the checks of a node's update, for errors and logs.
const (
	checkDrain      = "drain"
	checkStop       = "stop"
	checkSwitch     = "switch"
	checkStart      = "start"
	checkPing       = "ping"
	checkMembership = "membership"
	checkHealth     = "health"
	checkReady      = "ready"
)

// updateNode moves one node to the commit, rolling it back when a check
// fails. It returns a *DeployError naming the node and the check. From its
// stop to its checks passed the node has rollout.timeout; a rollback, or
// the recovery from a stop that failed, has rollout.timeout of its own,
// even when ctx was cancelled.
func (r *Reconciler) updateNode(ctx context.Context, run *run, n *Node, alive *live) error {
	p := run.plan
	sha := p.Commit.SHA
	prev := n.Current
	if prev == sha { // switched by an earlier run that did not finish
		prev = n.Previous
		if prev == sha {
			prev = ""
		}
	}
	fail := func(check string, err error) error {
		return &DeployError{Class: classOf(err), Phase: "rollout", Host: n.Name(), Check: check, Err: err}
	}
	drain := func() error { return r.setLB(ctx, run, n, "drain") }
	if pd := run.takePredrain(n); pd != nil { // started with the migration
		drain = func() error { return <-pd.done }
	}
	if err := run.timed("drain wait", drain); err != nil {
		// The drain may have been set before the wait failed (or the
		// deploy was cancelled during it).
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lbTimeout)
		if rerr := r.setLB(rctx, run, n, "ready"); rerr != nil {
			run.rec.Logf(n.Name(), "back in the load balancer after the drain failed: %v", rerr)
		}
		cancel()
		return fail(checkDrain, err)
	}
	limit := p.Manifest.Rollout.Timeout
	nctx, cancel := within(ctx, limit, "rollout.timeout", true)
	defer cancel()
	if n.Current != "" {
		if err := run.timed("stop", func() error { return r.stopNode(nctx, run, n, n.Current, n.Running) }); err != nil {
			run.rec.Logf(n.Name(), "stop failed: %v; bringing the node back", err)
			run.progress("rollout: %s failed stop: bringing it back on %s", n.Name(), short(n.Current))
			outcome := r.recoverStop(ctx, run, n, alive)
			run.rec.Node(history.NodeResult{Host: n.Name(), From: n.Current, To: n.Current, Outcome: "stop failed: " + outcome})
			return fail(checkStop, err)
		}
	}
	alive.set(n, false)
	started := time.Now()
	err := r.switchAndCheck(nctx, run, n, sha, prev, alive)
	if err == nil {
		run.rec.Logf(n.Name(), "on %s, checks passed, %v after stop", short(sha), time.Since(started).Round(time.Millisecond))
		run.rec.Node(history.NodeResult{Host: n.Name(), From: prev, To: sha, Outcome: "updated"})
		return nil
	}
	var de *DeployError
	if !errors.As(err, &de) {
		de = &DeployError{Class: classOf(err), Phase: "rollout", Host: n.Name(), Err: err}
	}
	run.rec.Logf(n.Name(), "%s failed: %v; rolling back to %s", de.Check, de.Err, orNone(short(prev)))
	run.progress("rollout: %s failed %s: rolling back to %s", n.Name(), de.Check, orNone(short(prev)))
	outcome := r.rollbackNode(ctx, run, n, sha, prev, alive)
	run.rec.Node(history.NodeResult{Host: n.Name(), From: prev, To: prev, Outcome: fmt.Sprintf("rolled back after %s failed: %s", de.Check, outcome)})
	return de
}

// switchAndCheck points current at release, starts it and runs every check;
// on success the node is back in the load balancer and in alive.
func (r *Reconciler) switchAndCheck(ctx context.Context, run *run, n *Node, release, prev string, alive *live) error {
	p := run.plan
	layout := hosts.Layout{DeployTo: p.Env.DeployTo}
	check := func(name string, err error) error {
		if err == nil {
			return nil
		}
		return &DeployError{Class: classOf(err), Phase: "rollout", Host: n.Name(), Check: name, Err: err}
	}
	env, err := r.releaseEnv(p, n, release)
	if err != nil {
		return check(checkStart, err)
	}
	previous, record := "", ""
	if prev != "" && prev != release {
		previous, record = prev, previousFile(p.Env)
	}
	// The switch runs in the start's command, one round trip on the
	// node's restart where two were, and its few milliseconds of shell
	// count as "start". The command fails only when the switch did
	// (nothing started, current as it was); any error of it, a lost
	// connection too, is the switch's, and a rollback switches again. The
	// start's own exit status says little (bin/<app> daemon exits 0 when
	// the app dies at boot): the command ignores it, and ping decides.
	c, err := layout.SwitchThen(release, previous, record, hosts.ShellCmd(layout.Current(), p.Manifest.Release.Start, env))
	if err != nil {
		return check(checkSwitch, err)
	}
	if err := run.timed("start", func() error {
		return run.exec(ctx, n.Target, "rollout", c, nil)
	}); err != nil {
		return check(checkSwitch, err)
	}
	if previous != "" {
		n.Previous = previous
	}
	n.Current = release
	served := false
	if err := run.timed("ping wait", func() (err error) {
		served, err = r.waitUp(ctx, run, n, release)
		return err
	}); err != nil {
		return check(checkPing, err)
	}
	n.Running = true
	alive.set(n, true)
	if err := run.timed("membership wait", func() error {
		settle := p.Manifest.Cluster.Settle
		deadline := time.Now().Add(settle)
		// A node answers its ping once its VM is up, and joins the cluster
		// once its app has started, when it also serves HTTP: a membership
		// query (a VM per live node) before that could only fail. The
		// health URL says when to ask, within a hint slice; membership
		// decides.
		if !served && p.Manifest.Health != nil {
			hinted := time.Now()
			ok, err := r.healthHint(ctx, run, n, release, deadline)
			if err != nil {
				return err
			}
			if ok {
				run.rec.Logf(n.Name(), "health answered %v after ping: asking for members", time.Since(hinted).Round(time.Millisecond))
			}
		}
		return r.waitUntil(ctx, deadline, settle, func(ctx context.Context) (bool, string, error) {
			return r.membership(ctx, run, alive.list())
		})
	}); err != nil {
		return check(checkMembership, err)
	}
	if p.Manifest.Health != nil {
		if err := run.timed("health wait", func() error {
			return r.waitFor(ctx, p.Manifest.Rollout.Timeout, func(ctx context.Context) (bool, string, error) {
				return r.health(ctx, run, n, release)
			})
		}); err != nil {
			return check(checkHealth, err)
		}
	}
	return check(checkReady, r.setLB(ctx, run, n, "up"))
}

// rollbackNode stops the failed release and brings prev back with the same
// checks, within rollout.timeout of its own (rollbackContext), the stop
// within half of it. It returns what happened, for the node's record.
func (r *Reconciler) rollbackNode(ctx context.Context, run *run, n *Node, failed, prev string, alive *live) string {
	ctx, cancel := rollbackContext(ctx, run.plan.Manifest)
	defer cancel()
	// The failed release was started, or its start failed: it is stopped
	// without asking first, since its ping is what may hang.
	half := run.plan.Manifest.Rollout.Timeout / 2
	sctx, scancel := within(ctx, half, "half the rollback's rollout.timeout", true)
	err := r.stopNode(sctx, run, n, failed, true)
	scancel()
	if err != nil {
		run.rec.Logf(n.Name(), "stopping the failed release: %v", err)
	}
	alive.set(n, false)
	n.Running = false
	if prev == "" {
		layout := hosts.Layout{DeployTo: run.plan.Env.DeployTo}
		if err := run.exec(ctx, n.Target, "rollback", hosts.Remove(layout.Current()), nil); err != nil {
			return "no previous release; removing current failed: " + err.Error()
		}
		n.Current = ""
		return "no previous release: the node is stopped and runs nothing"
	}
	if err := r.switchAndCheck(ctx, run, n, prev, "", alive); err != nil {
		return "back on " + short(prev) + " but " + err.Error()
	}
	return "back on " + short(prev) + ", checks passed"
}

// recoverStop brings back a node whose stop failed (its command hung, or
// the node did not go down in time), within rollout.timeout of its own
// (rollbackContext): one that still answers its ping is put back in the
// load balancer as it was; one that does not, or cannot say within half
// of that time, is started again on its release and checked. It returns
// what happened, for the node's record.
func (r *Reconciler) recoverStop(ctx context.Context, run *run, n *Node, alive *live) string {
	ctx, cancel := rollbackContext(ctx, run.plan.Manifest)
	defer cancel()
	half := run.plan.Manifest.Rollout.Timeout / 2
	pctx, pcancel := within(ctx, half, "half the rollback's rollout.timeout", true)
	up, err := r.ping(pctx, run.plan, n, run.rec)
	pcancel()
	if err == nil && up {
		if err := r.setLB(ctx, run, n, "ready"); err != nil {
			return "still running " + short(n.Current) + "; back in the load balancer failed: " + err.Error()
		}
		return "still running " + short(n.Current) + ", back in the load balancer"
	}
	if err != nil {
		run.rec.Logf(n.Name(), "after the failed stop: %v", err)
	}
	alive.set(n, false)
	n.Running = false
	if err := r.switchAndCheck(ctx, run, n, n.Current, "", alive); err != nil {
		return "started again on " + short(n.Current) + " but " + err.Error()
	}
	return "started again on " + short(n.Current) + ", checks passed"
}

// stopNode stops the node's release (running in current) and waits until
// its ping fails. A node just observed running is not pinged first: each
// ping boots a VM, and a node's restart is the floor of every deploy.
func (r *Reconciler) stopNode(ctx context.Context, run *run, n *Node, release string, knownUp bool) error {
	p := run.plan
	if !knownUp {
		up, err := r.ping(ctx, p, n, run.rec)
		if err != nil {
			return err
		}
		if !up {
			return nil
		}
	}
	env, err := r.releaseEnv(p, n, release)
	if err != nil {
		return err
	}
	layout := hosts.Layout{DeployTo: p.Env.DeployTo}
	// `bin/<app> stop` returns before the node is down: ping decides.
	if err := run.exec(ctx, n.Target, "rollout", hosts.ShellCmd(layout.Current(), p.Manifest.Release.Stop, env), nil); err != nil {
		var ce *hosts.CommandError
		if !errors.As(err, &ce) {
			return err
		}
	}
	return r.waitDown(ctx, run, n, release)
}

// waitDown waits until the node running release is down, within
// rollout.timeout: until its ping fails. Each ping boots a VM, and a node
// takes a second or more to go down after its stop command, so when the
// last successful ping printed the node's OS pid (see ping) it first
// watches that process on the host, every 20 ms, at the cost of a shell
// loop (hosts.WaitStopped), provided the process runs from the release's
// directory (its bundled ERTS, or its working directory) and listens on
// some TCP port: until it no longer listens (an Erlang node has closed its
// distribution, so its ping fails; its VM may take another second to
// unload its code and exit), or is gone, which alone counts as the node
// down without a ping. Otherwise one ping must fail, and ping is polled as
// without a pid when it still answers, or when the watch gives up.
func (r *Reconciler) waitDown(ctx context.Context, run *run, n *Node, release string) error {
	p := run.plan
	limit := p.Manifest.Rollout.Timeout
	deadline := time.Now().Add(limit)
	down := func(ctx context.Context) (bool, string, error) {
		up, err := r.ping(ctx, p, n, nil)
		return !up, "still answering " + p.Manifest.Release.Ping, err
	}
	if pid := n.pid; pid > 1 {
		started := time.Now()
		err := r.waitStopped(ctx, run, n, pid, hosts.Layout{DeployTo: p.Env.DeployTo}.ReleaseDir(release), deadline)
		var ce *hosts.CommandError
		switch {
		case err == nil:
			run.rec.Logf(n.Name(), "down: process %d of %s gone %v after the stop command", pid, short(release), time.Since(started).Round(time.Millisecond))
			n.pid = 0
			return nil
		case ctx.Err() != nil:
			return context.Cause(ctx)
		case errors.As(err, &ce) && ce.ExitCode == hosts.WaitStoppedUnsure:
			ok, _, err := down(ctx)
			if err != nil {
				return err
			}
			if ok {
				run.rec.Logf(n.Name(), "down: %s; %s fails, %v after the stop command", strings.TrimSpace(ce.Stderr), p.Manifest.Release.Ping, time.Since(started).Round(time.Millisecond))
				return nil
			}
			run.rec.Logf(n.Name(), "%s but %s still answers: polling it", strings.TrimSpace(ce.Stderr), p.Manifest.Release.Ping)
		case errors.As(err, &ce), errors.Is(err, context.DeadlineExceeded):
			run.rec.Logf(n.Name(), "watching process %d: %v; polling %s", pid, err, p.Manifest.Release.Ping)
		default:
			return err
		}
	}
	err := r.waitUntil(ctx, deadline, limit, down)
	if err == nil {
		n.pid = 0
	}
	return err
}

// waitStopped runs hosts.WaitStopped for pid on n, bounded by deadline.
func (r *Reconciler) waitStopped(ctx context.Context, run *run, n *Node, pid int, dir string, deadline time.Time) error {
	c, err := hosts.WaitStopped(pid, dir, time.Until(deadline))
	if err != nil {
		return err
	}
	wctx, cancel := context.WithDeadline(ctx, deadline.Add(time.Second))
	defer cancel()
	run.rec.Logf(n.Name(), "$ %s", c.Redacted())
	return r.Fleet.Run(wctx, n.Target, c, hosts.Exec{Step: "rollout"})
}

// waitUp waits until the node's ping succeeds, within rollout.timeout, and
// reports whether its health URL answered meanwhile. With a health URL it
// first polls that, every healthHintInterval (one HTTP request costs
// milliseconds, a ping boots a VM), until it gets any HTTP answer, and
// pings then; while health gives no answer it still pings once every
// healthHintSlice, so a node that never serves HTTP is judged by its ping
// as without a health URL. Ping decides; health only says when to ask.
// After an answer, or without a health URL, ping is polled at the
// reconciler's interval.
func (r *Reconciler) waitUp(ctx context.Context, run *run, n *Node, release string) (served bool, _ error) {
	p := run.plan
	limit := p.Manifest.Rollout.Timeout
	deadline := time.Now().Add(limit)
	answered := p.Manifest.Health == nil
	started := time.Now()
	// A ping that does not return is cut at the wait's end, as one that
	// fails is retried until then.
	parent := ctx
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	notUp := func() error {
		return fmt.Errorf("%w after %v: not answering %s", errCheckTimeout, limit, p.Manifest.Release.Ping)
	}
	for {
		if !answered {
			var err error
			if answered, err = r.healthHint(ctx, run, n, release, deadline); err != nil {
				return false, err
			}
			if answered {
				served = true
				run.rec.Logf(n.Name(), "health answered %v after start: pinging", time.Since(started).Round(time.Millisecond))
			}
		}
		tried := time.Now()
		up, err := r.ping(ctx, p, n, run.rec)
		switch {
		case cutBy(err, parent, ctx):
			return served, fmt.Errorf("%w (the last did not return)", notUp())
		case err != nil:
			return served, err
		case up:
			return served, nil
		case time.Now().After(deadline):
			return served, notUp()
		}
		if answered {
			select {
			case <-parent.Done():
				return served, context.Cause(parent)
			case <-time.After(r.pause(time.Since(tried))):
			}
		}
	}
}

const (
	// healthHintInterval is how often waitUp polls the health URL.
	healthHintInterval = 20 * time.Millisecond
	// healthHintSlice is how long waitUp polls health without an answer
	// before it pings all the same, and how long the membership wait
	// polls it before it asks all the same. On the test bed a big app's
	// VM answers its ping only a little before it serves HTTP, and a
	// ping that fails costs a VM boot beside the node's own: 0.5 s was
	// no faster than 1 s.
	healthHintSlice = time.Second
)

// healthHint polls the node's health URL until it answers with any HTTP
// status (the app serves: worth a ping), for at most healthHintSlice and
// never past deadline; it reports whether it answered.
func (r *Reconciler) healthHint(ctx context.Context, run *run, n *Node, release string, deadline time.Time) (bool, error) {
	until := time.Now().Add(healthHintSlice)
	if deadline.Before(until) {
		until = deadline
	}
	url, err := r.healthURL(run.plan, n, release)
	if err != nil {
		return false, err
	}
	for {
		if r.answers(ctx, url, until) {
			return true, nil
		}
		if !time.Now().Add(healthHintInterval).Before(until) {
			return false, nil
		}
		select {
		case <-ctx.Done():
			return false, context.Cause(ctx)
		case <-time.After(healthHintInterval):
		}
	}
}

// answers reports whether a GET of url gets any HTTP response before until.
func (r *Reconciler) answers(ctx context.Context, url string, until time.Time) bool {
	ctx, cancel := context.WithDeadline(ctx, until)
	defer cancel()
	_, _, err := r.get(ctx, url)
	return err == nil
}

// healthURL renders health.url for node n running release.
func (r *Reconciler) healthURL(p *Plan, n *Node, release string) (string, error) {
	data, err := r.templateData(p, n, release)
	if err != nil {
		return "", err
	}
	return manifests.Render(p.Manifest.Health.URL, data)
}

// get fetches url and returns the response (its body closed) with the
// first 512 bytes of the body; an error means no HTTP answer came.
func (r *Reconciler) get(ctx context.Context, url string) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := r.httpClient().Do(req)
	if err != nil {
		return nil, nil, err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp, body, nil
}

// membership asks every live node whom it is connected to (the manifest's
// cluster.members, run on the node itself) and checks that each lists
// every other live node. It returns the problems as the wait's state.
func (r *Reconciler) membership(ctx context.Context, run *run, nodes []*Node) (bool, string, error) {
	p := run.plan
	layout := hosts.Layout{DeployTo: p.Env.DeployTo}
	problems := make([]string, len(nodes))
	err := forEach(nodes, func(n *Node) error {
		env, err := r.releaseEnv(p, n, n.Current)
		if err != nil {
			return err
		}
		var out strings.Builder
		err = r.Fleet.Run(ctx, n.Target, hosts.ShellCmd(layout.Current(), p.Manifest.Cluster.Members, env), hosts.Exec{Step: "membership", Stdout: &out, Sink: run.rec})
		var ce *hosts.CommandError
		if errors.As(err, &ce) {
			problems[slices.Index(nodes, n)] = fmt.Sprintf("%s: members command failed: %v", n.Name(), ce)
			return nil
		}
		if err != nil {
			return err
		}
		listed := map[string]bool{}
		for _, line := range strings.Split(out.String(), "\n") {
			if s := strings.TrimSpace(line); s != "" {
				listed[s] = true
			}
		}
		var missing []string
		for _, other := range nodes {
			if other != n && !listed[other.Host.Node] {
				missing = append(missing, other.Host.Node)
			}
		}
		if len(missing) > 0 {
			problems[slices.Index(nodes, n)] = fmt.Sprintf("%s lists %s, missing %s", n.Name(), orNone(strings.Join(sortedKeys(listed), " ")), strings.Join(missing, " "))
		}
		return nil
	})
	if err != nil {
		return false, "", err
	}
	var found []string
	for _, pr := range problems {
		if pr != "" {
			found = append(found, pr)
		}
	}
	return len(found) == 0, strings.Join(found, "; "), nil
}

func sortedKeys(m map[string]bool) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// health fetches the node's health URL and compares the status.
func (r *Reconciler) health(ctx context.Context, run *run, n *Node, release string) (bool, string, error) {
	p := run.plan
	url, err := r.healthURL(p, n, release)
	if err != nil {
		return false, "", err
	}
	resp, body, err := r.get(ctx, url)
	if err != nil {
		return false, "GET " + url + ": " + err.Error(), nil
	}
	if resp.StatusCode != p.Manifest.Health.ExpectStatus {
		return false, fmt.Sprintf("GET %s: %s, want %d: %s", url, resp.Status, p.Manifest.Health.ExpectStatus, strings.TrimSpace(string(body))), nil
	}
	run.rec.Logf(n.Name(), "health: GET %s: %s", url, resp.Status)
	return true, "", nil
}

// setLB sets the node's admin state in HAProxy, when the manifest has a
// load balancer: "drain" (then it waits for the requests in flight, see
// drainWait), "ready", or "up": ready with its health forced up, for a
// node that has just passed the operator's own checks, so the backend
// never waits for HAProxy's slower checks to count it in again before the
// next node drains (hosts.HAProxy.Ready).
func (r *Reconciler) setLB(ctx context.Context, run *run, n *Node, state string) error {
	lb := run.plan.Manifest.LoadBalancer
	if lb == nil {
		return nil
	}
	lbHost := target(run.plan.Manifest.Hosts[lb.HAProxy.Host])
	lbHost.Name = lb.HAProxy.Host
	h := hosts.HAProxy{Socket: lb.HAProxy.Socket}
	var c hosts.Cmd
	var err error
	if state == "up" {
		c, err = h.Ready(lb.HAProxy.Backend, n.Name())
	} else {
		c, err = h.SetState(lb.HAProxy.Backend, n.Name(), state)
	}
	if err != nil {
		return err
	}
	lctx, cancel := context.WithTimeout(ctx, lbTimeout)
	out, err := run.output(lctx, lbHost, c)
	cancel()
	if err != nil {
		return err
	}
	if err := hosts.CheckSet(out); err != nil {
		run.rec.Logf(lbHost.Name, "%v", err)
		return fmt.Errorf("set %s %s in %s: %w", n.Name(), state, lb.HAProxy.Backend, err)
	}
	if state != "drain" {
		return nil
	}
	return r.drainWait(ctx, run, n, lbHost, h)
}

// drainWait waits, within loadbalancer.drain_timeout, until HAProxy has no
// request in flight on the drained node: none it sent that the app has not
// begun to answer. WebSockets and other upgraded connections, and
// responses already streaming, are not waited for: they never end by
// themselves, and they end when the node stops (a Phoenix endpoint closes
// its sockets, telling its clients to reconnect, and the clients land on
// the nodes HAProxy still sends to). At the timeout it logs what was still
// in flight and goes on.
func (r *Reconciler) drainWait(ctx context.Context, run *run, n *Node, lbHost hosts.Target, h hosts.HAProxy) error {
	lb := run.plan.Manifest.LoadBalancer
	show, err := h.ShowStreams(lb.HAProxy.Backend, n.Name())
	if err != nil {
		return err
	}
	limit := lb.DrainTimeout
	// A listing that does not return (a wedged HAProxy) is cut at the
	// timeout too: the drain never holds the node longer.
	started := time.Now()
	var first, last hosts.Streams
	tries := 0
	err = r.waitFor(ctx, limit, func(ctx context.Context) (bool, string, error) {
		out, err := r.Fleet.Output(ctx, lbHost, show)
		if err != nil {
			return false, "", err
		}
		if last, err = hosts.ParseStreams(out); err != nil {
			return false, "", err
		}
		if tries++; tries == 1 {
			first = last
		}
		return last.InFlight == 0, fmt.Sprintf("%d requests still in flight", last.InFlight), nil
	})
	switch {
	case errors.Is(err, errCheckTimeout):
		run.rec.Logf(n.Name(), "drain: %v; going on", err)
		return nil
	case err != nil:
		return err
	}
	run.rec.Logf(n.Name(), "drained in %v: %d requests in flight answered; %d upgraded connections (WebSockets) and %d streaming responses end with the node",
		time.Since(started).Round(time.Millisecond), first.InFlight, last.Upgraded, last.Answering)
	return nil
}

// waitFor polls cond every interval until it holds, fails, or limit passes;
// then the error says what cond last reported.
func (r *Reconciler) waitFor(ctx context.Context, limit time.Duration, cond func(context.Context) (bool, string, error)) error {
	return r.waitUntil(ctx, time.Now().Add(limit), limit, cond)
}

// waitUntil is waitFor with the deadline given; limit is what the error
// says the wait was allowed. Each try runs under a context that ends at
// the deadline: a try that does not return (a command that hangs on a
// host that answers) is cut there, and the wait times out as when its
// condition never held.
func (r *Reconciler) waitUntil(ctx context.Context, deadline time.Time, limit time.Duration, cond func(context.Context) (bool, string, error)) error {
	wctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	state := ""
	for {
		tried := time.Now()
		ok, s, err := cond(wctx)
		if cutBy(err, ctx, wctx) {
			if state != "" {
				state += "; "
			}
			return fmt.Errorf("%w after %v: %sthe last try did not return: %w", errCheckTimeout, limit, state, err)
		}
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		state = s
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %v: %s", errCheckTimeout, limit, state)
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(r.pause(time.Since(tried))):
		}
	}
}

// prune removes releases beyond keep_releases on every node, never the
// current or the previous one. The releases are those the plan saw, the
// deployed one now the newest (its switch touched it), and the previous
// one is the one recorded at the switch, so one command per node does; the
// command itself never removes what current points at. It moves what goes
// aside and leaves the files' removal running on the node (hosts.Layout.
// Prune), so a deploy does not wait for thousands of unlinks. A failure
// here is logged: the deploy itself succeeded.
func (r *Reconciler) prune(ctx context.Context, run *run) error {
	p := run.plan
	sha := p.Commit.SHA
	layout := hosts.Layout{DeployTo: p.Env.DeployTo}
	var mu sync.Mutex
	removed := 0
	forEach(p.Nodes, func(n *Node) error {
		newest := []string{sha}
		for _, rel := range n.Releases {
			if rel.Name != sha {
				newest = append(newest, rel.Name)
			}
		}
		keep := newest[:min(len(newest), max(p.Env.KeepReleases, 1))]
		if n.Previous != "" && !slices.Contains(keep, n.Previous) {
			keep = append(keep, n.Previous)
		}
		c, err := layout.Prune(keep)
		if err != nil {
			return err
		}
		ctx, cancel := within(ctx, p.Manifest.Rollout.Timeout, "rollout.timeout", false)
		defer cancel()
		out, err := run.output(ctx, n.Target, c)
		if err != nil {
			run.rec.Logf(n.Name(), "prune: %v", err)
			return nil
		}
		for _, name := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
			if name == "" {
				continue
			}
			run.rec.Logf(n.Name(), "pruned %s", name)
			if !strings.HasPrefix(name, ".") && !strings.HasSuffix(name, ".index") && !strings.HasSuffix(name, ".tar.gz") {
				mu.Lock()
				removed++
				mu.Unlock()
			}
		}
		return nil
	})
	run.phaseNote = fmt.Sprintf("removed %d old releases", removed)
	return nil
}
