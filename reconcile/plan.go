package reconcile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/clusterops/operator/gitsrc"
	"github.com/clusterops/operator/hosts"
	"github.com/clusterops/operator/manifests"
)

// Plan is what a sync found: the desired commit, its manifest, and what
// every node of the environment runs now.
type Plan struct {
	Commit   gitsrc.Commit
	Manifest *manifests.Manifest
	Env      manifests.Environment
	Build    hosts.Target
	Nodes    []*Node
	// Artifact is the sha256 of the commit's artifact kept on the build
	// host, or "" when the commit must be built.
	Artifact string
}

// Node is one node of the environment as observed.
type Node struct {
	Host   manifests.Host
	Target hosts.Target
	// Current is the commit current points at; "" on a node never
	// deployed to.
	Current string
	// Previous is the release the node ran before Current, as recorded at
	// the last switch; "" when unknown.
	Previous string
	// Running is whether the release's ping command succeeds. For a node
	// not on the desired commit whose health URL answered with
	// expect_status, it is that answer until the rollout, which waits for
	// the ping observe started and takes its word (see observe).
	Running  bool
	Releases []hosts.Release
	// Drained is whether the load balancer has the node drained: a deploy
	// that stopped between a node's drain and its return (its operator
	// killed, say) left it so, and it is not up to date until a rollout
	// has checked it and put it back.
	Drained bool

	// migrated is whether the node records that the desired commit's
	// migration ran (the first node runs it).
	migrated bool

	// pid is the node's OS process id as its last successful ping printed
	// it, 0 when unknown: see ping.
	pid int
	// confirm, when not nil, delivers the ping that decides Running.
	confirm chan pingResult
}

// pingResult is a ping that ran in the background.
type pingResult struct {
	up  bool
	pid int
	err error
}

// Name is the node's host name in the manifest.
func (n *Node) Name() string { return n.Host.Name }

// upToDate reports whether the node runs commit and serves.
func (n *Node) upToDate(commit string) bool { return n.Current == commit && n.Running && !n.Drained }

// NothingToDo reports whether every node already runs the desired commit.
func (p *Plan) NothingToDo() bool {
	if p.Manifest == nil {
		return false
	}
	for _, n := range p.Nodes {
		if !n.upToDate(p.Commit.SHA) {
			return false
		}
	}
	return true
}

// String says what a sync would do, for `operator plan`.
func (p *Plan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "desired: %s %s\n", short(p.Commit.SHA), p.Commit.Subject)
	if p.Manifest == nil {
		return b.String()
	}
	if p.NothingToDo() {
		fmt.Fprintf(&b, "nothing to do: every node of %s runs %s\n", p.Env.Name, short(p.Commit.SHA))
		return b.String()
	}
	if p.Artifact != "" {
		fmt.Fprintf(&b, "build: none, the artifact of %s is on %s (sha256 %s)\n", short(p.Commit.SHA), p.Build.Name, p.Artifact[:12])
	} else {
		fmt.Fprintf(&b, "build: on %s, incrementally\n", p.Build.Name)
	}
	if p.Manifest.Release.Migrate != "" {
		fmt.Fprintf(&b, "migrate: once, on %s, unless already done for this commit\n", p.Nodes[0].Name())
	}
	for i, n := range p.Nodes {
		action := "update"
		switch {
		case n.upToDate(p.Commit.SHA):
			action = "unchanged"
		case n.Current == p.Commit.SHA && n.Running:
			action = "restart and check (left drained in the load balancer by a deploy that did not finish)"
		case n.Current == p.Commit.SHA:
			action = "start (it is on the commit but not running)"
		case n.Current == "":
			action = "first deploy"
		}
		state := "stopped"
		if n.Running {
			state = "running"
		}
		if n.Drained {
			state += ", drained"
		}
		fmt.Fprintf(&b, "node %d/%d %s: on %s (%s): %s\n", i+1, len(p.Nodes), n.Name(), orNone(short(n.Current)), state, action)
	}
	return b.String()
}

func short(sha string) string {
	if len(sha) > 12 {
		return sha[:12]
	}
	return sha
}

func orNone(s string) string {
	if s == "" {
		return "nothing"
	}
	return s
}

// target turns a manifest host into what the hosts package dials.
func target(h manifests.Host) hosts.Target {
	return hosts.Target{Name: h.Name, Address: h.Address, Port: h.Port, User: h.User}
}

// Plan looks at the repo and the hosts and says what a sync would do,
// changing nothing. With a plan it returns a *DeployError when the manifest
// is invalid or a host cannot be observed; a nil plan means even the repo
// could not be read. The fetch has fetchTimeout; each node's observation,
// and the artifact's lookup, rollout.timeout; HAProxy's states lbTimeout.
func (r *Reconciler) Plan(ctx context.Context) (*Plan, error) { return r.PlanAt(ctx, "") }

