// Package reconcile is the deploy itself: it compares the desired commit (the
// tracked branch's head) with what each node of an environment runs, and
// when they differ builds the release on the build host, stages it on every
// node, migrates once, rolls it out node by node with a cluster-membership
// check after each node, rolls back a node that fails, and prunes old
// releases (PRODUCT.md §3). Hosts are the source of truth: every run starts
// by looking at them, so an operator restarted mid-deploy finishes the job.
package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/clusterops/operator/gitsrc"
	"github.com/clusterops/operator/history"
	"github.com/clusterops/operator/hosts"
)

// Source is the app repository: gitsrc.Mirror satisfies it.
type Source interface {
	// Fetch brings the source up to the tracked branch's head and returns it.
	Fetch(ctx context.Context) (string, error)
	Commit(sha string) (gitsrc.Commit, error)
	ReadFile(sha, name string) ([]byte, error)
	// Fingerprint digests the content of the files of sha that patterns
	// name: a build step's inputs.
	Fingerprint(sha string, patterns []string) (string, error)
	// Push sends sha and the objects the bare repository at bareDir lacks
	// through a session to the build host.
	Push(ctx context.Context, to gitsrc.Starter, bareDir, sha string) error
}

// Fleet runs commands on hosts: hosts.Pool satisfies it.
type Fleet interface {
	Run(ctx context.Context, t hosts.Target, c hosts.Cmd, e hosts.Exec) error
	Output(ctx context.Context, t hosts.Target, c hosts.Cmd) ([]byte, error)
	FanOut(ctx context.Context, c hosts.Copy) ([]hosts.CopyResult, error)
}

// State is a commit status state, as GitHub names them.
type State string

// States of a deploy as reported.
const (
	Pending State = "pending"
	Success State = "success"
	Failure State = "failure"
	Error   State = "error"
)

// Status is one report of a deploy's progress.
type Status struct {
	Env         string
	Commit      string
	DeployID    int64
	State       State
	Description string
}

// Reporter is told of every phase of a deploy (commit statuses). It must
// not block: a slow reporter must never slow a deploy.
type Reporter interface {
	Report(s Status)
}

// Reconciler deploys one environment of one app.
type Reconciler struct {
	// Env is the manifest environment to deploy.
	Env string
	// ManifestPath is the manifest's path in the repo.
	ManifestPath string
	Source       Source
	Fleet        Fleet
	History      *history.Store
	// Reporter may be nil.
	Reporter Reporter
	// HTTP makes health checks; nil means a client with a 5 s timeout.
	HTTP *http.Client
	Log  *slog.Logger
	// Interval is how often waits (ping, membership, health, drain) poll;
	// 0 means 250 ms.
	Interval time.Duration
	// Progress, when set, receives a line per phase and node step, for a
	// person following the deploy.
	Progress func(line string)
}

// Class says what a failed deploy needs, so the status and the retry
// policy follow from where the error arose, never from its text.
type Class int

const (
	// ClassFailure: the commit itself failed (a build step, the migration,
	// a check on a node). Retrying the same commit will not help.
	ClassFailure Class = iota + 1
	// ClassError: the operator could not act (a host unreachable, a host
	// key refused, an invalid manifest).
	ClassError
)

// DeployError is why a deploy did not succeed.
type DeployError struct {
	Class Class
	Phase string // build, stage, migrate, rollout, …
	Host  string // the host where it failed, if any
	Check string // for rollout: ping, membership, health, stop, drain
	Err   error
}

func (e *DeployError) Error() string {
	where := e.Phase
	if e.Host != "" {
		where += " on " + e.Host
	}
	if e.Check != "" {
		where += ": " + e.Check
	}
	return where + ": " + e.Err.Error()
}

func (e *DeployError) Unwrap() error { return e.Err }

// classify wraps err, from phase on host, in a *DeployError of its class.
func classify(phase, host string, err error) error {
	var de *DeployError
	if errors.As(err, &de) {
		return err
	}
	return &DeployError{Class: classOf(err), Phase: phase, Host: host, Err: err}
}

