package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/clusterops/operator/history"
)

// Trigger is a request to reconcile: a poll tick that saw the head move, a
// push webhook, or a person.
type Trigger struct {
	// Kind is "poll", "webhook", "manual", "rollback", "unlock" or
	// "retry".
	Kind string
	// Detail says more: the webhook delivery ID, who asked.
	Detail string
	// Commit is the head the trigger saw, when it knows it; a commit passed
	// over by coalescing gets its pending status resolved.
	Commit string
	// Target, for a rollback, is the commit to deploy instead of the head.
	Target string
}

func (t Trigger) manual() bool { return t.Kind == "manual" }

func (t Trigger) rollback() bool { return t.Kind == "rollback" }

// String is the trigger as the deploy history records it.
func (t Trigger) String() string {
	if t.Detail == "" {
		return t.Kind
	}
	return t.Kind + " " + t.Detail
}

// Ticket tells the one who asked for a reconcile what became of it.
type Ticket struct {
	done chan struct{}
	res  TicketResult
}

// TicketResult is how a trigger was answered.
type TicketResult struct {
	// DeployID is the deploy that ran for it; 0 when none did.
	DeployID int64
	// Joined is true when the trigger was served by a deploy that had
	// already started (or was about to) for the same head.
	Joined bool
	// Noop is true when every node already ran the head.
	Noop bool
	// Note says why no deploy ran: nothing to do, locked, head failed, …
	Note string
}

// Started returns a channel closed once the trigger's reconcile has started
// a deploy, or found nothing to do, or was refused.
func (t *Ticket) Started() <-chan struct{} { return t.done }

// Result is valid once Started is closed.
func (t *Ticket) Result() TicketResult { return t.res }

func (t *Ticket) resolve(res TicketResult) {
	select {
	case <-t.done:
	default:
		t.res = res
		close(t.done)
	}
}

// LockSource says whether the environment is locked (operator lock).
type LockSource interface {
	LockOf(env string) (*history.Lock, error)
}

// Worker reconciles one environment, one deploy at a time. Triggers only
// enqueue: those arriving while a deploy runs coalesce into one next run,
// which deploys the newest head. A commit whose deploy failed is not retried
// by polls or webhooks, only by a new commit or a person; an operator-side
// error (a host unreachable) is retried with backoff.
type Worker struct {
	R     *Reconciler
	Locks LockSource
	Log   *slog.Logger
	// Backoff bounds the retry delays after operator-side errors; zero
	// values mean 30 s doubling to 10 min.
	BackoffMin, BackoffMax time.Duration
	// OnDeploy, when set, is called after each deploy with its record.
	OnDeploy func(d *history.Deploy)

	mu        sync.Mutex
	pending   []Trigger
	tickets   []*Ticket
	wake      chan struct{}
	running   *history.Deploy // snapshot of the deploy in progress
	runCommit string
	busy      bool   // serving triggers: planning, deploying, or deciding not to
	failed    string // commit whose deploy failed; not retried automatically
	backoff   time.Duration
	retryAt   time.Time
	stopped   bool
}

// WorkerStatus is what the worker is doing, for the API and the page.
type WorkerStatus struct {
	Running *RunningDeploy `json:"running,omitempty"`
	// Pending is the number of triggers waiting (they coalesce into one
	// run).
	Pending int `json:"pending"`
	// Busy is true while the worker serves triggers, from before a deploy
	// starts until after it ends: idle is !Busy and Pending == 0.
	Busy bool          `json:"busy"`
	Lock *history.Lock `json:"lock,omitempty"`
	// Failed is the commit whose deploy failed and that is not retried
	// until a new commit or a person asks.
	Failed  string    `json:"failed,omitempty"`
	RetryAt time.Time `json:"retry_at,omitzero"`
}

// RunningDeploy is the deploy in progress.
type RunningDeploy struct {
	ID     int64  `json:"id"`
	Commit string `json:"commit"`
}

func (w *Worker) init() {
	if w.wake == nil {
		w.wake = make(chan struct{}, 1)
	}
}

// Enqueue asks for a reconcile. It never blocks and never runs a deploy.
func (w *Worker) Enqueue(t Trigger) *Ticket {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.init()
	tk := &Ticket{done: make(chan struct{})}
	if w.stopped {
		tk.resolve(TicketResult{Note: "the operator is stopping"})
		return tk
	}
	// A person asking for the commit already being deployed joins it.
	if t.manual() && w.running != nil && t.Commit != "" && t.Commit == w.runCommit && len(w.pending) == 0 {
		tk.resolve(TicketResult{DeployID: w.running.ID, Joined: true})
		return tk
	}
	w.pending = append(w.pending, t)
	w.tickets = append(w.tickets, tk)
	if t.Commit != "" && t.Commit != w.runCommit && w.R.Reporter != nil {
		w.R.Reporter.Report(Status{Env: w.R.Env, Commit: t.Commit, State: Pending, Description: "queued"})
	}
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return tk
}