// PlanAt is Plan with the desired commit named: rev, a commit SHA or a
// prefix of one, instead of the branch head ("" means the head). The
// manifest is read at that commit, as its release expects.
func (r *Reconciler) PlanAt(ctx context.Context, rev string) (*Plan, error) {
	fctx, cancel := within(ctx, fetchTimeout, "the fetch's time", false)
	desired, err := r.Source.Fetch(fctx)
	cancel()
	if err != nil {
		return nil, &DeployError{Class: ClassError, Phase: "fetch", Err: err}
	}
	if rev != "" {
		if desired, err = r.Source.Resolve(rev); err != nil {
			return nil, &DeployError{Class: ClassError, Phase: "fetch", Err: err}
		}
	}
	commit, err := r.Source.Commit(desired)
	if err != nil {
		return nil, &DeployError{Class: ClassError, Phase: "fetch", Err: err}
	}
	p := &Plan{Commit: commit}
	data, err := r.Source.ReadFile(desired, r.ManifestPath)
	if err != nil {
		return p, &DeployError{Class: ClassError, Phase: "manifest", Err: err}
	}
	m, err := manifests.Parse(r.ManifestPath, data)
	if err != nil {
		return p, &DeployError{Class: ClassError, Phase: "manifest", Err: fmt.Errorf("invalid manifest at %s:\n%w", short(desired), err)}
	}
	env, err := m.Environment(r.Env)
	if err != nil {
		return p, &DeployError{Class: ClassError, Phase: "manifest", Err: err}
	}
	nodeHosts, err := m.NodeHosts(r.Env)
	if err != nil {
		return p, &DeployError{Class: ClassError, Phase: "manifest", Err: err}
	}
	p.Manifest, p.Env, p.Build = m, env, target(m.BuildHost())
	for _, h := range nodeHosts {
		p.Nodes = append(p.Nodes, &Node{Host: h, Target: target(h)})
	}

	var wg sync.WaitGroup
	errs := make([]error, len(p.Nodes)+1)
	for i, n := range p.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.observe(ctx, p, n); err != nil {
				errs[i] = classify("observe", n.Name(), err)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		ws := hosts.Workspace{Dir: m.Build.Dir}
		c, err := ws.LookupArtifact(desired)
		if err == nil {
			ctx, cancel := within(ctx, m.Rollout.Timeout, "rollout.timeout", false)
			defer cancel()
			var out []byte
			if out, err = r.Fleet.Output(ctx, p.Build, c); err == nil {
				p.Artifact, err = hosts.ParseSum(out)
			}
		}
		if err != nil {
			errs[len(p.Nodes)] = classify("observe", p.Build.Name, err)
		}
	}()
	var drained map[string]bool
	if lb := m.LoadBalancer; lb != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			drained = r.drained(ctx, m)
		}()
	}
	wg.Wait()
	for _, n := range p.Nodes {
		n.Drained = drained[n.Name()]
	}
	return p, errors.Join(errs...)
}

// drained reads which nodes the load balancer has drained. A load
// balancer that cannot be read fails no plan (the rollout's drain will
// say what is wrong with it): then none is taken as drained.
func (r *Reconciler) drained(ctx context.Context, m *manifests.Manifest) map[string]bool {
	lb := m.LoadBalancer.HAProxy
	lbHost := target(m.Hosts[lb.Host])
	lbHost.Name = lb.Host
	c, err := hosts.HAProxy{Socket: lb.Socket}.ShowServersState(lb.Backend)
	if err == nil {
		ctx, cancel := context.WithTimeout(ctx, lbTimeout)
		defer cancel()
		var out []byte
		if out, err = r.Fleet.Output(ctx, lbHost, c); err == nil {
			var d map[string]bool
			if d, err = hosts.ParseDrained(out, lb.Backend); err == nil {
				return d
			}
		}
	}
	r.logger().Warn("cannot tell which nodes the load balancer has drained", "host", lb.Host, "err", err)
	return nil
}

// operatorDir is where the operator keeps its records on a node.
func operatorDir(env manifests.Environment) string {
	return path.Join(env.DeployTo, ".operator")
}

func previousFile(env manifests.Environment) string { return path.Join(operatorDir(env), "previous") }

func migratedFile(env manifests.Environment, commit string) string {
	return path.Join(operatorDir(env), "migrated", commit)
}

