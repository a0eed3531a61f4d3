package statuses

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-github/v57/github"
)

// run is the sender: it posts one update at a time, oldest queued first,
// and sleeps while nothing is due.
func (r *Reporter) run(ctx context.Context) {
	// Since Go 1.23 a Reset or Stop timer never delivers a stale tick.
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		c, u, wait, stop := r.next()
		if stop {
			return
		}
		if c == nil {
			var due <-chan time.Time
			if wait >= 0 {
				timer.Reset(wait)
				due = timer.C
			}
			select {
			case <-ctx.Done():
				return
			case <-r.wake:
			case <-due:
			}
			continue
		}
		resp, err := r.post(ctx, u)
		if err != nil && ctx.Err() != nil {
			// Closing ran out of time, or the daemon is gone: keep the
			// update so Close logs it as not sent.
			r.mu.Lock()
			c.inflight = false
			r.requeue(c, u)
			r.mu.Unlock()
			return
		}
		r.settle(c, u, resp, err)
	}
}

// next takes the update to post now, or says how long to sleep (-1: until
// woken), or that the sender should stop (closing with nothing left it can
// send in time).
func (r *Reporter) next() (c *commit, u Update, wait time.Duration, stop bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	var soonest time.Time
	queued := false
	for _, k := range r.commits {
		w := k.want
		if w == nil {
			continue
		}
		if k.sent != nil && k.sent.State == w.State && k.sent.Description == w.Description {
			// GitHub shows this already; a repeat only spends the
			// 1,000-status budget.
			r.count(w, -1)
			k.want = nil
			continue
		}
		if !w.final() && k.pendingPosts >= r.o.MaxPendingPosts {
			r.count(w, -1)
			k.want = nil
			continue
		}
		queued = true
		at := k.notBefore
		if !w.final() && !r.closing {
			at = later(at, k.lastPending.Add(r.o.PendingInterval))
		}
		if at.After(now) {
			soonest = earlier(soonest, at)
			continue
		}
		if c == nil || k.seq < c.seq {
			c = k
		}
	}
	if !queued {
		return nil, Update{}, -1, r.closing
	}
	if global := later(r.limitedUntil, r.lastPost.Add(r.o.PostInterval)); global.After(now) {
		// Nothing goes out before global; what is due by then goes then.
		if c != nil {
			soonest = global
		} else {
			soonest = later(soonest, global)
		}
		c = nil
	}
	if c == nil {
		if r.closing && soonest.After(r.deadline) {
			return nil, Update{}, 0, true // Close logs what is left
		}
		return nil, Update{}, soonest.Sub(now), false
	}
	u = *c.want
	r.count(c.want, -1)
	c.want = nil
	c.inflight = true
	r.lastPost = now
	if !u.final() {
		c.lastPending = now
	}
	return c, u, 0, false
}

// post sends u to GitHub.
func (r *Reporter) post(ctx context.Context, u Update) (*github.Response, error) {
	st := &github.RepoStatus{State: github.String(u.State), Context: github.String(r.context)}
	if u.Description != "" {
		st.Description = github.String(u.Description)
	}
	if u.TargetURL != "" {
		st.TargetURL = github.String(u.TargetURL)
	}
	_, resp, err := r.gh.Repositories.CreateStatus(ctx, r.owner, r.repo, u.Commit, st)
	return resp, err
}

// verdict is what to do after a post.
type verdict int

const (
	sent    verdict = iota // GitHub has it
	limited                // rate-limited: wait, then try again
	retry                  // 5xx or network: back off, then try again
	drop                   // refused for good: log it and move on
)

// settle records the outcome of posting u for c.
func (r *Reporter) settle(c *commit, u Update, resp *github.Response, err error) {
	var logs []func()
	defer func() {
		for _, l := range logs {
			l()
		}
	}()
	r.mu.Lock()
	defer r.mu.Unlock()
	c.inflight = false
	now := r.now()
	v, named := judge(resp, err, now)
	log := r.log.With("revision", u.Commit, "state", u.State)
	switch v {
	case sent:
		c.sent, c.attempts, c.notBefore = &u, 0, time.Time{}
		if !u.final() {
			c.pendingPosts++
		}
		r.limitStreak = 0
		logs = append(logs, func() { log.Debug("commit status posted", "description", u.Description) })
	case limited:
		r.limitStreak++
		wait := r.rateLimitWait(named)
		r.limitedUntil = now.Add(wait)
		r.requeue(c, u)
		err := r.errStatus(u, err)
		logs = append(logs, func() { log.Warn("GitHub rate limit: waiting", "wait", wait.Round(time.Millisecond), "err", err) })
	case retry:
		c.attempts++
		attempt := c.attempts
		err := r.errStatus(u, err)
		if attempt >= r.o.MaxAttempts {
			c.attempts = 0
			logs = append(logs, func() { log.Error("commit status dropped: GitHub kept failing", "attempt", attempt, "err", err) })
			return
		}
		wait := r.backoff(attempt)
		c.notBefore = now.Add(wait)
		r.requeue(c, u)
		logs = append(logs, func() {
			log.Warn("commit status not posted: retrying", "attempt", attempt, "wait", wait.Round(time.Millisecond), "err", err)
		})
	case drop:
		err := r.errStatus(u, err)
		logs = append(logs, func() { log.Error("commit status refused by GitHub: dropped", "err", err) })
	}
}

