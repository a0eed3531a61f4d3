package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/clusterops/operator/history"
)

// runSync reconciles the environment now. With --once it deploys in this
// process, without a daemon, printing each phase as it goes.
func runSync(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newOpFlags("sync", stderr)
	once := f.fs.Bool("once", false, "reconcile in this process, without a daemon, and exit: 0 on success or nothing to do, 1 on failure")
	if code := parseFlags(f.fs, args); code >= 0 {
		return code
	}
	if !*once {
		fmt.Fprintln(stderr, "operator sync: only --once is available in this version: the daemon (operator run) it would talk to is not there yet")
		return 2
	}
	cfg, log, err := f.load(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "operator sync: %v\n", err)
		return 2
	}
	op, err := wire(cfg, log)
	if err != nil {
		fmt.Fprintf(stderr, "operator sync: %v\n", err)
		return 1
	}
	defer op.Close()
	release, err := op.lockEnv()
	if err != nil {
		fmt.Fprintf(stderr, "operator sync: %v\n", err)
		return 1
	}
	defer release()
	op.rec.Progress = func(line string) { fmt.Fprintln(stdout, line) }
	out, err := op.rec.Sync(ctx, "manual")
	if out != nil && out.Deploy != nil {
		d := out.Deploy
		fmt.Fprintf(stdout, "deploy %d: %s in %v (log: operator logs %d)\n", d.ID, d.Result, d.Ended.Sub(d.Started).Round(100*time.Millisecond), d.ID)
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
	cfg, log, err := f.load(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "operator plan: %v\n", err)
		return 2
	}
	op, err := wire(cfg, log)
	if err != nil {
		fmt.Fprintf(stderr, "operator plan: %v\n", err)
		return 1
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
