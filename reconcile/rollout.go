package reconcile

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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
// this commit, so a rerun never migrates twice. A failure stops the deploy
// with nothing switched.
func (r *Reconciler) migrate(ctx context.Context, run *run) error {
	p := run.plan
	sha := p.Commit.SHA
	if p.Manifest.Release.Migrate == "" {
		run.phaseNote = "skipped: no release.migrate"
		return nil
	}
	first := p.Nodes[0]
	marker := migratedFile(p.Env, sha)
	out, err := run.output(ctx, first.Target, hosts.ReadFile(marker))
	if err != nil {
		return err
	}
	if len(out) > 0 {
		run.phaseNote = "skipped: already migrated for " + short(sha) + " on " + first.Name()
		run.progress("migrate: already done for %s", short(sha))
		return nil
	}
	r.report(run, Pending, "migrating")
	run.progress("migrate: on %s", first.Name())
	env, err := r.releaseEnv(p, first, sha)
	if err != nil {
		return err
	}
	layout := hosts.Layout{DeployTo: p.Env.DeployTo}
	if err := run.timed("migrate", func() error {
		return run.execTail(ctx, first.Target, "migrate", p.Manifest.Release.Migrate, hosts.ShellCmd(layout.ReleaseDir(sha), p.Manifest.Release.Migrate, env))
	}); err != nil {
		return &DeployError{Class: classOf(err), Phase: "migrate", Host: first.Name(), Err: err}
	}
	record := []byte(time.Now().UTC().Format(time.RFC3339) + " " + sha + "\n")
	sum := sha256.Sum256(record)
	return run.exec(ctx, first.Target, "migrate", hosts.WriteFile(marker, 0o644, hex.EncodeToString(sum[:])), strings.NewReader(string(record)))
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
	p := run.plan
	sha := p.Commit.SHA
	alive := &live{nodes: map[string]*Node{}}
	var todo []*Node
	for _, n := range p.Nodes {
		alive.set(n, n.Running)
		if n.upToDate(sha) {
			run.rec.Node(history.NodeResult{Host: n.Name(), From: n.Current, To: n.Current, Outcome: "unchanged"})
		} else {
			todo = append(todo, n)
		}
	}
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
// fails. It returns a *DeployError naming the node and the check.
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
	if err := run.timed("drain wait", func() error { return r.setLB(ctx, run, n, "drain") }); err != nil {
		return fail(checkDrain, err)
	}
	if n.Current != "" {
		if err := run.timed("stop", func() error { return r.stopNode(ctx, run, n, n.Current, n.Running) }); err != nil {
			r.setLB(ctx, run, n, "ready")
			return fail(checkStop, err)
		}
	}
	alive.set(n, false)
	started := time.Now()
	err := r.switchAndCheck(ctx, run, n, sha, prev, alive)
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
	if prev != "" && prev != release {
		record := []byte(prev + "\n")
		sum := sha256.Sum256(record)
		if err := run.exec(ctx, n.Target, "rollout", hosts.WriteFile(previousFile(p.Env), 0o644, hex.EncodeToString(sum[:])), strings.NewReader(string(record))); err != nil {
			return check(checkSwitch, err)
		}
	}
	c, err := layout.Switch(release)
	if err != nil {
		return check(checkSwitch, err)
	}
	if err := run.exec(ctx, n.Target, "rollout", c, nil); err != nil {
		return check(checkSwitch, err)
	}
	n.Current = release
	env, err := r.releaseEnv(p, n, release)
	if err != nil {
		return check(checkStart, err)
	}
	// The start command's exit status says little (bin/<app> daemon exits 0
	// when the app dies at boot): ping decides.
	if err := run.timed("start", func() error {
		return run.exec(ctx, n.Target, "rollout", hosts.ShellCmd(layout.Current(), p.Manifest.Release.Start, env), nil)
	}); err != nil {
		var ce *hosts.CommandError
		if !errors.As(err, &ce) {
			return check(checkStart, err)
		}
	}
	if err := run.timed("ping wait", func() error {
		return r.waitFor(ctx, p.Manifest.Rollout.Timeout, func() (bool, string, error) {
			up, err := r.ping(ctx, p, n, run.rec)
			return up, "not answering " + p.Manifest.Release.Ping, err
		})
	}); err != nil {
		return check(checkPing, err)
	}
	n.Running = true
	alive.set(n, true)
	if err := run.timed("membership wait", func() error {
		return r.waitFor(ctx, p.Manifest.Cluster.Settle, func() (bool, string, error) {
			return r.membership(ctx, run, alive.list())
		})
	}); err != nil {
		return check(checkMembership, err)
	}
	if p.Manifest.Health != nil {
		if err := run.timed("health wait", func() error {
			return r.waitFor(ctx, p.Manifest.Rollout.Timeout, func() (bool, string, error) {
				return r.health(ctx, run, n, release)
			})
		}); err != nil {
			return check(checkHealth, err)
		}
	}
	return check(checkReady, r.setLB(ctx, run, n, "ready"))
}

