package main

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/clusterops/operator/gitsrc"
	"github.com/clusterops/operator/history"
	"github.com/clusterops/operator/server"
)

// runRollback deploys an earlier release: the one the nodes ran before
// their current one, or the commit --to names. Its artifact is normally
// still on the build host and its release on the nodes, so it costs no
// build and little staging; the rollout is the usual one, node by node with
// every check.
//
// A rollback locks the environment first: otherwise the next poll or push
// would deploy the branch head again and undo it. `operator unlock` resumes
// deploying the branch. A lock already in place (an incident) is kept as
// it is.
func runRollback(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newOpFlags("rollback", stderr)
	to := f.fs.String("to", "", "the commit to roll back to: a SHA or a prefix of 7 or more hex digits (default: the release each node ran before its current one, as recorded on the first node)")
	if code := parseFlags(f.fs, args); code >= 0 {
		return code
	}
	cfg, log, err := f.load(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "operator rollback: %v\n", err)
		return 2
	}
	if c := newAPIClient(cfg); c.token != "" && c.up(ctx) {
		return rollbackThroughDaemon(ctx, c, *to, stdout, stderr)
	}
	op, release, code := openHere(cfg, log, "rollback", stderr)
	if op == nil {
		return code
	}
	defer release()
	target, err := op.rec.RollbackTarget(ctx, *to)
	if err != nil {
		fmt.Fprintf(stderr, "operator rollback: %v\n", err)
		return 1
	}
	who := currentUser()
	note, err := lockForRollback(op.history, cfg.Environment, cfg.Branch, target, who)
	if err != nil {
		fmt.Fprintf(stderr, "operator rollback: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, note)
	op.rec.Progress = func(line string) { fmt.Fprintln(stdout, line) }
	out, err := op.rec.SyncTo(ctx, "rollback by "+who, target.SHA)
	if out != nil && out.Deploy != nil {
		printDeploy(stdout, out.Deploy)
	}
	if err != nil {
		fmt.Fprintf(stderr, "operator rollback: %v\n", err)
		return 1
	}
	return 0
}

// lockForRollback locks env so that automatic deploys do not undo a
// rollback to target, unless it is locked already, and says which.
func lockForRollback(h *history.Store, env, branch string, target gitsrc.Commit, who string) (string, error) {
	lock, err := h.LockOf(env)
	if err != nil {
		return "", err
	}
	if lock != nil {
		return fmt.Sprintf("%s stays locked by %s: %s", env, lock.Who, lock.Reason), nil
	}
	reason := fmt.Sprintf("rolled back to %s by %s; operator unlock resumes deploying %s", short(target.SHA), who, branch)
	if err := h.Lock(env, reason, who); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s locked: %s", env, reason), nil
}

func rollbackThroughDaemon(ctx context.Context, c *apiClient, to string, stdout, stderr io.Writer) int {
	var res server.SyncResult
	if _, err := c.do(ctx, http.MethodPost, "/api/rollback", map[string]string{"to": to}, &res); err != nil {
		fmt.Fprintf(stderr, "operator rollback: %v\n", err)
		return 1
	}
	if res.Locked != "" {
		fmt.Fprintln(stdout, res.Locked)
	}
	return answer(ctx, c, "rollback", res, true, stdout, stderr)
}
