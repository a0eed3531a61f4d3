package testbed

import (
	"context"
	"fmt"
	"path/filepath"
)

// Example is the example app's whole setting on a bed, as the end-to-end
// tests, the benchmarks and the demo use it: a build host, three nodes and
// an HAProxy host, prepared as an administrator would prepare them once
// (the cluster's cookie in /srv/chat/shared, HAProxy in front of the nodes,
// the build host's npm pointed at a cache), and the app in a git repository
// whose manifest points at these hosts.
type Example struct {
	Bed   *Bed
	Repo  *AppRepo
	Nodes []string // n1, n2, n3: the environment's hosts, in rollout order
}

// ExampleDeployTo is the example manifest's deploy_to.
const ExampleDeployTo = "/srv/chat"

// ExampleCookie is the Erlang cookie NewExample seeds on the nodes: a
// by-hand deploy on the same bed must use it too.
const ExampleCookie = "example-cookie-not-a-secret"

// NewExample prepares the example app at src (the example app, or a copy of
// it made larger) on bed, which must have the hosts build, n1, n2, n3 and
// lb; the repository is made under dir.
func NewExample(ctx context.Context, bed *Bed, src, dir string) (*Example, error) {
	e := &Example{Bed: bed, Nodes: []string{"n1", "n2", "n3"}}
	if err := PrimeNPMCache(ctx, filepath.Join(src, "assets"), NPMCache); err != nil {
		return nil, err
	}
	if err := bed.Host("build").UseNPMCache(NPMCache); err != nil {
		return nil, err
	}
	var nodes []*Host
	var backends []Backend
	for _, n := range e.Nodes {
		nodes = append(nodes, bed.Host(n))
		backends = append(backends, Backend{Name: n, Addr: bed.Host(n).Addr.String() + ":4000"})
	}
	if err := SeedShared(ctx, nodes, ExampleDeployTo, ExampleCookie); err != nil {
		return nil, err
	}
	if err := bed.Host("lb").StartHAProxy(ctx, "chat", backends); err != nil {
		return nil, fmt.Errorf("haproxy on lb: %w", err)
	}
	repo, err := NewAppRepo(ctx, bed, src, dir)
	if err != nil {
		return nil, err
	}
	e.Repo = repo
	return e, nil
}

// ExampleHosts are the hosts NewExample needs, for New and Start.
var ExampleHosts = []string{"build", "n1", "n2", "n3", "lb"}