// errCheckTimeout marks a wait that ran out of time: a failed check, not an
// operator problem.
var errCheckTimeout = errors.New("timed out")

// Outcome is what a Sync did.
type Outcome struct {
	Plan *Plan
	// Deploy is the deploy's record; nil when there was nothing to do.
	Deploy *history.Deploy
}

// Sync reconciles the environment once: it looks at the repo and the hosts,
// and deploys the branch head when any node is not running it. It returns
// the outcome and, when the deploy did not succeed, a *DeployError.
func (r *Reconciler) Sync(ctx context.Context, trigger string) (out *Outcome, err error) {
	plan, err := r.Plan(ctx)
	if plan == nil {
		return nil, err
	}
	out = &Outcome{Plan: plan}
	if err == nil && plan.NothingToDo() {
		r.progress("nothing to do: every node of %s runs %s", r.Env, plan.Commit.SHA[:12])
		return out, nil
	}
	rec, berr := r.History.Begin(r.Env, plan.Commit.SHA, plan.Commit.Subject, trigger)
	if berr != nil {
		return out, berr
	}
	run := &run{r: r, plan: plan, rec: rec, started: time.Now()}
	defer func() {
		r.finish(run, err)
		d := rec.Snapshot()
		out.Deploy = &d
	}()
	r.report(run, Pending, "queued")
	if err != nil { // the plan itself failed: bad manifest, unreachable host
		return out, err
	}
	steps := []struct {
		name string
		fn   phase
	}{
		{"build", r.build},
		{"stage", r.stage},
		{"migrate", r.migrate},
		{"rollout", r.rollout},
		{"prune", r.prune},
	}
	for _, s := range steps {
		started := time.Now()
		if err := s.fn(ctx, run); err != nil {
			rec.Phase(s.name, started, "failed: "+err.Error())
			return out, classify(s.name, "", err)
		}
		outcome := "ok"
		if run.phaseNote != "" {
			outcome, run.phaseNote = run.phaseNote, ""
		}
		rec.Phase(s.name, started, outcome)
	}
	return out, nil
}

// phase is one step of a deploy.
type phase func(context.Context, *run) error

// finish is the one place a deploy's outcome is recorded, reported and
// logged.
func (r *Reconciler) finish(run *run, err error) {
	result, state, desc := history.Success, Success, fmt.Sprintf("deployed %s to %d nodes", run.plan.Commit.SHA[:12], len(run.plan.Nodes))
	if err != nil {
		result, state, desc = history.Failure, Failure, err.Error()
		var de *DeployError
		if errors.As(err, &de) && de.Class == ClassError {
			result, state = history.Error, Error
		}
	}
	run.rec.Finish(result, desc)
	r.report(run, state, desc)
	r.progress("%s: %s", result, desc)
	log := r.logger().With("env", r.Env, "revision", run.plan.Commit.SHA, "duration", time.Since(run.started).Round(time.Millisecond))
	if err != nil {
		log.Error("deploy ended", "result", result, "err", err)
	} else {
		log.Info("deploy ended", "result", result)
	}
}

func (r *Reconciler) report(run *run, state State, desc string) {
	if r.Reporter == nil {
		return
	}
	r.Reporter.Report(Status{Env: r.Env, Commit: run.plan.Commit.SHA, DeployID: run.rec.ID(), State: state, Description: desc})
}

func (r *Reconciler) logger() *slog.Logger {
	if r.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Log
}

func (r *Reconciler) progress(format string, args ...any) {
	if r.Progress != nil {
		r.Progress(fmt.Sprintf(format, args...))
	}
}

func (r *Reconciler) interval() time.Duration {
	if r.Interval > 0 {
		return r.Interval
	}
	return 250 * time.Millisecond
}

func (r *Reconciler) httpClient() *http.Client {
	if r.HTTP != nil {
		return r.HTTP
	}
	return &http.Client{Timeout: 5 * time.Second}
}
