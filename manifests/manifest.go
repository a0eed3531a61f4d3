// Package manifests holds the domain types of a deploy: the manifest
// (deploy.yaml, read from the app repo at the commit being deployed), its
// hosts, build steps, environments and release commands, and the revision
// being deployed. It is the leaf of the module: it imports only the standard
// library and YAML, so every other package can speak in its types.
//
// Parse reads and validates a manifest, reporting every problem at once with
// its file, line and key. Relative remote paths (build.dir) are relative to
// the SSH user's home directory, as an SSH session starts there.
package manifests

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"
)

// Defaults for keys that a manifest may leave out. They are exported so that
// documentation, tests and `operator validate` can name them.
const (
	DefaultPort          = 22
	DefaultKeepReleases  = 5
	DefaultBatch         = 1
	DefaultTimeout       = 2 * time.Minute
	DefaultSettle        = 30 * time.Second
	DefaultExpectStatus  = 200
	DefaultHAProxySocket = "/run/haproxy/admin.sock"
	DefaultDrainTimeout  = 10 * time.Second
	DefaultBuildTimeout  = 30 * time.Minute
)

// DefaultBuildDir returns build.dir when the manifest leaves it out:
// build/<app>, relative to the build user's home, so that each app keeps its
// own persistent workspace and two apps built on one host never collide.
func DefaultBuildDir(app string) string { return "build/" + app }

// Manifest is a parsed and validated deploy.yaml. Parse fills every default,
// so consumers read fields directly and never re-apply defaults.
type Manifest struct {
	App          string
	Hosts        map[string]Host // by name, the key under hosts:
	Build        Build
	Environments map[string]Environment // by name
	Release      Release
	Cluster      Cluster
	Health       *Health // nil when the manifest has no health section
	Rollout      Rollout
	LoadBalancer *LoadBalancer // nil when the manifest has no loadbalancer section
}

// Host is a machine the operator reaches over SSH. Address and User are
// required: guessing a login (root, or the operator's own user) would make a
// typo'd manifest try the wrong account on a production server.
type Host struct {
	Name    string // its key in hosts, also its server name in HAProxy
	Address string // host name or IP address
	User    string
	Port    int    // default 22
	Node    string // Erlang node name (name@host); required for hosts that run the app
}

// Build says how to build a release on the build host.
type Build struct {
	Host string // a key of Manifest.Hosts
	// Dir is the persistent workspace, a git checkout of the commit being
	// built. A relative Dir is relative to the SSH user's home; the default is
	// DefaultBuildDir(app).
	Dir   string
	Env   map[string]string // added to every step's environment; not templates
	Steps []Step
	// Artifact is a path.Match glob, relative to Dir, that must match exactly
	// one .tar.gz of the release after the steps ran.
	Artifact string
	// Timeout (build.timeout) bounds the phases that switch no node: the
	// build and the release's staging on the nodes together, from the push
	// of the commit to the release unpacked everywhere, and the migration
	// on its own. A command still running then is stopped and the deploy
	// fails, so a hung step (a download that never ends) cannot hold the
	// deploy, or the environment's next deploys, for ever.
	Timeout time.Duration
}

// Step is one build command, run through a POSIX shell in Build.Dir.
type Step struct {
	Run string
	// WhenChanged lists repo paths or path.Match globs (where * does not
	// cross a /). When non-empty, the step is skipped if none of them changed
	// since its last successful run, which is what makes builds incremental.
	WhenChanged []string
}

// Environment is a set of nodes deployed together, such as production.
type Environment struct {
	Name         string   // its key in environments
	Hosts        []string // keys of Manifest.Hosts, in rollout order
	DeployTo     string   // absolute; holds releases/, shared/ and current
	KeepReleases int      // at least 2: the current release and the previous one
}

// ReleaseDir is where the release of commit lives on each node of e.
func (e Environment) ReleaseDir(commit string) string {
	return path.Join(e.DeployTo, "releases", commit)
}

// Release holds the commands that drive an unpacked release on a node. They
// are plain shell command lines, run in the release directory with Env set.
type Release struct {
	// Env is added to every release command's environment, migrate included.
	// Its values are templates rendered with TemplateData per node.
	Env map[string]string
	// Links are paths relative to the release; each becomes a symlink to the
	// same path under <deploy_to>/shared/, for secrets that must not live in
	// the repo.
	Links   []string
	Files   []ReleaseFile
	Start   string
	Stop    string
	Ping    string
	Migrate string // optional: empty means the app has no migrations
}

// ReleaseFile is a per-node file rendered into each release.
type ReleaseFile struct {
	Template string // repo path of a text/template file, rendered with TemplateData
	Path     string // relative to the release directory
}

// Cluster says how to check that the nodes form one Erlang cluster.
type Cluster struct {
	Members string        // command printing one node name a line
	Settle  time.Duration // how long a node may take to see all its peers
}

