package reconcile_test

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clusterops/operator/history"
	"github.com/clusterops/operator/reconcile"
	"github.com/clusterops/operator/testbed"
	"github.com/clusterops/operator/testbed/traffic"
)

// userLoad is what the end-to-end tests put through HAProxy while they
// deploy: browsers' requests (a connection each, and keep-alive), requests
// the app takes 2 s to answer, and WebSocket clients with a broadcast every
// 100 ms.
type userLoad struct {
	users, slow *traffic.Load
}

func startUserLoad(t *testing.T, f *fixture, websockets int) *userLoad {
	t.Helper()
	base := "http://" + f.bed.Host("lb").Addr.String() + ":80"
	l := &userLoad{
		users: &traffic.Load{BaseURL: base, NewConnClients: 3, KeepAliveClients: 3, Paths: []string{"/health", "/"}, WSClients: websockets},
		// Back to back, two a node, so that a node about to drain has one in
		// flight.
		slow: &traffic.Load{BaseURL: base, KeepAliveClients: 6, Paths: []string{"/slow?ms=2000"}, Pause: 10 * time.Millisecond},
	}
	for _, load := range []*traffic.Load{l.users, l.slow} {
		if err := load.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { load.Stop() })
	}
	if err := l.users.WaitConnected(t.Context()); err != nil {
		t.Fatal(err)
	}
	return l
}

// stop ends the load and fails the test for every request that failed and
// every WebSocket client left without a connection.
func (l *userLoad) stop(t *testing.T, during string) *traffic.Report {
	t.Helper()
	users, slow := l.users.Stop(), l.slow.Stop()
	t.Logf("traffic during %s:\n%s\nslow requests:\n%s", during, users, slow)
	for _, s := range []struct {
		kind  string
		stats traffic.HTTPStats
	}{{"new-connection", users.NewConn}, {"keep-alive", users.KeepAlive}, {"slow (2 s)", slow.KeepAlive}} {
		if s.stats.Sent == 0 {
			t.Errorf("%s: no %s request was sent", during, s.kind)
		}
		if s.stats.Failed != 0 {
			t.Errorf("%s: %d of %d %s requests failed: %+v", during, s.stats.Failed, s.stats.Sent, s.kind, s.stats.Samples)
		}
	}
	if users.WS.NotReconnected != 0 || users.WS.NeverConnected != 0 {
		t.Errorf("%s: %d WebSocket clients dropped and never connected again, %d never connected", during, users.WS.NotReconnected, users.WS.NeverConnected)
	}
	return users
}

var drainedLine = regexp.MustCompile(`drained in \S+: (\d+) requests in flight answered; (\d+) upgraded connections`)

// TestRolloutAndRollbackUnderTraffic deploys a one-line change, then a
// commit that fails on the first node and is rolled back, each while users
// load the cluster through HAProxy: not one request fails, the drains wait
// for the slow requests in flight (which are answered) and not for the
// WebSockets, whose clients land on the other nodes and are back.
func TestRolloutAndRollbackUnderTraffic(t *testing.T) {
	f := newFixture(t)
	f.mustDeploy()
	ctx := t.Context()

	next, err := f.repo.Commit(ctx, "one line", testbed.AppendLine("lib/chat.ex", "# one line"))
	if err != nil {
		t.Fatal(err)
	}
	load := startUserLoad(t, f, 30)
	out, err := f.sync()
	if err != nil {
		t.Fatal(err)
	}
	users := load.stop(t, "a rolling deploy")
	f.wantCluster(next)
	if users.WS.Drops == 0 {
		t.Error("no WebSocket client was dropped by three restarts: were they connected to the nodes?")
	}
	log := f.log(out.Deploy.ID)
	if strings.Contains(log, "drain: ") && strings.Contains(log, "going on") {
		t.Errorf("a drain ran into its timeout:\n%s", log)
	}
	drains := drainedLine.FindAllStringSubmatch(log, -1)
	if len(drains) != len(f.nodes) {
		t.Fatalf("%d drained lines for %d nodes in the log:\n%s", len(drains), len(f.nodes), log)
	}
	waited, upgraded := 0, 0
	for _, m := range drains {
		w, _ := strconv.Atoi(m[1])
		u, _ := strconv.Atoi(m[2])
		waited += w
		upgraded += u
	}
	if waited == 0 {
		t.Error("no drain had a slow request in flight to wait for")
	}
	if upgraded == 0 {
		t.Error("no drain saw a WebSocket on its node")
	}

	_, err = f.repo.Commit(ctx, "wrong cookie", testbed.AppendLine("rel/env.sh.eex", "export RELEASE_COOKIE=not-the-cluster-cookie"))
	if err != nil {
		t.Fatal(err)
	}
	load = startUserLoad(t, f, 30)
	out, err = f.sync()
	de := deployError(t, err)
	load.stop(t, "a rollback")
	if de.Class != reconcile.ClassFailure || de.Host != "n1" {
		t.Fatalf("got %v, want a failure on n1", de)
	}
	if out.Deploy.Result != history.Failure {
		t.Errorf("result %s, want failure", out.Deploy.Result)
	}
	f.wantCluster(next)
}
