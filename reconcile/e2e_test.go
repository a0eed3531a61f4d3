package reconcile_test

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clusterops/operator/gitsrc"
	"github.com/clusterops/operator/history"
	"github.com/clusterops/operator/hosts"
	"github.com/clusterops/operator/reconcile"
	"github.com/clusterops/operator/testbed"
)

// fixture is the whole real setting of a deploy: a build host, three nodes
// and an HAProxy host, the example app in a git repository, and an operator
// (mirror, pool, history) with its own state directory.
type fixture struct {
	t     testing.TB
	bed   *testbed.Bed
	repo  *testbed.AppRepo
	pool  *hosts.Pool
	hist  *history.Store
	r     *reconcile.Reconciler
	nodes []string
	state string
}

const (
	deployTo = testbed.ExampleDeployTo
	// clusterCookie is the cluster's Erlang cookie, seeded in every node's shared/.
	clusterCookie = testbed.ExampleCookie
)

func newFixture(t *testing.T) *fixture {
	t.Helper()
	src, _ := filepath.Abs("../examples/cluster-app")
	return newFixtureOf(t, src)
}

// newFixtureOf is newFixture for the app whose sources are at src.
func newFixtureOf(t testing.TB, src string) *fixture {
	t.Helper()
	bed := testbed.Start(t, testbed.ExampleHosts...)
	ex, err := testbed.NewExample(t.Context(), bed, src, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, bed: bed, repo: ex.Repo, nodes: ex.Nodes}
	f.state = t.TempDir()
	f.pool, f.hist, f.r, err = newOperator(ex.Repo.Bare, f.state, bed.ClientKey, bed.KnownHosts, t.Output(), func(line string) { t.Log("progress: " + line) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.pool.Close() })
	return f
}

// newOperator wires an operator as cmd/operator does, on one state dir.
func newOperator(repo, state, key, knownHosts string, logTo io.Writer, progress func(string)) (*hosts.Pool, *history.Store, *reconcile.Reconciler, error) {
	return newOperatorWith(repo, state, key, knownHosts, logTo, progress, nil)
}