// Health is an HTTP check each node must pass after joining the cluster.
type Health struct {
	URL          string // a template, such as http://{{.Host.Address}}:4000/health
	ExpectStatus int
}

// Rollout paces the switch from node to node.
type Rollout struct {
	Batch int // nodes switched at a time
	// Timeout is per node, from its stop to passing its checks; a node's
	// rollback (or its recovery from a stop that failed) has as much again
	// of its own. A command still running then is stopped.
	Timeout time.Duration
}

// LoadBalancer names the load balancer that fronts the nodes, so that a
// node is drained before it stops and restored once it passes its checks.
type LoadBalancer struct {
	HAProxy HAProxy
	// DrainTimeout bounds how long a drain waits for the requests in
	// flight on a node (loadbalancer.drain_timeout). Upgraded and
	// streaming connections (WebSockets, server-sent events) are never
	// waited for: they end when the node stops.
	DrainTimeout time.Duration
}

// HAProxy is reached through its admin socket on one of the hosts. Its
// server names in Backend are the host names of the manifest.
type HAProxy struct {
	Host    string // a key of Manifest.Hosts
	Socket  string // absolute path of the admin socket on Host
	Backend string
}

// Revision is a commit of the tracked branch, the unit a deploy moves the
// nodes to.
type Revision struct {
	Commit string // full SHA
	Branch string
}

// Short returns the abbreviated commit SHA people read in statuses and pages.
func (r Revision) Short() string {
	if len(r.Commit) > 7 {
		return r.Commit[:7]
	}
	return r.Commit
}

// ErrUnknownEnvironment reports an environment name that the manifest does
// not define; the operator's config names the environment, so this is a
// mismatch between config and repo rather than a bug.
var ErrUnknownEnvironment = errors.New("unknown environment")

// ErrUnknownHost reports a host name that the environment does not deploy to.
var ErrUnknownHost = errors.New("unknown host")

// Environment returns the environment called name.
func (m *Manifest) Environment(name string) (Environment, error) {
	env, ok := m.Environments[name]
	if !ok {
		names := make([]string, 0, len(m.Environments))
		for n := range m.Environments {
			names = append(names, n)
		}
		slices.Sort(names)
		return Environment{}, fmt.Errorf("environment %q (manifest has %s): %w",
			name, strings.Join(names, ", "), ErrUnknownEnvironment)
	}
	return env, nil
}

// NodeHosts returns the hosts of environment env in rollout order.
func (m *Manifest) NodeHosts(env string) ([]Host, error) {
	e, err := m.Environment(env)
	if err != nil {
		return nil, err
	}
	hosts := make([]Host, len(e.Hosts))
	for i, name := range e.Hosts {
		hosts[i] = m.Hosts[name]
	}
	return hosts, nil
}

// BuildHost returns the host that builds releases.
func (m *Manifest) BuildHost() Host {
	return m.Hosts[m.Build.Host]
}

// Peers returns the node names of env's hosts other than host, in rollout
// order: the nodes that host's node must see for the cluster to be whole.
func (m *Manifest) Peers(env, host string) ([]string, error) {
	nodes, err := m.NodeHosts(env)
	if err != nil {
		return nil, err
	}
	if !slices.ContainsFunc(nodes, func(h Host) bool { return h.Name == host }) {
		return nil, fmt.Errorf("host %q in environment %q: %w", host, env, ErrUnknownHost)
	}
	peers := make([]string, 0, len(nodes)-1)
	for _, h := range nodes {
		if h.Name != host {
			peers = append(peers, h.Node)
		}
	}
	return peers, nil
}

// TemplateData returns what templates see when rendered for host in env at
// commit, so that every package fills it the same way.
func (m *Manifest) TemplateData(env, host, commit string) (TemplateData, error) {
	e, err := m.Environment(env)
	if err != nil {
		return TemplateData{}, err
	}
	peers, err := m.Peers(env, host)
	if err != nil {
		return TemplateData{}, err
	}
	h := m.Hosts[host]
	return TemplateData{
		App:        m.App,
		Env:        e.Name,
		Commit:     commit,
		Node:       h.Node,
		Peers:      peers,
		Host:       TemplateHost{Name: h.Name, Address: h.Address},
		DeployTo:   e.DeployTo,
		ReleaseDir: e.ReleaseDir(commit),
	}, nil
}

// ReleaseEnv renders release.env for host of env running commit: the
// environment every release command runs with there.
func (m *Manifest) ReleaseEnv(env, host, commit string) (map[string]string, error) {
	data, err := m.TemplateData(env, host, commit)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(m.Release.Env))
	for k, v := range m.Release.Env {
		if out[k], err = Render(v, data); err != nil {
			return nil, fmt.Errorf("release.env.%s: %w", k, err)
		}
	}
	return out, nil
}