// rollbackNode stops the failed release and brings prev back with the same
// checks. It returns what happened, for the node's record.
func (r *Reconciler) rollbackNode(ctx context.Context, run *run, n *Node, failed, prev string, alive *live) string {
	// A deploy cancelled mid-node must still put the node back.
	ctx = context.WithoutCancel(ctx)
	if err := r.stopNode(ctx, run, n, failed, false); err != nil {
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
	return r.waitFor(ctx, p.Manifest.Rollout.Timeout, func() (bool, string, error) {
		up, err := r.ping(ctx, p, n, nil)
		return !up, "still answering " + p.Manifest.Release.Ping, err
	})
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
	data, err := r.templateData(p, n, release)
	if err != nil {
		return false, "", err
	}
	url, err := manifests.Render(p.Manifest.Health.URL, data)
	if err != nil {
		return false, "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, "", err
	}
	resp, err := r.httpClient().Do(req)
	if err != nil {
		return false, "GET " + url + ": " + err.Error(), nil
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	resp.Body.Close()
	if resp.StatusCode != p.Manifest.Health.ExpectStatus {
		return false, fmt.Sprintf("GET %s: %s, want %d: %s", url, resp.Status, p.Manifest.Health.ExpectStatus, strings.TrimSpace(string(body))), nil
	}
	run.rec.Logf(n.Name(), "health: GET %s: %s", url, resp.Status)
	return true, "", nil
}

// setLB sets the node's admin state in HAProxy, when the manifest has a
// load balancer. Draining waits until the node's sessions end or the rollout
// timeout passes (then it goes on: a long-lived WebSocket must not block a
// deploy forever).
func (r *Reconciler) setLB(ctx context.Context, run *run, n *Node, state string) error {
	lb := run.plan.Manifest.LoadBalancer
	if lb == nil {
		return nil
	}
	lbHost := target(run.plan.Manifest.Hosts[lb.HAProxy.Host])
	lbHost.Name = lb.HAProxy.Host
	h := hosts.HAProxy{Socket: lb.HAProxy.Socket}
	c, err := h.SetState(lb.HAProxy.Backend, n.Name(), state)
	if err != nil {
		return err
	}
	if err := run.exec(ctx, lbHost, "haproxy", c, nil); err != nil {
		return err
	}
	if state != "drain" {
		return nil
	}
	show, err := h.ShowStat()
	if err != nil {
		return err
	}
	err = r.waitFor(ctx, run.plan.Manifest.Rollout.Timeout, func() (bool, string, error) {
		out, err := r.Fleet.Output(ctx, lbHost, show)
		if err != nil {
			return false, "", err
		}
		st, err := hosts.ParseStat(out, lb.HAProxy.Backend, n.Name())
		if err != nil {
			return false, "", err
		}
		return st.Sessions == 0, fmt.Sprintf("%d sessions still open", st.Sessions), nil
	})
	if errors.Is(err, errCheckTimeout) {
		run.rec.Logf(n.Name(), "drain: %v; going on", err)
		return nil
	}
	return err
}

// waitFor polls cond every interval until it holds, fails, or limit passes;
// then the error says what cond last reported.
func (r *Reconciler) waitFor(ctx context.Context, limit time.Duration, cond func() (bool, string, error)) error {
	deadline := time.Now().Add(limit)
	for {
		ok, state, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %v: %s", errCheckTimeout, limit, state)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(r.interval()):
		}
	}
}

// prune removes releases beyond keep_releases on every node, never the
// current or the previous one. A failure here is logged: the deploy itself
// succeeded.
func (r *Reconciler) prune(ctx context.Context, run *run) error {
	p := run.plan
	layout := hosts.Layout{DeployTo: p.Env.DeployTo}
	var mu sync.Mutex
	removed := 0
	forEach(p.Nodes, func(n *Node) error {
		c, err := layout.ListReleases()
		if err != nil {
			return err
		}
		out, err := run.output(ctx, n.Target, c)
		if err != nil {
			run.rec.Logf(n.Name(), "prune: %v", err)
			return nil
		}
		rels, err := hosts.ParseReleases(out)
		if err != nil {
			run.rec.Logf(n.Name(), "prune: %v", err)
			return nil
		}
		prevOut, _ := r.Fleet.Output(ctx, n.Target, hosts.ReadFile(previousFile(p.Env)))
		keep := []string{p.Commit.SHA}
		if prev := strings.TrimSpace(string(prevOut)); prev != "" {
			keep = append(keep, prev)
		}
		for i, rel := range rels {
			if i < p.Env.KeepReleases {
				keep = append(keep, rel.Name)
			}
		}
		if c, err = layout.Prune(keep); err != nil {
			return err
		}
		out, err = run.output(ctx, n.Target, c)
		if err != nil {
			run.rec.Logf(n.Name(), "prune: %v", err)
			return nil
		}
		for _, name := range strings.Fields(string(out)) {
			run.rec.Logf(n.Name(), "pruned %s", name)
			mu.Lock()
			removed++
			mu.Unlock()
		}
		return nil
	})
	run.phaseNote = fmt.Sprintf("removed %d old releases", removed)
	return nil
}
