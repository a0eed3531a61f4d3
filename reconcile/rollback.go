package reconcile

import (
	"context"
	"fmt"

	"github.com/clusterops/operator/gitsrc"
)

// RollbackTarget is the commit `operator rollback` deploys: rev resolved
// in the repo when a person names one (--to), otherwise the release the
// first node of the environment ran before its current one, as recorded on
// that node at its last switch. Hosts are the source of truth, so a second
// rollback without --to goes back to where the first one came from.
func (r *Reconciler) RollbackTarget(ctx context.Context, rev string) (gitsrc.Commit, error) {
	if rev != "" {
		fctx, cancel := within(ctx, fetchTimeout, "the fetch's time", false)
		_, err := r.Source.Fetch(fctx)
		cancel()
		if err != nil {
			return gitsrc.Commit{}, err
		}
		sha, err := r.Source.Resolve(rev)
		if err != nil {
			return gitsrc.Commit{}, err
		}
		return r.Source.Commit(sha)
	}
	plan, err := r.Plan(ctx)
	if err != nil {
		return gitsrc.Commit{}, fmt.Errorf("find the release to roll back to (or name it with --to SHA): %w", err)
	}
	first := plan.Nodes[0]
	if first.Previous == "" {
		return gitsrc.Commit{}, fmt.Errorf("%s has no previous release recorded (it was never switched from one): name the commit with --to SHA", first.Name())
	}
	c, err := r.Source.Commit(first.Previous)
	if err != nil {
		return gitsrc.Commit{}, fmt.Errorf("%s's previous release %s: %w", first.Name(), short(first.Previous), err)
	}
	return c, nil
}
