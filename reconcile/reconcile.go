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
	"sync/atomic"
	"time"

	"github.com/clusterops/operator/gitsrc"
	"github.com/clusterops/operator/history"
	"github.com/clusterops/operator/hosts"
)

// Source is the app repository: gitsrc.Mirror satisfies it.
type Source interface {
	// Fetch brings the source up to the tracked branch's head and returns it.
	Fetch(ctx context.Context) (string, error)
	// Resolve turns a commit SHA or a prefix of one into the full SHA.
	Resolve(rev string) (string, error)
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
	// Interval is the pause between two tries of a wait (ping, membership,
	// health, drain). 0 means paced by the check itself: half as long as
	// its last try took, from 20 ms to 1 s. Every node restart waits on
	// these, so a coarse pause adds to every deploy; a check that boots a
	// VM on the node (bin/<app> pid or rpc, about 0.2 s) is tried about
	// every 0.1 s, one that costs milliseconds (erl_call) every 20 ms, and
	// neither takes more than two thirds of the node's time.
	Interval time.Duration
	// Progress, when set, receives a line per phase and node step, for a
	// person following the deploy.
	Progress func(line string)

	stopping atomic.Bool
}

// StopSoon asks a running Sync to stop at the next safe point: before its
// next phase, or before the next node of the rollout. The node being
// updated finishes (or is rolled back) first, so no node is left stopped.
// The deploy ends with an error saying the operator stopped.
func (r *Reconciler) StopSoon() { r.stopping.Store(true) }

// ErrStopping is why a deploy ended when the operator was asked to stop.
var ErrStopping = errors.New("the operator is stopping; the next run finishes the deploy")

func (r *Reconciler) checkStop() error {
	if r.stopping.Load() {
		return ErrStopping
	}
	return nil
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
func (r *Reconciler) Sync(ctx context.Context, trigger string) (*Outcome, error) {
	return r.SyncTo(ctx, trigger, "")
}

// SyncTo is Sync with the desired commit named: rev, a commit SHA or a
// prefix of one, instead of the branch head ("" means the head). `operator
// rollback` deploys through it; a commit whose artifact is kept on the build
// host is not rebuilt.
func (r *Reconciler) SyncTo(ctx context.Context, trigger, rev string) (*Outcome, error) {
	plan, err := r.PlanAt(ctx, rev)
	if plan == nil {
		return nil, err
	}
	return r.deploy(ctx, trigger, plan, err, nil)
}

// deploy carries out plan (found with planErr); onBegin, when set, learns
// the deploy's record as soon as it exists.
func (r *Reconciler) deploy(ctx context.Context, trigger string, plan *Plan, planErr error, onBegin func(*history.Recorder)) (out *Outcome, err error) {
	out = &Outcome{Plan: plan}
	if planErr == nil && plan.NothingToDo() {
		r.progress("nothing to do: every node of %s runs %s", r.Env, short(plan.Commit.SHA))
		return out, nil
	}
	rec, err := r.History.Begin(r.Env, plan.Commit.SHA, plan.Commit.Subject, trigger)
	if err != nil {
		return out, err
	}
	if onBegin != nil {
		onBegin(rec)
	}
	run := &run{r: r, plan: plan, rec: rec, started: time.Now()}
	// The build and the stage, which switch no node, share build.timeout:
	// the stage's sessions open while the build steps run.
	var prep context.Context
	var endPrep context.CancelFunc
	if planErr == nil {
		prep, endPrep = within(ctx, plan.Manifest.Build.Timeout, "build.timeout", true)
	} else {
		prep, endPrep = context.WithCancel(ctx) // no phase runs
	}
	defer func() {
		run.closeSessions()
		endPrep()
		r.undrain(ctx, run)
		run.bg.Wait()
		r.finish(run, err)
		d := rec.Snapshot()
		out.Deploy = &d
	}()
	r.report(run, Pending, "queued")
	if planErr != nil { // the plan itself failed: bad manifest, unreachable host
		return out, planErr
	}
	steps := []struct {
		name string
		fn   phase
		ctx  context.Context
	}{
		{"build", r.build, prep},
		{"stage", r.stage, prep},
		{"migrate", r.migrate, ctx},
		{"rollout", r.rollout, ctx},
		{"prune", r.prune, ctx},
	}
	for _, s := range steps {
		if err := r.checkStop(); err != nil {
			return out, &DeployError{Class: ClassError, Phase: s.name, Err: err}
		}
		started := time.Now()
		if err := s.fn(s.ctx, run); err != nil {
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
		if errors.Is(err, ErrStopping) {
			// Not the commit's fault, and not over: the next run goes on.
			result, state = history.Interrupted, Pending
		}
	}
	run.rec.Finish(result, desc)
	r.report(run, state, desc)
	run.progress("%s: %s", result, desc)
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

// progress tells a person following the deploy, and writes the line to the
// deploy's log as stream "progress", which `operator sync --wait` follows.
func (run *run) progress(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	run.rec.Line("", "progress", line)
	if run.r.Progress != nil {
		run.r.Progress(line)
	}
}

// pause is how long to wait before trying again a check whose last try
// took took (see Interval).
func (r *Reconciler) pause(took time.Duration) time.Duration {
	if r.Interval > 0 {
		return r.Interval
	}
	return min(max(took/2, 20*time.Millisecond), time.Second)
}

func (r *Reconciler) httpClient() *http.Client {
	if r.HTTP != nil {
		return r.HTTP
	}
	return &http.Client{Timeout: 5 * time.Second}
}
