package reconcile_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clusterops/operator/history"
	"github.com/clusterops/operator/hosts"
	"github.com/clusterops/operator/reconcile"
	"github.com/clusterops/operator/testbed"
)

// newPostgresFixture is newFixture keeping the example's database, which
// the fixture itself does not hold.
func newPostgresFixture(t *testing.T) (*fixture, *testbed.Postgres) {
	t.Helper()
	src, _ := filepath.Abs("../examples/cluster-app")
	bed := testbed.Start(t, testbed.ExampleHosts...)
	start := time.Now()
	ex, err := testbed.NewExample(t.Context(), bed, src, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("example ready in %v", time.Since(start).Round(time.Millisecond))
	if ex.DB == nil {
		t.Fatal("the example manifest names no DATABASE_URL: no database was started")
	}
	f := &fixture{t: t, bed: bed, repo: ex.Repo, nodes: ex.Nodes, state: t.TempDir()}
	f.pool, f.hist, f.r, err = newOperator(ex.Repo.Bare, f.state, bed.ClientKey, bed.KnownHosts, t.Output(), func(line string) { t.Log("progress: " + line) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.pool.Close() })
	return f, ex.DB
}

// dbHealth is what a node's /health says of the database.
type dbHealth struct {
	status int
	body   string
	DB     *struct {
		Version  int64  `json:"version"`
		Messages int    `json:"messages"`
		Error    string `json:"error"`
	} `json:"db"`
}

func (f *fixture) dbHealth(node string) (dbHealth, error) {
	var h dbHealth
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + f.bed.Host(node).Addr.String() + ":4000/health")
	if err != nil {
		return h, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	h.status, h.body = resp.StatusCode, string(b)
	if err != nil {
		return h, err
	}
	return h, json.Unmarshal(b, &h)
}

func (f *fixture) query(pg *testbed.Postgres, sql string) string {
	f.t.Helper()
	out, err := pg.Query(f.t.Context(), sql)
	if err != nil {
		f.t.Fatal(err)
	}
	return out
}

// wantDBVersion checks every node's /health reads version from the database.
func (f *fixture) wantDBVersion(version int64) {
	f.t.Helper()
	for _, n := range f.nodes {
		h, err := f.dbHealth(n)
		if err != nil {
			f.t.Errorf("%s /health: %v", n, err)
			continue
		}
		if h.status != 200 || h.DB == nil || h.DB.Version != version || h.DB.Error != "" {
			f.t.Errorf("%s /health: %d %s, want 200 with db version %d", n, h.status, h.body, version)
		}
	}
}

func addMigration(name, sql string) func(string) error {
	return func(work string) error {
		return os.WriteFile(filepath.Join(work, "priv/repo/migrations", name), []byte(sql), 0o644)
	}
}

func TestPostgresMigratedByDeploys(t *testing.T) {
	f, pg := newPostgresFixture(t)
	ctx := t.Context()
	rec := &recorder{}
	f.r.Reporter = rec
	u, err := url.Parse(pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	password, _ := u.User.Password()

	// The first deploy creates the schema the app's first migration holds.
	first := f.mustDeploy()
	f.wantCluster(first)
	if got := f.query(pg, "SELECT version FROM schema_migrations ORDER BY version"); got != "20250101000000" {
		t.Errorf("schema_migrations after the first deploy: %q", got)
	}
	if got := f.query(pg, "SELECT count(*) FROM messages"); got != "0" {
		t.Errorf("messages: %q, want an empty table", got)
	}
	f.wantDBVersion(20250101000000)

	// A commit with a migration altering the table: applied once, by the
	// deploy that ships it.
	second, err := f.repo.Commit(ctx, "messages get a node", addMigration("20250102000000_add_node_to_messages.sql",
		"ALTER TABLE messages ADD COLUMN node text;\n"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := f.sync()
	if err != nil {
		t.Fatalf("deploy of the new migration: %v\n%s", err, f.log(out.Deploy.ID))
	}
	t.Logf("the migration took %v", out.Deploy.Spent["migrate"])
	f.wantCluster(second)
	if got := f.query(pg, "SELECT column_name FROM information_schema.columns WHERE table_name = 'messages' AND column_name = 'node'"); got != "node" {
		t.Errorf("messages has no column node after the deploy (got %q)", got)
	}
	if got := f.query(pg, "SELECT version FROM schema_migrations ORDER BY version"); got != "20250101000000\n20250102000000" {
		t.Errorf("schema_migrations after the second deploy: %q", got)
	}
	if log := f.log(out.Deploy.ID); !strings.Contains(log, "applied 20250102000000_add_node_to_messages") || strings.Contains(log, "applied 20250101000000") {
		t.Errorf("the deploy's log does not say it applied exactly the new migration:\n%s", log)
	}
	f.wantDBVersion(20250102000000)

	// A migration whose second statement fails: the deploy fails before any
	// node is switched, and its transaction leaves nothing behind, not even
	// the table its first statement made.
	pids := map[string]string{}
	for _, n := range f.nodes {
		pids[n] = f.beamPID(n)
	}
	bad, err := f.repo.Commit(ctx, "a migration that fails halfway", addMigration("20250103000000_audit.sql",
		"CREATE TABLE audit (id bigserial PRIMARY KEY, what text);\nINSERT INTO missing_table VALUES (1);\n"))
	if err != nil {
		t.Fatal(err)
	}
	out, err = f.sync()
	de := deployError(t, err)
	if de.Phase != "migrate" || de.Class != reconcile.ClassFailure || de.Host != "n1" {
		t.Fatalf("got %v, want a migrate failure on n1", de)
	}
	if !strings.Contains(de.Error(), `relation "missing_table" does not exist`) {
		t.Errorf("the error does not say what failed: %v", de)
	}
	if out.Deploy.Result != history.Failure {
		t.Errorf("result %s, want failure", out.Deploy.Result)
	}
	states := rec.states(bad)
	if len(states) == 0 || !strings.HasPrefix(states[len(states)-1], "failure ") {
		t.Errorf("statuses of the failed commit: %q, want a failure last", states)
	}
	for _, n := range out.Deploy.Nodes {
		if n.Outcome != "untouched" {
			t.Errorf("node result %+v, want untouched", n)
		}
	}
	f.wantSwitchedNothing(second, pids)
	if got := f.query(pg, "SELECT to_regclass('audit') IS NULL"); got != "t" {
		t.Errorf("the failed migration's table audit exists: its transaction was not rolled back")
	}
	if got := f.query(pg, "SELECT version FROM schema_migrations ORDER BY version"); got != "20250101000000\n20250102000000" {
		t.Errorf("schema_migrations after the failed deploy: %q, want the failed version not recorded", got)
	}
	f.wantDBVersion(20250102000000)
	for id := int64(1); id <= out.Deploy.ID; id++ {
		if strings.Contains(f.log(id), password) {
			t.Errorf("deploy %d's log holds the database password", id)
		}
	}

	// The database going away makes the nodes unhealthy.
	if err := pg.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	h, err := f.dbHealth("n1")
	if err == nil && h.status == 200 {
		t.Errorf("n1 /health with the database down: %d %s, want a failure", h.status, h.body)
	}
	if strings.Contains(h.body, password) {
		t.Errorf("n1 /health shows the database password: %s", h.body)
	}
	t.Logf("n1 /health with the database down: %v, %d %s", err, h.status, h.body)
	// Nor does any file on the nodes hold it: the nodes' logs, which now
	// hold the failed health checks' reports, included.
	for _, n := range f.nodes {
		out, err := f.bed.Host(n).Sh(ctx, "grep -rIlF -e "+hosts.Quote(password)+" "+deployTo+" || true")
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(out) != "" {
			t.Errorf("%s has the database password in %s", n, out)
		}
	}
}
