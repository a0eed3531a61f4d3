package gitsrc

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/robfig/cron/v3"
)

// Poller asks the remote for the tracked branch's head on a cron schedule
// and reports when it moved. A tick costs one ls-remote: nothing is fetched
// until the head moves, and the fetch happens in the deploy, not here.
type Poller struct {
	// Mirror is the repository polled.
	Mirror *Mirror
	// Spec is a robfig/cron spec ("@every 1m", "*/5 * * * *").
	Spec string
	// OnHead receives the head when it differs from the last one seen
	// (always, on the first tick). It must not block: it enqueues.
	OnHead func(head string)
	// OnError, when set, learns of each tick that failed after its retries.
	OnError func(err error)
	// Timeout bounds one ls-remote; 0 means 30 s.
	Timeout time.Duration
	// Retries is how many times a failed ls-remote is tried again within a
	// tick, after a jittered pause; 0 means 2.
	Retries int
	Log     *slog.Logger

	mu   sync.Mutex
	last string
	cron *cron.Cron
}

// Start begins polling. A tick that is still running when the next is due
// makes the next one skip (a slow remote never piles up ls-remotes). Stop
// ends it.
func (p *Poller) Start() error {
	log := p.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	parser := cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)
	c := cron.New(cron.WithParser(parser), cron.WithChain(cron.SkipIfStillRunning(cron.DiscardLogger)))
	if _, err := c.AddFunc(p.Spec, func() { p.Tick(context.Background()) }); err != nil {
		return fmt.Errorf("gitsrc: poll %q: %w", p.Spec, err)
	}
	p.cron = c
	c.Start()
	log.Info("polling", "spec", p.Spec, "branch", p.Mirror.Branch())
	return nil
}

// Stop ends polling and waits for a running tick.
func (p *Poller) Stop() {
	if p.cron != nil {
		<-p.cron.Stop().Done()
	}
}

// Tick polls once: an ls-remote with a bounded timeout, tried again after a
// jittered pause when it fails, and OnHead when the head moved.
func (p *Poller) Tick(ctx context.Context) {
	timeout, retries := p.Timeout, p.Retries
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	if retries <= 0 {
		retries = 2
	}
	var head string
	var err error
	for attempt := 0; attempt <= retries; attempt++ {
		if attempt > 0 {
			pause := time.Duration(500+rand.IntN(1500)) * time.Millisecond * time.Duration(attempt)
			select {
			case <-ctx.Done():
				return
			case <-time.After(pause):
			}
		}
		tctx, cancel := context.WithTimeout(ctx, timeout)
		head, err = p.Mirror.RemoteHead(tctx)
		cancel()
		if err == nil {
			break
		}
		if p.Log != nil {
			p.Log.Warn("poll failed", "attempt", attempt+1, "err", err)
		}
	}
	if err != nil {
		if p.OnError != nil {
			p.OnError(err)
		}
		return
	}
	p.mu.Lock()
	moved := head != p.last
	p.last = head
	p.mu.Unlock()
	if moved && p.OnHead != nil {
		p.OnHead(head)
	}
}