// newOperatorWith is newOperator with the SSH pool's config adjusted by
// mod, when not nil.
func newOperatorWith(repo, state, key, knownHosts string, logTo io.Writer, progress func(string), mod func(*hosts.Config)) (*hosts.Pool, *history.Store, *reconcile.Reconciler, error) {
	mirror, err := gitsrc.Open(gitsrc.Options{URL: repo, Branch: "main", Dir: filepath.Join(state, "mirror")})
	if err != nil {
		return nil, nil, nil, err
	}
	cfg := hosts.Config{Identity: key, KnownHosts: knownHosts}
	if mod != nil {
		mod(&cfg)
	}
	pool, err := hosts.NewPool(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	hist, err := history.Open(state)
	if err != nil {
		return nil, nil, nil, err
	}
	r := &reconcile.Reconciler{
		Env: "production", ManifestPath: "deploy.yaml",
		Source: mirror, Fleet: pool, History: hist,
		Log:      slog.New(slog.NewTextHandler(logTo, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Progress: progress,
	}
	return pool, hist, r, nil
}

func (f *fixture) sync() (*reconcile.Outcome, error) {
	f.t.Helper()
	start := time.Now()
	out, err := f.r.Sync(f.t.Context(), "test")
	f.t.Logf("sync took %v: %v", time.Since(start).Round(time.Millisecond), err)
	return out, err
}

// current reads where a node's current points, as the operator would not:
// straight off the host's disk.
func (f *fixture) current(node string) string {
	f.t.Helper()
	out, err := f.bed.Host(node).Sh(f.t.Context(), "readlink "+deployTo+"/current || true")
	if err != nil {
		f.t.Fatal(err)
	}
	return filepath.Base(strings.TrimSpace(out))
}

type health struct {
	Commit string   `json:"commit"`
	Node   string   `json:"node"`
	Nodes  []string `json:"nodes"`
}

func (f *fixture) health(node string) (health, error) {
	var h health
	resp, err := http.Get("http://" + f.bed.Host(node).Addr.String() + ":4000/health")
	if err != nil {
		return h, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return h, json.Unmarshal(body, &h)
}

// log returns the deploy's whole log.
func (f *fixture) log(id int64) string {
	f.t.Helper()
	rc, err := f.hist.Log(id)
	if err != nil {
		f.t.Fatal(err)
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return string(b)
}

// wantCluster checks every node runs commit and lists the two others.
func (f *fixture) wantCluster(commit string) {
	f.t.Helper()
	for _, n := range f.nodes {
		if got := f.current(n); got != commit {
			f.t.Errorf("%s current: got %s, want %s", n, got, commit)
		}
		h, err := f.health(n)
		if err != nil {
			f.t.Errorf("%s /health: %v", n, err)
			continue
		}
		if h.Commit != commit {
			f.t.Errorf("%s runs %s, want %s", n, h.Commit, commit)
		}
		var want []string
		for _, o := range f.nodes {
			if o != n {
				want = append(want, "chat@"+f.bed.Host(o).Addr.String())
			}
		}
		slices.Sort(h.Nodes)
		if !slices.Equal(h.Nodes, want) {
			f.t.Errorf("%s is connected to %v, want %v", n, h.Nodes, want)
		}
	}
}

func TestFirstDeployThenOneLineChangeThenNothing(t *testing.T) {
	f := newFixture(t)
	first, err := f.repo.Commit(t.Context(), "nothing new", nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := f.sync()
	if err != nil {
		t.Fatalf("first deploy: %v\n%s", err, f.log(1))
	}
	if out.Deploy == nil || out.Deploy.Result != history.Success {
		t.Fatalf("first deploy: %+v", out.Deploy)
	}
	f.wantCluster(first)

	second, err := f.repo.Commit(t.Context(), "one-line change", testbed.AppendLine("lib/chat.ex", "# a one-line change"))
	if err != nil {
		t.Fatal(err)
	}
	out, err = f.sync()
	if err != nil {
		t.Fatalf("second deploy: %v\n%s", err, f.log(out.Deploy.ID))
	}
	f.wantCluster(second)
	log := f.log(out.Deploy.ID)
	for _, want := range []string{
		"step 1 skipped: mix.exs, mix.lock unchanged",
		"step 2 skipped: assets/package.json, assets/package-lock.json unchanged",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("the second deploy's log lacks %q", want)
		}
	}
	// The release went to each node as a delta against the first.
	if got := strings.Count(log, "release made from "+first[:12]+": "); got != 3 {
		t.Errorf("the second deploy's log says %d times that a node made the release from the first's, want 3:\n%s", got, log)
	}
	// Each node's vm.args came with its delta, rendered for this commit
	// and this node.
	for _, n := range []string{"n1", "n2", "n3"} {
		vmArgs, err := f.bed.Host(n).Sh(t.Context(), "cat "+deployTo+"/current/releases/vm.args")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(vmArgs), "release "+second) || !strings.Contains(string(vmArgs), "on host "+n+" ") {
			t.Errorf("%s's vm.args is not rendered for %s:\n%s", n, second, vmArgs)
		}
	}
	if got := strings.Count(f.log(1), "received from build and unpacked"); got != 3 {
		t.Errorf("the first deploy's log says %d times that a node received the release whole, want 3", got)
	}
	for _, kind := range []string{"build step", "stop", "start", "ping wait", "membership wait", "health wait", "drain wait"} {
		if out.Deploy.Spent[kind] <= 0 {
			t.Errorf("the deploy record says nothing of the time spent on %q: %v", kind, out.Deploy.Spent)
		}
	}
	for _, n := range out.Deploy.Nodes {
		if n.Outcome != "updated" || n.From != first || n.To != second {
			t.Errorf("node result %+v", n)
		}
	}

	// Right after success: nothing to do, no deploy recorded, nothing touched.
	out, err = f.sync()
	if err != nil || out.Deploy != nil || !out.Plan.NothingToDo() {
		t.Fatalf("sync after success: %v, deploy %+v", err, out.Deploy)
	}
	list, _ := f.hist.List(0)
	if len(list) != 2 {
		t.Fatalf("history holds %d deploys, want 2", len(list))
	}
	var de *reconcile.DeployError
	if errors.As(err, &de) {
		t.Fatal(de)
	}

	// Rollback: the previous release, recorded on the nodes, deployed with
	// no build; a second rollback goes back to where the first came from.
	target, err := f.r.RollbackTarget(t.Context(), "")
	if err != nil || target.SHA != first {
		t.Fatalf("rollback target: got %s, %v; want %s", target.SHA, err, first)
	}
	out, err = f.r.SyncTo(t.Context(), "rollback by test", first[:7])
	if err != nil {
		t.Fatalf("rollback: %v\n%s", err, f.log(out.Deploy.ID))
	}
	f.wantCluster(first)
	if got := out.Deploy.Phases[0]; got.Name != "build" || !strings.HasPrefix(got.Outcome, "skipped: the artifact of "+first[:12]+" exists") {
		t.Errorf("the rollback's build phase: %+v, want it skipped", got)
	}
	if out.Deploy.Commit != first || out.Deploy.Trigger != "rollback by test" {
		t.Errorf("the rollback's record: commit %s, trigger %q", out.Deploy.Commit, out.Deploy.Trigger)
	}
	if target, err = f.r.RollbackTarget(t.Context(), ""); err != nil || target.SHA != second {
		t.Errorf("second rollback's target: got %s, %v; want %s", target.SHA, err, second)
	}
	if _, err := f.r.RollbackTarget(t.Context(), "fffffff"); err == nil || !strings.Contains(err.Error(), "no commit fffffff") {
		t.Errorf("rollback to an unknown commit: %v", err)
	}

	// keep_releases 2: a third commit leaves it and the first (the newest
	// two, the first touched by the rollback's switch, and the previous);
	// the second and its index go.
	third, err := f.repo.Commit(t.Context(), "keep two releases", func(work string) error {
		path := filepath.Join(work, "deploy.yaml")
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(path, []byte(strings.Replace(string(b), "keep_releases: 5", "keep_releases: 2", 1)), 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	if out, err = f.sync(); err != nil {
		t.Fatalf("third deploy: %v\n%s", err, f.log(out.Deploy.ID))
	}
	f.wantCluster(third)
	for _, n := range []string{"n1", "n2", "n3"} {
		ls, err := f.bed.Host(n).Sh(t.Context(), "ls "+deployTo+"/releases")
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Fields(string(ls))
		want := []string{first, first + ".index", third, third + ".index"}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s holds releases %q, want %q", n, got, want)
		}
	}
}
