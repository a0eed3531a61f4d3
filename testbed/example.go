package testbed

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/clusterops/operator/manifests"
)

// Example is the example app's whole setting on a bed, as the end-to-end
// tests, the benchmarks and the demo use it: a build host, three nodes, an
// HAProxy host and a PostgreSQL host, prepared as an administrator would
// prepare them once (the cluster's cookie in /srv/chat/shared, HAProxy in
// front of the nodes, the app's database and role, the build host's npm
// pointed at a cache), and the app in a git repository whose manifest
// points at these hosts.
type Example struct {
	Bed   *Bed
	Repo  *AppRepo
	Nodes []string // n1, n2, n3: the environment's hosts, in rollout order
	// DB is the app's database on host db, nil when the manifest's
	// release.env has no DATABASE_URL.
	DB *Postgres
}

// ExampleDeployTo is the example manifest's deploy_to.
const ExampleDeployTo = "/srv/chat"

// ExampleCookie is the Erlang cookie NewExample seeds on the nodes: a
// by-hand deploy on the same bed must use it too.
const ExampleCookie = "example-cookie-not-a-secret"

// NewExample prepares the example app at src (the example app, or a copy of
// it made larger) on bed, which must have the hosts ExampleHosts names; the
// repository is made under dir. PostgreSQL on db gets the role, password
// and database of the DATABASE_URL in the manifest's release.env; it
// starts while the rest is prepared.
func NewExample(ctx context.Context, bed *Bed, src, dir string) (*Example, error) {
	e := &Example{Bed: bed, Nodes: []string{"n1", "n2", "n3"}}
	dbOpts, ok, err := exampleDatabase(src)
	if err != nil {
		return nil, err
	}
	type started struct {
		pg  *Postgres
		err error
	}
	db := make(chan started, 1)
	if ok {
		go func() {
			pg, err := bed.Host("db").StartPostgres(ctx, dbOpts)
			db <- started{pg, err}
		}()
	} else {
		db <- started{}
	}
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
	r := <-db
	if r.err != nil {
		return nil, fmt.Errorf("postgres on db: %w", r.err)
	}
	e.DB = r.pg
	return e, nil
}

// ExampleHosts are the hosts NewExample needs, for New and Start.
var ExampleHosts = []string{"build", "n1", "n2", "n3", "lb", "db"}

// exampleDatabase reads the database the app's manifest at src expects
// (release.env's DATABASE_URL; its host is a placeholder NewAppRepo
// rewrites) so the bed's server has that role and password.
func exampleDatabase(src string) (_ PostgresOptions, ok bool, _ error) {
	data, err := os.ReadFile(filepath.Join(src, "deploy.yaml"))
	if err != nil {
		return PostgresOptions{}, false, err
	}
	m, err := manifests.Parse("deploy.yaml", data)
	if err != nil {
		return PostgresOptions{}, false, err
	}
	raw, ok := m.Release.Env["DATABASE_URL"]
	if !ok {
		return PostgresOptions{}, false, nil
	}
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		// Never quote the URL: it holds the password.
		return PostgresOptions{}, false, fmt.Errorf("%s/deploy.yaml: release.env.DATABASE_URL: want postgres://user:password@host:port/database", src)
	}
	password, _ := u.User.Password()
	return PostgresOptions{User: u.User.Username(), Password: password, Database: strings.TrimPrefix(u.Path, "/")}, true, nil
}