// Status says what the worker is doing.
func (w *Worker) Status() WorkerStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := WorkerStatus{Pending: len(w.pending), Busy: w.busy, Failed: w.failed, RetryAt: w.retryAt}
	if w.running != nil {
		s.Running = &RunningDeploy{ID: w.running.ID, Commit: w.runCommit}
	}
	if w.Locks != nil {
		s.Lock, _ = w.Locks.LockOf(w.R.Env)
	}
	return s
}

// Nudge wakes the worker to look at its queue again, after an unlock.
func (w *Worker) Nudge() {
	w.mu.Lock()
	w.init()
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Run serves triggers until ctx ends. When stop is closed it stops taking
// triggers, asks the deploy in progress to stop at its next safe point,
// waits for it, and returns.
func (w *Worker) Run(ctx context.Context, stop <-chan struct{}) {
	w.mu.Lock()
	w.init()
	if last, err := w.R.History.List(1); err == nil && len(last) > 0 && (last[0].Result == history.Failure || last[0].Result == history.Error) {
		w.failed = last[0].Commit // survive a restart: do not retry it by itself
	}
	w.mu.Unlock()
	for {
		var retry <-chan time.Time
		w.mu.Lock()
		if !w.retryAt.IsZero() {
			retry = time.After(time.Until(w.retryAt))
		}
		w.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-stop:
			w.shutdown()
			return
		case <-retry:
			w.mu.Lock()
			w.retryAt = time.Time{}
			w.mu.Unlock()
			w.Enqueue(Trigger{Kind: "retry"})
			continue
		case <-w.wake:
		}
		w.serve(ctx, stop)
	}
}

func (w *Worker) shutdown() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	for _, tk := range w.tickets {
		tk.resolve(TicketResult{Note: "the operator is stopping"})
	}
	w.pending, w.tickets = nil, nil
}

// serve takes every pending trigger as one run.
func (w *Worker) serve(ctx context.Context, stop <-chan struct{}) {
	w.mu.Lock()
	triggers, tickets := w.pending, w.tickets
	w.pending, w.tickets = nil, nil
	w.busy = len(triggers) > 0
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.busy = false
		w.mu.Unlock()
	}()
	if len(triggers) == 0 {
		return
	}
	// A rollback is served on its own: the triggers beside it wait for the
	// next round (where the lock the rollback set holds them).
	var target string
	if i := lastRollback(triggers); i >= 0 {
		target = triggers[i].Target
		var restT []Trigger
		var restK []*Ticket
		triggers, tickets, restT, restK = split(triggers, tickets, Trigger.rollback)
		if len(restT) > 0 {
			w.requeue(restT, restK)
			defer w.Nudge()
		}
	}
	resolve := func(res TicketResult) {
		for _, tk := range tickets {
			tk.resolve(res)
		}
	}
	manual := false
	for _, t := range triggers {
		manual = manual || t.manual() || t.rollback()
	}
	trigger := triggers[len(triggers)-1]
	for _, t := range triggers {
		if t.manual() || t.rollback() {
			trigger = t // a person's name goes on the record
		}
	}
	log := w.logger().With("env", w.R.Env)

	if w.Locks != nil && target == "" {
		if lock, err := w.Locks.LockOf(w.R.Env); err == nil && lock != nil {
			// A person is told no at once; automatic triggers wait for the
			// unlock.
			note := fmt.Sprintf("locked by %s: %s (operator unlock first)", lock.Who, lock.Reason)
			_, refused, heldT, heldK := split(triggers, tickets, Trigger.manual)
			for _, tk := range refused {
				tk.resolve(TicketResult{Note: note})
			}
			if len(heldT) > 0 {
				log.Info("deploy held: environment locked", "reason", lock.Reason)
			}
			w.requeue(heldT, heldK)
			return
		}
	}

	plan, perr := w.R.PlanAt(ctx, target)
	if plan == nil {
		log.Error("reconcile: cannot read the repo", "err", perr)
		resolve(TicketResult{Note: perr.Error()})
		w.scheduleRetry()
		return
	}
	head := plan.Commit.SHA
	w.mu.Lock()
	failed := w.failed
	w.mu.Unlock()
	if head == failed && !manual && perr == nil && !plan.NothingToDo() {
		note := fmt.Sprintf("%s failed before; waiting for a new commit or operator sync", short(head))
		log.Info("deploy skipped", "revision", head, "reason", note)
		resolve(TicketResult{Note: note})
		w.resolvePassedOver(triggers, head)
		return
	}

	w.mu.Lock()
	w.runCommit = head
	w.mu.Unlock()
	// The tickets learn the deploy's ID as soon as it exists (resolving
	// never blocks): nothing is left waiting for a deploy that a run with
	// nothing to do never begins.
	onBegin := func(rec *history.Recorder) {
		w.mu.Lock()
		d := rec.Snapshot()
		w.running = &d
		w.mu.Unlock()
		resolve(TicketResult{DeployID: rec.ID()})
	}
	stopWatch := make(chan struct{})
	go func() {
		select {
		case <-stop:
			w.R.StopSoon()
		case <-stopWatch:
		}
	}()
	out, err := w.R.deploy(ctx, trigger.String(), plan, perr, onBegin)
	close(stopWatch)
	w.resolvePassedOver(triggers, head)

	w.mu.Lock()
	w.running, w.runCommit = nil, ""
	switch {
	case err == nil:
		w.failed, w.backoff = "", 0
	case retryable(err):
		w.mu.Unlock()
		w.scheduleRetry()
		w.mu.Lock()
	default:
		w.failed, w.backoff = head, 0
	}
	w.mu.Unlock()
	if out == nil || out.Deploy == nil {
		if err != nil {
			resolve(TicketResult{Note: err.Error()})
		} else {
			resolve(TicketResult{Noop: true, Note: "nothing to do: every node runs " + short(head)})
		}
		return
	}
	resolve(TicketResult{DeployID: out.Deploy.ID})
	if w.OnDeploy != nil {
		w.OnDeploy(out.Deploy)
	}
}

