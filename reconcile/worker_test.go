package reconcile_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/clusterops/operator/gitsrc"
	"github.com/clusterops/operator/history"
	"github.com/clusterops/operator/hosts"
	"github.com/clusterops/operator/reconcile"
)

// fakeSource is a repository in memory: each method calls its function,
// and a method without one fails.
type fakeSource struct {
	fetch    func(ctx context.Context) (string, error)
	readFile func(sha, name string) ([]byte, error)
}

var errNotFaked = errors.New("not faked")

func (s *fakeSource) Fetch(ctx context.Context) (string, error) {
	if s.fetch == nil {
		return "", errNotFaked
	}
	return s.fetch(ctx)
}

func (s *fakeSource) Resolve(rev string) (string, error) { return "", errNotFaked }

func (s *fakeSource) Commit(sha string) (gitsrc.Commit, error) {
	return gitsrc.Commit{SHA: sha, Subject: "a commit"}, nil
}

func (s *fakeSource) ReadFile(sha, name string) ([]byte, error) {
	if s.readFile == nil {
		return nil, errNotFaked
	}
	return s.readFile(sha, name)
}

func (s *fakeSource) Fingerprint(sha string, patterns []string) (string, error) {
	return "", errNotFaked
}

func (s *fakeSource) Push(ctx context.Context, to gitsrc.Starter, bareDir, sha string) error {
	return errNotFaked
}

// fakeFleet stands in for the hosts: each method calls its function, and
// a method without one fails.
type fakeFleet struct {
	run    func(ctx context.Context, t hosts.Target, c hosts.Cmd, e hosts.Exec) error
	output func(ctx context.Context, t hosts.Target, c hosts.Cmd) ([]byte, error)
}

func (f *fakeFleet) Run(ctx context.Context, t hosts.Target, c hosts.Cmd, e hosts.Exec) error {
	if f.run == nil {
		return errNotFaked
	}
	return f.run(ctx, t, c, e)
}

func (f *fakeFleet) Output(ctx context.Context, t hosts.Target, c hosts.Cmd) ([]byte, error) {
	if f.output == nil {
		return nil, errNotFaked
	}
	return f.output(ctx, t, c)
}

func (f *fakeFleet) FanOut(ctx context.Context, c hosts.Copy) ([]hosts.CopyResult, error) {
	return nil, errNotFaked
}

const oneNodeManifest = `app: chat
hosts:
  n1: {address: 10.0.0.11, user: deploy, node: chat@10.0.0.11}
build:
  host: n1
  steps:
    - run: mix release --overwrite
  artifact: _build/prod/chat-*.tar.gz
environments:
  production:
    hosts: [n1]
    deploy_to: /srv/chat
release:
  start: bin/chat daemon
  stop: bin/chat stop
  ping: bin/chat pid
cluster:
  members: bin/chat rpc 'Enum.each(Node.list(), &IO.puts/1)'
`

// upToDate is a reconciler of one node that already runs the head, as the
// fakes tell it: every reconcile finds nothing to do.
func upToDate(t *testing.T) *reconcile.Reconciler {
	t.Helper()
	head := strings.Repeat("ab", 20)
	hist, err := history.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hist.Close() })
	src := &fakeSource{
		fetch: func(context.Context) (string, error) { return head, nil },
		readFile: func(sha, name string) ([]byte, error) {
			if name != "deploy.yaml" {
				return nil, fmt.Errorf("no %s", name)
			}
			return []byte(oneNodeManifest), nil
		},
	}
	fleet := &fakeFleet{
		output: func(ctx context.Context, t hosts.Target, c hosts.Cmd) ([]byte, error) {
			if strings.HasPrefix(c.Label, "observe ") { // current, releases, previous and migrated records
				current := "/srv/chat/releases/" + head
				return fmt.Appendf(nil, "%d %s\n%d %s\n--\n-\n-\n", len(current), current, time.Now().Unix(), head), nil
			}
			return nil, nil // no artifact kept for the commit
		},
		run: func(ctx context.Context, t hosts.Target, c hosts.Cmd, e hosts.Exec) error {
			if e.Step != "ping" {
				return fmt.Errorf("unexpected %s command %s", e.Step, c.Redacted())
			}
			return nil // the node answers
		},
	}
	return &reconcile.Reconciler{Env: "production", ManifestPath: "deploy.yaml", Source: src, Fleet: fleet, History: hist}
}

// TestNothingToDoLeavesNoGoroutine reconciles an environment that is up to
// date many times through a running worker: each reconcile finds nothing
// to do, and none may leave a goroutine behind (one did, for as long as
// the worker ran: a daemon polling every minute grew by one a minute).
func TestNothingToDoLeavesNoGoroutine(t *testing.T) {
	w := &reconcile.Worker{R: upToDate(t)}
	ctx, cancel := context.WithCancel(t.Context())
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx, stop)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	reconcileOnce := func() {
		t.Helper()
		tk := w.Enqueue(reconcile.Trigger{Kind: "manual", Detail: "test"})
		select {
		case <-tk.Started():
		case <-time.After(30 * time.Second):
			t.Fatal("the reconcile did not end")
		}
		if res := tk.Result(); !res.Noop {
			t.Fatalf("reconcile: %+v, want nothing to do", res)
		}
		for deadline := time.Now().Add(30 * time.Second); w.Status().Busy || w.Status().Pending > 0; {
			if time.Now().After(deadline) {
				t.Fatal("the worker stays busy")
			}
			time.Sleep(time.Millisecond)
		}
	}
	reconcileOnce() // whatever the first one starts for good (the history's database)
	before := runtime.NumGoroutine()
	const runs = 500
	for range runs {
		reconcileOnce()
	}
	// Goroutines that are ending get a moment; a leak stays.
	var after int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if after = runtime.NumGoroutine(); after <= before+5 || time.Now().After(deadline) {
			break
		}
	}
	if after > before+5 {
		t.Errorf("%d goroutines after %d reconciles with nothing to do, %d before", after, runs, before)
	}
	if list, err := w.R.History.List(0); err != nil || len(list) != 0 {
		t.Errorf("history after reconciles with nothing to do: %v, %v; want no deploy", list, err)
	}
}
