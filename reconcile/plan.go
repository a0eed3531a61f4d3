package reconcile

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"

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
	// Running is whether the release's ping command succeeds.
	Running  bool
	Releases []hosts.Release
}

// Name is the node's host name in the manifest.
func (n *Node) Name() string { return n.Host.Name }

// upToDate reports whether the node runs commit.
func (n *Node) upToDate(commit string) bool { return n.Current == commit && n.Running }

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
		case n.Current == p.Commit.SHA:
			action = "start (it is on the commit but not running)"
		case n.Current == "":
			action = "first deploy"
		}
		state := "stopped"
		if n.Running {
			state = "running"
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
// could not be read.
func (r *Reconciler) Plan(ctx context.Context) (*Plan, error) { return r.PlanAt(ctx, "") }

// PlanAt is Plan with the desired commit named: rev, a commit SHA or a
// prefix of one, instead of the branch head ("" means the head). The
// manifest is read at that commit, as its release expects.
func (r *Reconciler) PlanAt(ctx context.Context, rev string) (*Plan, error) {
	desired, err := r.Source.Fetch(ctx)
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
			var out []byte
			if out, err = r.Fleet.Output(ctx, p.Build, c); err == nil {
				p.Artifact, err = hosts.ParseSum(out)
			}
		}
		if err != nil {
			errs[len(p.Nodes)] = classify("observe", p.Build.Name, err)
		}
	}()
	wg.Wait()
	return p, errors.Join(errs...)
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
// previous release, and whether the app answers its ping.
func (r *Reconciler) observe(ctx context.Context, p *Plan, n *Node) error {
	layout := hosts.Layout{DeployTo: p.Env.DeployTo}
	c, err := layout.ReadCurrent()
	if err != nil {
		return err
	}
	out, err := r.Fleet.Output(ctx, n.Target, c)
	if err != nil {
		return err
	}
	if n.Current, err = layout.ParseCurrent(out); err != nil {
		return err
	}
	if c, err = layout.ListReleases(); err != nil {
		return err
	}
	if out, err = r.Fleet.Output(ctx, n.Target, c); err != nil {
		return err
	}
	if n.Releases, err = hosts.ParseReleases(out); err != nil {
		return err
	}
	if out, err = r.Fleet.Output(ctx, n.Target, hosts.ReadFile(previousFile(p.Env))); err != nil {
		return err
	}
	n.Previous = strings.TrimSpace(string(out))
	if n.Current == "" {
		return nil
	}
	n.Running, err = r.ping(ctx, p, n, nil)
	return err
}

// ping runs the release's ping command in current: true when it exits 0,
// false when it fails, an error when the host could not be asked.
func (r *Reconciler) ping(ctx context.Context, p *Plan, n *Node, sink hosts.LogSink) (bool, error) {
	env, err := r.releaseEnv(p, n, n.Current)
	if err != nil {
		return false, err
	}
	err = r.Fleet.Run(ctx, n.Target, hosts.ShellCmd(hosts.Layout{DeployTo: p.Env.DeployTo}.Current(), p.Manifest.Release.Ping, env), hosts.Exec{Step: "ping", Sink: sink})
	var ce *hosts.CommandError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &ce):
		return false, nil
	default:
		return false, err
	}
}

// releaseEnv renders release.env for node n running commit.
func (r *Reconciler) releaseEnv(p *Plan, n *Node, commit string) (map[string]string, error) {
	return p.Manifest.ReleaseEnv(r.Env, n.Name(), commit)
}

func (r *Reconciler) templateData(p *Plan, n *Node, commit string) (manifests.TemplateData, error) {
	return p.Manifest.TemplateData(r.Env, n.Name(), commit)
}
