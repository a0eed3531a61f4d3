package reconcile

import (
	"context"
	"fmt"
	"time"

	"github.com/clusterops/operator/manifests"
)

// Every remote command of a deploy runs under a context whose deadline comes
// from the manifest or from the constants here, so that no hung host,
// command or socket holds a deploy, or the daemon's shutdown, for longer
// than rollout.timeout for the node being updated plus its rollback's own
// bounded time (PRODUCT.md §10). SSH keepalives see a host that is gone;
// these deadlines see a command that never returns on a host that answers.
//
//   - The plan: fetching the repo within fetchTimeout; then, per node, what
//     it runs (current, releases, records) and its ping within
//     rollout.timeout; the artifact's lookup on the build host within
//     rollout.timeout; HAProxy's server states within lbTimeout. A plan
//     that runs out of time is the operator's error, retried with backoff.
//   - The build and the stage together: build.timeout, from the push to the
//     release unpacked on every node. The migration: build.timeout of its
//     own. A step, an unpack or a migration cut by it fails the deploy.
//   - A node's update: its drain first (each HAProxy command within
//     lbTimeout, the wait for the requests in flight within
//     loadbalancer.drain_timeout, its last listing cut there), then
//     rollout.timeout from its stop to its checks passed and back in
//     HAProxy; within it the ping wait within rollout.timeout, the
//     membership wait within cluster.settle, the health wait within
//     rollout.timeout, each try cut at its wait's end. A check cut by them
//     fails the node.
//   - A node's rollback, or its recovery from a stop that failed:
//     rollout.timeout again, under context.WithoutCancel, so that a cancelled
//     deploy (the daemon stopping) still puts the node back; stopping the
//     failed release takes at most half of it, so that the previous release
//     always has the other half to start and pass its checks.
//   - Pruning: rollout.timeout a node. The checkout's index refresh beside
//     the rollout: rollout.timeout.
//
// A command cut by its deadline ends within hosts.Config.StopGrace (TERM,
// then KILL) and a second or two more.
const (
	// fetchTimeout bounds the fetch of the tracked branch's head, before
	// there is a manifest to take a bound from: a fetch brings only the
	// objects the mirror lacks.
	fetchTimeout = 5 * time.Minute
	// lbTimeout bounds one HAProxy runtime API command: HAProxy answers at
	// once, socat gives up 5 s after sending (-t 5), and the rest is the
	// SSH round trip.
	lbTimeout = 10 * time.Second
)

// timeoutError is the cause of a context whose deadline one of the bounds
// above set, so that what the deadline cut says which bound ran out. It
// counts as context.DeadlineExceeded, and, for a check's bound, as
// errCheckTimeout: a check that ran out of time is the commit's failure,
// while a plan that ran out of time is the operator's error.
type timeoutError struct {
	what  string // the bound, as the manifest names it
	limit time.Duration
	check bool
}

func (e *timeoutError) Error() string {
	return fmt.Sprintf("%s (%v) ran out", e.what, e.limit)
}

func (e *timeoutError) Is(target error) bool {
	return target == context.DeadlineExceeded || e.check && target == errCheckTimeout
}

// within returns ctx bounded to limit from now, its cause naming what.
func within(ctx context.Context, limit time.Duration, what string, check bool) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(ctx, limit, &timeoutError{what: what, limit: limit, check: check})
}

// rollbackContext is the context a node is put back under: a bound of its
// own (rollout.timeout), and not cancelled with ctx, since a deploy
// cancelled mid-node must still leave the node running.
func rollbackContext(ctx context.Context, m *manifests.Manifest) (context.Context, context.CancelFunc) {
	return within(context.WithoutCancel(ctx), m.Rollout.Timeout, "the rollback's rollout.timeout", true)
}

// cutBy reports whether err, from a try run under bounded, a context made
// from ctx with a deadline, is that deadline's doing: bounded ended while
// ctx goes on.
func cutBy(err error, ctx, bounded context.Context) bool {
	return err != nil && bounded.Err() != nil && ctx.Err() == nil
}
