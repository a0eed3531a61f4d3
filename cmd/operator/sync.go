package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/clusterops/operator/history"
	"github.com/clusterops/operator/server"
)

// runSync reconciles the environment now: through the running daemon found
// at `listen` (the API, with OPERATOR_API_TOKEN), or with --once in this
// process, without a daemon, printing each phase as it goes.
func runSync(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newOpFlags("sync", stderr)
	once := f.fs.Bool("once", false, "reconcile in this process, without a daemon, and exit: 0 on success or nothing to do, 1 on failure")
	wait := f.fs.Bool("wait", false, "follow the deploy's progress until it ends; exit 1 if it failed")
	if code := parseFlags(f.fs, args); code >= 0 {
		return code
	}
	cfg, log, err := f.load(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "operator sync: %v\n", err)
		return 2
	}
	if !*once {
		return syncThroughDaemon(ctx, newAPIClient(cfg), *wait, stdout, stderr)
	}
	op, release, code := openHere(cfg, log, "sync", stderr)
	if op == nil {
		return code
	}
	defer release()
	// A lock holds a person's sync too, as it does through the daemon: an
	// incident lock, or a rollback's, means it.
	if lock, err := op.history.LockOf(cfg.Environment); err != nil || lock != nil {
		if err == nil {
			err = fmt.Errorf("locked by %s: %s (operator unlock first)", lock.Who, lock.Reason)
		}
		fmt.Fprintf(stderr, "operator sync: %v\n", err)
		return 1
	}
	op.rec.Progress = func(line string) { fmt.Fprintln(stdout, line) }
	out, err := op.rec.Sync(ctx, "manual by "+currentUser())
	if out != nil && out.Deploy != nil {
		d := out.Deploy
		printDeploy(stdout, d)
		if len(d.Spent) > 0 {
			fmt.Fprintf(stdout, "time went to: %s\n", spent(d))
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "operator sync: %v\n", err)
		return 1
	}
	return 0
}

// runPlan says what a sync would do, changing nothing: it fetches the repo
// and reads the hosts.
func runPlan(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newOpFlags("plan", stderr)
	if code := parseFlags(f.fs, args); code >= 0 {
		return code
	}
	op, code := f.open("plan", stderr)
	if op == nil {
		return code
	}
	defer op.Close()
	plan, err := op.rec.Plan(ctx)
	if plan != nil {
		fmt.Fprint(stdout, plan)
	}
	if err != nil {
		fmt.Fprintf(stderr, "operator plan: %v\n", err)
		return 1
	}
	return 0
}

// spent says where a deploy's time went, largest first, with what is left
// as the operator's own.
func spent(d *history.Deploy) string {
	type kv struct {
		k string
		v time.Duration
	}
	var kvs []kv
	var sum time.Duration
	for k, v := range d.Spent {
		kvs = append(kvs, kv{k, v})
		sum += v
	}
	sort.Slice(kvs, func(i, j int) bool { return kvs[i].v > kvs[j].v })
	var parts []string
	for _, e := range kvs {
		parts = append(parts, fmt.Sprintf("%s %v", e.k, e.v.Round(10*time.Millisecond)))
	}
	if rest := d.Ended.Sub(d.Started) - sum; rest > 0 {
		parts = append(parts, fmt.Sprintf("other %v", rest.Round(10*time.Millisecond)))
	}
	return strings.Join(parts, ", ")
}

func syncThroughDaemon(ctx context.Context, c *apiClient, wait bool, stdout, stderr io.Writer) int {
	var res server.SyncResult
	if _, err := c.do(ctx, http.MethodPost, "/api/sync", nil, &res); err != nil {
		fmt.Fprintf(stderr, "operator sync: %v\n", err)
		if errors.Is(err, errNoDaemon) {
			fmt.Fprintln(stderr, "operator sync: start the daemon (operator run), or deploy without one: operator sync --once")
		}
		return 1
	}
	return answer(ctx, c, "sync", res, wait, stdout, stderr)
}