// split parts triggers and their tickets into those keep holds for and
// the others, each in their order.
func split(ts []Trigger, ks []*Ticket, keep func(Trigger) bool) (inT []Trigger, inK []*Ticket, outT []Trigger, outK []*Ticket) {
	for i, t := range ts {
		if keep(t) {
			inT, inK = append(inT, t), append(inK, ks[i])
		} else {
			outT, outK = append(outT, t), append(outK, ks[i])
		}
	}
	return inT, inK, outT, outK
}

// requeue puts triggers and their tickets back at the front of the queue,
// for the next round.
func (w *Worker) requeue(ts []Trigger, ks []*Ticket) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending = append(ts, w.pending...)
	w.tickets = append(ks, w.tickets...)
}

// lastRollback is the index of the last rollback among triggers, or -1.
func lastRollback(triggers []Trigger) int {
	for i := len(triggers) - 1; i >= 0; i-- {
		if triggers[i].rollback() {
			return i
		}
	}
	return -1
}

// resolvePassedOver resolves the pending statuses of commits that triggers
// named but that were not deployed: a newer head superseded them.
func (w *Worker) resolvePassedOver(triggers []Trigger, head string) {
	if w.R.Reporter == nil {
		return
	}
	seen := map[string]bool{head: true}
	for _, t := range triggers {
		if t.Commit == "" || seen[t.Commit] {
			continue
		}
		seen[t.Commit] = true
		w.R.Reporter.Report(Status{Env: w.R.Env, Commit: t.Commit, State: Error, Description: "not deployed: superseded by " + short(head)})
	}
}

// retryable reports whether a deploy's error may go away by itself: a host
// unreachable may come back, a bad manifest or a failed check will not.
func retryable(err error) bool {
	var de *DeployError
	if !errors.As(err, &de) {
		return true
	}
	return de.Class == ClassError && de.Phase != "manifest" && !errors.Is(err, ErrStopping)
}

func (w *Worker) scheduleRetry() {
	w.mu.Lock()
	defer w.mu.Unlock()
	lo, hi := w.BackoffMin, w.BackoffMax
	if lo <= 0 {
		lo = 30 * time.Second
	}
	if hi <= 0 {
		hi = 10 * time.Minute
	}
	if w.backoff == 0 {
		w.backoff = lo
	} else {
		w.backoff = min(2*w.backoff, hi)
	}
	w.retryAt = time.Now().Add(w.backoff)
	w.logger().Info("reconcile will be retried", "env", w.R.Env, "attempt_in", w.backoff)
}

func (w *Worker) logger() *slog.Logger {
	if w.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return w.Log
}