// observe reads what n runs: current, the releases it holds, the recorded
// previous release, and whether the app answers its ping, within
// rollout.timeout (a ping left running in the background has that from its
// own start).
func (r *Reconciler) observe(ctx context.Context, p *Plan, n *Node) error {
	limit := p.Manifest.Rollout.Timeout
	bg := ctx // for the background ping, which outlives observe
	ctx, cancel := within(ctx, limit, "rollout.timeout", false)
	defer cancel()
	layout := hosts.Layout{DeployTo: p.Env.DeployTo}
	records := []string{previousFile(p.Env)}
	if p.Commit.SHA != "" {
		records = append(records, migratedFile(p.Env, p.Commit.SHA))
	}
	c, err := layout.Observe(records...)
	if err != nil {
		return err
	}
	out, err := r.Fleet.Output(ctx, n.Target, c)
	if err != nil {
		return err
	}
	o, err := layout.ParseObserve(out, len(records))
	if err != nil {
		return err
	}
	n.Current, n.Releases, n.Previous = o.Current, o.Releases, o.Records[0]
	n.migrated = len(o.Records) > 1 && o.Records[1] != ""
	if n.Current == "" {
		return nil
	}
	// A ping boots a VM on the node (a fifth of a second of CPU), the
	// health URL costs a request. Whether a node not on the desired commit
	// runs matters only to the rollout, which restarts it: such a node
	// whose health answers is taken as running for now, and its ping runs
	// in the background; the rollout waits for it (confirmRunning). A node
	// on the desired commit is pinged here: it decides whether there is
	// anything to do.
	if p.Manifest.Health != nil && p.Commit.SHA != "" && n.Current != p.Commit.SHA && r.healthy(ctx, p, n) {
		n.Running = true
		n.confirm = make(chan pingResult, 1)
		shadow := *n
		pctx, pcancel := within(bg, limit, "rollout.timeout", false)
		go func() {
			defer pcancel()
			up, err := r.ping(pctx, p, &shadow, nil)
			n.confirm <- pingResult{up: up, pid: shadow.pid, err: err}
		}()
		return nil
	}
	n.Running, err = r.ping(ctx, p, n, nil)
	return err
}

// observeHealthTimeout bounds observe's health request: a node that does
// not answer within it is pinged.
const observeHealthTimeout = time.Second

// healthy reports whether the health URL of n's current release answers
// with expect_status.
func (r *Reconciler) healthy(ctx context.Context, p *Plan, n *Node) bool {
	url, err := r.healthURL(p, n, n.Current)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, observeHealthTimeout)
	defer cancel()
	resp, _, err := r.get(ctx, url)
	return err == nil && resp.StatusCode == p.Manifest.Health.ExpectStatus
}

// confirmRunning settles n.Running with the ping observe left running in
// the background, if any; a ping that could not run (the host, the
// context) is run again here, one that did not return within its time is
// not.
func (r *Reconciler) confirmRunning(ctx context.Context, run *run, n *Node) error {
	if n.confirm == nil {
		return nil
	}
	res := <-n.confirm
	n.confirm = nil
	var te *timeoutError
	if errors.As(res.err, &te) {
		return res.err
	}
	if res.err != nil {
		ctx, cancel := within(ctx, run.plan.Manifest.Rollout.Timeout, "rollout.timeout", false)
		defer cancel()
		up, err := r.ping(ctx, run.plan, n, run.rec)
		if err != nil {
			return err
		}
		res.up, res.pid = up, n.pid
	}
	if !res.up {
		run.rec.Logf(n.Name(), "its health URL answered but %s fails: not running", run.plan.Manifest.Release.Ping)
	}
	n.Running, n.pid = res.up, res.pid
	return nil
}

// ping runs the release's ping command in current: true when it exits 0,
// false when it fails, an error when the host could not be asked. When it
// succeeds and prints nothing but a number above 1 (a Mix release's
// `bin/<app> pid` prints the node's OS pid), that number is kept as the
// node's pid, a hint for waiting until the node is down; any other output
// leaves no hint.
func (r *Reconciler) ping(ctx context.Context, p *Plan, n *Node, sink hosts.LogSink) (bool, error) {
	env, err := r.releaseEnv(p, n, n.Current)
	if err != nil {
		return false, err
	}
	var out strings.Builder
	c := hosts.ShellCmd(hosts.Layout{DeployTo: p.Env.DeployTo}.Current(), p.Manifest.Release.Ping, env)
	err = r.Fleet.Run(ctx, n.Target, c, hosts.Exec{Step: "ping", Stdout: &limitedWriter{w: &out, n: 4096}, Sink: sink})
	if sink != nil {
		for _, line := range strings.Split(strings.TrimRight(out.String(), "\n"), "\n") {
			if line != "" {
				sink.Line(n.Target.String(), "stdout", line)
			}
		}
	}
	var ce *hosts.CommandError
	switch {
	case err == nil:
		n.pid = 0
		if pid, err := strconv.Atoi(strings.TrimSpace(out.String())); err == nil && pid > 1 {
			n.pid = pid
		}
		return true, nil
	case errors.As(err, &ce):
		n.pid = 0
		return false, nil
	default:
		return false, err
	}
}

// limitedWriter keeps the first n bytes written to w and drops the rest.
type limitedWriter struct {
	w io.Writer
	n int
}

func (l *limitedWriter) Write(b []byte) (int, error) {
	if l.n > 0 {
		k := min(len(b), l.n)
		l.w.Write(b[:k])
		l.n -= k
	}
	return len(b), nil
}

// releaseEnv renders release.env for node n running commit.
func (r *Reconciler) releaseEnv(p *Plan, n *Node, commit string) (map[string]string, error) {
	return p.Manifest.ReleaseEnv(r.Env, n.Name(), commit)
}

func (r *Reconciler) templateData(p *Plan, n *Node, commit string) (manifests.TemplateData, error) {
	return p.Manifest.TemplateData(r.Env, n.Name(), commit)
}