// answer prints what the daemon did with a sync or rollback request and,
// with wait, follows the deploy until it ends: the exit code is 0 when it
// succeeded or there was nothing to do.
func answer(ctx context.Context, c *apiClient, name string, res server.SyncResult, wait bool, stdout, stderr io.Writer) int {
	id := res.DeployID
	switch res.Status {
	case "started":
		fmt.Fprintf(stdout, "deploy %d started\n", id)
	case "joined":
		fmt.Fprintf(stdout, "deploy %d of the head is already running: following it\n", id)
	case "noop":
		fmt.Fprintf(stdout, "%s\n", res.Note)
		return 0
	case "queued":
		fmt.Fprintf(stdout, "queued behind deploy %d\n", res.Behind)
	default:
		fmt.Fprintf(stderr, "operator %s: refused: %s\n", name, res.Note)
		return 1
	}
	if !wait {
		return 0
	}
	if res.Status == "queued" {
		next, err := c.waitBehind(ctx, res.Behind)
		if err != nil {
			fmt.Fprintf(stderr, "operator %s: %v\n", name, err)
			return 1
		}
		if next == 0 {
			fmt.Fprintln(stdout, "nothing to do after the running deploy")
			return 0
		}
		id = next
		fmt.Fprintf(stdout, "deploy %d started\n", id)
	}
	code, err := c.follow(ctx, id, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "operator %s: %v\n", name, err)
	}
	return code
}

// runLock holds automatic deploys of the environment until unlock; the
// reason shows in status, the API and the page. It survives restarts.
func runLock(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newOpFlags("lock", stderr)
	reason := f.fs.String("reason", "", "why deploys are held (required)")
	if code := parseFlags(f.fs, args); code >= 0 {
		return code
	}
	if strings.TrimSpace(*reason) == "" {
		fmt.Fprintln(stderr, "operator lock: --reason is required")
		return 2
	}
	return lockOrUnlock(ctx, f, stdout, stderr, *reason)
}

// runUnlock releases the lock.
func runUnlock(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newOpFlags("unlock", stderr)
	if code := parseFlags(f.fs, args); code >= 0 {
		return code
	}
	return lockOrUnlock(ctx, f, stdout, stderr, "")
}

// lockOrUnlock goes through the daemon when one runs (so it wakes up at
// once on unlock), or straight to the database.
func lockOrUnlock(ctx context.Context, f *opFlags, stdout, stderr io.Writer, reason string) int {
	name := "unlock"
	if reason != "" {
		name = "lock"
	}
	cfg, _, err := f.load(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "operator %s: %v\n", name, err)
		return 2
	}
	who := currentUser()
	c := newAPIClient(cfg)
	if c.token != "" && c.up(ctx) {
		var err error
		if reason != "" {
			_, err = c.do(ctx, http.MethodPost, "/api/lock", map[string]string{"reason": reason}, nil)
		} else {
			_, err = c.do(ctx, http.MethodDelete, "/api/lock", nil, nil)
		}
		if err != nil {
			fmt.Fprintf(stderr, "operator %s: %v\n", name, err)
			return 1
		}
	} else {
		hist, err := history.Open(cfg.StateDir)
		if err != nil {
			fmt.Fprintf(stderr, "operator %s: %v\n", name, err)
			return 1
		}
		defer hist.Close()
		if reason != "" {
			err = hist.Lock(cfg.Environment, reason, who)
		} else {
			err = hist.Unlock(cfg.Environment)
		}
		if err != nil {
			fmt.Fprintf(stderr, "operator %s: %v\n", name, err)
			return 1
		}
	}
	if reason != "" {
		fmt.Fprintf(stdout, "%s locked: %s\n", cfg.Environment, reason)
	} else {
		fmt.Fprintf(stdout, "%s unlocked\n", cfg.Environment)
	}
	return 0
}