// requeue puts u back as c's waiting update unless a newer one arrived
// while it was in flight: the newest always wins. Must hold r.mu.
func (r *Reporter) requeue(c *commit, u Update) {
	if c.want != nil {
		return
	}
	c.want = &u
	r.count(c.want, +1)
}

// judge classifies a post's outcome. For a rate limit, named is the wait
// GitHub asked for, or -1 when it named none.
func judge(resp *github.Response, err error, now time.Time) (v verdict, named time.Duration) {
	if err == nil {
		return sent, 0
	}
	var accepted *github.AcceptedError
	if errors.As(err, &accepted) {
		return sent, 0
	}
	var rle *github.RateLimitError
	if errors.As(err, &rle) {
		// Also what go-github answers, without a request, while a limit
		// it saw earlier is in force.
		if rle.Rate.Reset.IsZero() {
			return limited, -1
		}
		return limited, max(rle.Rate.Reset.Sub(now), 0)
	}
	var abuse *github.AbuseRateLimitError
	if errors.As(err, &abuse) {
		if abuse.RetryAfter == nil {
			return limited, -1
		}
		return limited, max(*abuse.RetryAfter, 0)
	}
	var er *github.ErrorResponse
	if errors.As(err, &er) && er.Response != nil {
		code := er.Response.StatusCode
		switch {
		case code == http.StatusTooManyRequests:
			// go-github v57 maps only 403 to its rate limit errors.
			d, ok := namedWait(er.Response.Header, now)
			if !ok {
				d = -1
			}
			return limited, d
		case code == http.StatusForbidden:
			if d, ok := namedWait(er.Response.Header, now); ok {
				return limited, d
			}
			if strings.Contains(strings.ToLower(er.Message), "rate limit") {
				return limited, -1
			}
			return drop, 0 // a token without the permission: waiting will not help
		case code >= 500:
			return retry, 0
		default:
			return drop, 0 // 422 (over 1,000 statuses, unknown SHA), 401, 404
		}
	}
	if resp != nil && resp.Response != nil && resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return sent, 0 // GitHub took it; only the answer was unreadable
	}
	return retry, 0 // the network, or a GitHub that did not answer
}

// namedWait is the wait a rate-limited answer's headers ask for:
// Retry-After (seconds or an HTTP date), else until X-RateLimit-Reset when
// X-RateLimit-Remaining is 0.
func namedWait(h http.Header, now time.Time) (time.Duration, bool) {
	if v := strings.TrimSpace(h.Get("Retry-After")); v != "" {
		if secs, err := strconv.ParseInt(v, 10, 64); err == nil && secs >= 0 {
			return time.Duration(secs) * time.Second, true
		}
		if t, err := http.ParseTime(v); err == nil {
			return max(t.Sub(now), 0), true
		}
	}
	if h.Get("X-RateLimit-Remaining") == "0" {
		if secs, err := strconv.ParseInt(h.Get("X-RateLimit-Reset"), 10, 64); err == nil {
			return max(time.Unix(secs, 0).Sub(now), 0), true
		}
	}
	return 0, false
}

// rateLimitWait is how long to hold every post after a rate-limited
// answer: what GitHub named (or MinRateLimitWait), and, while the limit
// persists, at least an exponentially growing multiple of
// MinRateLimitWait. Jitter of up to a tenth (and 100 ms) keeps operators
// sharing a token from coming back in step; it only ever adds, so a named
// wait is honoured in full. Must hold r.mu.
func (r *Reporter) rateLimitWait(named time.Duration) time.Duration {
	d := named
	if d < 0 {
		d = r.o.MinRateLimitWait
	}
	if r.limitStreak > 1 {
		backoff := min(r.o.MinRateLimitWait<<min(r.limitStreak-1, 20), maxRateLimitBackoff)
		d = max(d, backoff)
	}
	return d + rand.N(d/10+100*time.Millisecond)
}

// backoff is the wait before the attempt after the given failed one:
// exponential from RetryMin to RetryMax, with "equal jitter" (half fixed,
// half random) so it never collapses to nothing.
func (r *Reporter) backoff(attempt int) time.Duration {
	d := r.o.RetryMin << min(attempt-1, 30)
	if d <= 0 || d > r.o.RetryMax {
		d = r.o.RetryMax
	}
	return d/2 + rand.N(d/2+1)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// earlier is the earlier of a and b, where a zero a means none yet.
func earlier(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}
