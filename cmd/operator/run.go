package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/clusterops/operator/config"
	"github.com/clusterops/operator/gitsrc"
	"github.com/clusterops/operator/history"
	"github.com/clusterops/operator/metrics"
	"github.com/clusterops/operator/pages"
	"github.com/clusterops/operator/reconcile"
	"github.com/clusterops/operator/server"
	"github.com/clusterops/operator/statuses"
)

// runDaemon is `operator run`: it polls the repo, serves the webhook, the
// API and the metrics, and deploys with one worker for the environment.
// SIGTERM or SIGINT stop it: triggers are refused, the deploy in progress
// stops at its next safe point (the node being updated finishes or is
// rolled back first), bounded by --shutdown-grace.
func runDaemon(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newOpFlags("run", stderr)
	grace := f.fs.Duration("shutdown-grace", 3*time.Minute, "how long a stop waits for the node being updated")
	if code := parseFlags(f.fs, args); code >= 0 {
		return code
	}
	cfg, log, err := f.load(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "operator run: %v\n", err)
		return 2
	}
	secrets := config.SecretsFromEnv()
	op, err := wire(cfg, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	defer op.Close()
	release, err := op.lockEnv()
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	defer release()
	switch {
	case secrets.GitHubToken == "":
		log.Warn("GITHUB_TOKEN is not set: commit statuses are off")
	case cfg.GitHub.Repository == "":
		log.Warn("commit statuses are off: set github.repository (owner/name); it is derived only from GitHub repo URLs")
	default:
		rep, err := statuses.New(statuses.Options{
			APIURL: cfg.GitHub.APIURL, Token: secrets.GitHubToken, Repository: cfg.GitHub.Repository,
			Context: cfg.GitHub.StatusContext, Log: log,
		})
		if err != nil {
			log.Error("cannot start", "err", err)
			return 1
		}
		rep.Start(context.WithoutCancel(ctx))
		defer rep.Close()
		op.rec.Reporter = &statusReporter{rep: rep, publicURL: cfg.PublicURL}
	}

	worker := &reconcile.Worker{R: op.rec, Locks: op.history, Log: log}
	m := metrics.New(func() float64 { return float64(worker.Status().Pending) })
	worker.OnDeploy = m.DeployEnded

	var hook http.Handler
	switch {
	case secrets.WebhookSecret == "":
		log.Warn("OPERATOR_WEBHOOK_SECRET is not set: the webhook route is off")
	case cfg.GitHub.Repository == "":
		log.Warn("the webhook route is off: set github.repository (owner/name) to say which repository's pushes count")
	default:
		wh, err := gitsrc.NewWebhook(gitsrc.WebhookOptions{
			Secret: []byte(secrets.WebhookSecret), Repository: cfg.GitHub.Repository, Branch: cfg.Branch,
			OnPush: func(p gitsrc.Push) {
				worker.Enqueue(reconcile.Trigger{Kind: "webhook", Detail: p.Delivery, Commit: p.After})
			},
			OnOutcome: m.Webhook, Log: log,
		})
		if err != nil {
			log.Error("cannot start", "err", err)
			return 1
		}
		hook = wh
	}
	if secrets.APIToken == "" {
		log.Warn("OPERATOR_API_TOKEN is not set: the API (operator sync, lock, …) is off")
	}
	// The repository as every line and page shows it: a token in its URL
	// is for git alone.
	repo := gitsrc.RedactURL(cfg.Repo)
	web := pages.New(pages.Options{
		History: op.history, Env: cfg.Environment, Repo: repo, Branch: cfg.Branch, PublicURL: cfg.PublicURL, Log: log,
		Status: func() pages.Status {
			st := worker.Status()
			return pages.Status{Running: (*pages.RunningDeploy)(st.Running), Pending: st.Pending, Lock: st.Lock, Failed: st.Failed}
		},
	})
	handler := server.New(server.Options{
		Controller: &controller{w: worker, hist: op.history, env: cfg.Environment, branch: cfg.Branch, head: op.mirror.RemoteHead},
		History:    op.history, APIToken: secrets.APIToken,
		Webhook: hook, Metrics: m.Handler(), Pages: web, Log: log,
	})
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	// Requests see base end when the daemon stops, so live log streams let
	// go at once instead of holding the shutdown.
	base, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	httpSrv := server.HTTPServer(base, handler, server.Limits{})
	go httpSrv.Serve(ln)
	log.Info("operator running", "env", cfg.Environment, "listen", ln.Addr().String(), "repo", repo, "branch", cfg.Branch)

	var poller *gitsrc.Poller
	if *cfg.Poll != "" {
		poller = &gitsrc.Poller{Mirror: op.mirror, Spec: *cfg.Poll, Log: log, OnError: func(error) { m.PollError() },
			OnHead: func(head string) { worker.Enqueue(reconcile.Trigger{Kind: "poll", Commit: head}) }}
		if err := poller.Start(); err != nil {
			log.Error("cannot start", "err", err)
			return 1
		}
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	hard, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		worker.Run(hard, stop)
		close(done)
	}()
	// Whatever the hosts say at start is reconciled: a deploy interrupted by
	// a restart is finished.
	worker.Enqueue(reconcile.Trigger{Kind: "start"})

	select {
	case <-sigs:
	case <-ctx.Done():
	case <-done:
	}
	log.Info("stopping: no new triggers; the deploy in progress stops at its next safe point", "grace", *grace)
	if poller != nil {
		poller.Stop()
	}
	// The worker refuses triggers from now on; the HTTP side stays up until
	// the deploy in progress has stopped, so that its page, its live log and
	// a `sync --wait` following it see how it ended.
	close(stop)
	select {
	case <-done:
	case <-time.After(*grace):
		log.Error("the deploy in progress did not stop within the grace period; cancelling it")
		cancel()
		<-done
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	cancelBase()
	httpSrv.Shutdown(sctx)
	scancel()
	log.Info("stopped")
	return 0
}

// controller adapts the worker to what the HTTP server asks of it.
type controller struct {
	w    *reconcile.Worker
	hist *history.Store
	env  string
	// branch is the tracked branch, named in a rollback's lock.
	branch string
	// head asks the remote for the branch head, so a person's sync joins a
	// running deploy only when that deploy is of the head.
	head func(context.Context) (string, error)
}

func (c *controller) Sync(ctx context.Context, who string) server.SyncResult {
	head, _ := c.head(ctx)
	tk := c.w.Enqueue(reconcile.Trigger{Kind: "manual", Detail: "by " + who, Commit: head})
	return c.answer(ctx, tk)
}

func (c *controller) Rollback(ctx context.Context, to, who string) server.SyncResult {
	target, err := c.w.R.RollbackTarget(ctx, to)
	if err != nil {
		return server.SyncResult{Status: "refused", Note: err.Error()}
	}
	locked, err := lockForRollback(c.hist, c.env, c.branch, target, who)
	if err != nil {
		return server.SyncResult{Status: "refused", Note: err.Error()}
	}
	tk := c.w.Enqueue(reconcile.Trigger{Kind: "rollback", Detail: "by " + who, Commit: target.SHA, Target: target.SHA})
	res := c.answer(ctx, tk)
	res.Locked = locked
	return res
}

// answer waits until the trigger's deploy starts (or ctx ends) and says
// what became of it.
func (c *controller) answer(ctx context.Context, tk *reconcile.Ticket) server.SyncResult {
	select {
	case <-tk.Started():
	case <-ctx.Done():
		res := server.SyncResult{Status: "queued"}
		if st := c.w.Status(); st.Running != nil {
			res.Behind = st.Running.ID
		}
		return res
	}
	r := tk.Result()
	switch {
	case r.DeployID > 0 && r.Joined:
		return server.SyncResult{Status: "joined", DeployID: r.DeployID}
	case r.DeployID > 0:
		return server.SyncResult{Status: "started", DeployID: r.DeployID}
	case r.Noop:
		return server.SyncResult{Status: "noop", Note: r.Note}
	}
	return server.SyncResult{Status: "refused", Note: r.Note}
}

func (c *controller) Status() any { return c.w.Status() }

func (c *controller) Lock(reason, who string) error { return c.hist.Lock(c.env, reason, who) }

// Unlock releases the lock. The triggers it held run now; when none were
// held (after a rollback, say) a reconcile is enqueued, so that unlocking
// resumes deploying the branch at once rather than at the next poll.
func (c *controller) Unlock(who string) error {
	if err := c.hist.Unlock(c.env); err != nil {
		return err
	}
	if c.w.Status().Pending > 0 {
		c.w.Nudge()
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	head, _ := c.head(ctx)
	c.w.Enqueue(reconcile.Trigger{Kind: "unlock", Detail: "by " + who, Commit: head})
	return nil
}

// statusReporter turns the deploy's reports into commit statuses whose link
// is the deploy's page.
type statusReporter struct {
	rep       *statuses.Reporter
	publicURL string
}

func (s *statusReporter) Report(st reconcile.Status) {
	target := s.publicURL + "/"
	if st.DeployID > 0 {
		target = fmt.Sprintf("%s/deploys/%d", s.publicURL, st.DeployID)
	}
	s.rep.Report(statuses.Update{Commit: st.Commit, State: string(st.State), Description: st.Description, TargetURL: target, Deploy: st.DeployID})
}
