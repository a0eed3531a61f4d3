package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/clusterops/operator/gitsrc"
	"github.com/clusterops/operator/history"
	"github.com/clusterops/operator/server"
)

// runStatus shows the desired commit, what each node runs, and the last
// deploy.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newOpFlags("status", stderr)
	if code := parseFlags(f.fs, args); code >= 0 {
		return code
	}
	op, code := f.open("status", stderr)
	if op == nil {
		return code
	}
	defer op.Close()
	cfg := op.cfg
	plan, perr := op.rec.Plan(ctx)
	code = 0
	fmt.Fprintf(stdout, "environment %s, branch %s of %s\n", cfg.Environment, cfg.Branch, gitsrc.RedactURL(cfg.Repo))
	if plan != nil {
		fmt.Fprintf(stdout, "desired  %s %s\n", short(plan.Commit.SHA), plan.Commit.Subject)
		w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		for _, n := range plan.Nodes {
			state := "stopped"
			if n.Running {
				state = "running"
			}
			mark := "behind"
			if n.Current == plan.Commit.SHA && n.Running {
				mark = "up to date"
			}
			fmt.Fprintf(w, "node %s\t%s\t%s\t%s\t%s\n", n.Name(), n.Host.Address, orDash(short(n.Current)), state, mark)
		}
		w.Flush()
	}
	if perr != nil {
		fmt.Fprintf(stderr, "operator status: %v\n", perr)
		code = 1
	}
	if lock, err := op.history.LockOf(cfg.Environment); err == nil && lock != nil {
		fmt.Fprintf(stdout, "LOCKED by %s since %s: %s (operator unlock releases it)\n", lock.Who, lock.Since.Local().Format("2006-01-02 15:04"), lock.Reason)
	}
	if last, err := op.history.List(1); err == nil && len(last) > 0 {
		d := last[0]
		fmt.Fprintf(stdout, "last deploy %d: %s of %s, %s, %s\n", d.ID, d.Result, short(d.Commit), ago(d.Started), d.Description)
	} else {
		fmt.Fprintln(stdout, "no deploy yet")
	}
	return code
}

// runHistory lists the deploys, newest first.
func runHistory(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newOpFlags("history", stderr)
	limit := f.fs.Int("n", 20, "show at most `n` deploys")
	if code := parseFlags(f.fs, args); code >= 0 {
		return code
	}
	cfg, _, err := f.load(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "operator history: %v\n", err)
		return 2
	}
	// Through the daemon when one runs; straight from the database when not.
	var list []*history.Deploy
	if c := newAPIClient(cfg); c.token != "" && c.up(ctx) {
		_, err = c.do(ctx, http.MethodGet, fmt.Sprintf("/api/deploys?limit=%d", *limit), nil, &list)
	} else {
		var hist *history.Store
		if hist, err = history.Open(cfg.StateDir); err == nil {
			defer hist.Close()
			list, err = hist.List(*limit)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "operator history: %v\n", err)
		return 1
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tSTARTED\tDURATION\tENV\tCOMMIT\tTRIGGER\tRESULT\tDESCRIPTION")
	for _, d := range list {
		dur := "-"
		if !d.Ended.IsZero() {
			dur = d.Ended.Sub(d.Started).Round(100 * time.Millisecond).String()
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.Started.Local().Format("2006-01-02 15:04:05"), dur, d.Env, short(d.Commit), d.Trigger, d.Result, firstLine(d.Description))
	}
	w.Flush()
	return 0
}

// runLogs prints one deploy's log.
func runLogs(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newOpFlags("logs", stderr)
	if err := f.fs.Parse(args); err != nil {
		return 2
	}
	if f.fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: operator logs [flags] ID")
		return 2
	}
	id, err := strconv.ParseInt(f.fs.Arg(0), 10, 64)
	if err != nil {
		fmt.Fprintf(stderr, "operator logs: %q is not a deploy ID\n", f.fs.Arg(0))
		return 2
	}
	cfg, _, err := f.load(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "operator logs: %v\n", err)
		return 2
	}
	if c := newAPIClient(cfg); c.token != "" && c.up(ctx) {
		var after int64
		for {
			var page server.LogPage
			if _, err := c.do(ctx, http.MethodGet, fmt.Sprintf("/api/deploys/%d/log?after=%d", id, after), nil, &page); err != nil {
				fmt.Fprintf(stderr, "operator logs: %v\n", err)
				return 1
			}
			for _, l := range page.Lines {
				host := l.Host
				if host == "" {
					host = "-"
				}
				fmt.Fprintf(stdout, "%s %s %s %s\n", l.Time.UTC().Format("15:04:05.000"), host, l.Stream, l.Text)
			}
			if len(page.Lines) == 0 {
				return 0
			}
			after = page.Next
		}
	}
	hist, err := history.Open(cfg.StateDir)
	if err != nil {
		fmt.Fprintf(stderr, "operator logs: %v\n", err)
		return 1
	}
	defer hist.Close()
	rc, err := hist.Log(id)
	if err != nil {
		fmt.Fprintf(stderr, "operator logs: %v\n", err)
		return 1
	}
	defer rc.Close()
	io.Copy(stdout, rc)
	return 0
}

func short(sha string) string {
	if len(sha) > 12 {
		return sha[:12]
	}
	return sha
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func firstLine(s string) string {
	for i, r := range s {
		if r == '\n' {
			return s[:i] + " …"
		}
	}
	return s
}

func ago(t time.Time) string {
	return time.Since(t).Round(time.Second).String() + " ago"
}
