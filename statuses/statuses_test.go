package statuses

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-github/v57/github"

	"github.com/clusterops/operator/statuses/githubtest"
)

const token = "ghp_TESTtoken0123456789abcdefSECRETvalue"

func sha(n int) string { return fmt.Sprintf("%040x", n) }

// logBuffer collects slog output from the sender goroutine and the test.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type fixture struct {
	gh   *githubtest.Server
	r    *Reporter
	logs *logBuffer
}

// start makes a stand-in and a started reporter with short waits; edit
// changes the options first.
func start(t *testing.T, cfg githubtest.Config, edit func(*Options)) *fixture {
	t.Helper()
	if cfg.Token == "" {
		cfg.Token = token
	}
	gh := githubtest.New(t, cfg)
	logs := &logBuffer{}
	o := Options{
		APIURL: gh.URL(), Token: token, Repository: "acme/chat", Context: "deploy/production",
		Log:              slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		MinRateLimitWait: 200 * time.Millisecond,
		PendingInterval:  50 * time.Millisecond,
		PostInterval:     time.Millisecond,
		RetryMin:         20 * time.Millisecond,
		RetryMax:         200 * time.Millisecond,
		FlushTimeout:     5 * time.Second,
	}
	if edit != nil {
		edit(&o)
	}
	r, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	r.Start(t.Context())
	t.Cleanup(r.Close)
	return &fixture{gh: gh, r: r, logs: logs}
}

// await waits for the newest status of commit to be state.
func (f *fixture) await(t *testing.T, commit, state string) githubtest.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	st, err := f.gh.Await(ctx, commit, state)
	if err != nil {
		t.Fatalf("%v; log:\n%s", err, f.logs)
	}
	return st
}

// inflight waits until the sender has a post for commit on the wire.
func (f *fixture) inflight(t *testing.T, commit string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		f.r.mu.Lock()
		c := f.r.commits[commit]
		busy := c != nil && c.inflight
		f.r.mu.Unlock()
		if busy {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("no post for %s went out", commit)
}

func pending(commit, desc string) Update {
	return Update{Commit: commit, State: Pending, Description: desc, TargetURL: "https://deploy.acme.test/deploys/7"}
}

func final(commit, state, desc string) Update {
	return Update{Commit: commit, State: state, Description: desc, TargetURL: "https://deploy.acme.test/deploys/7"}
}

func withDeploy(u Update, id int64) Update {
	u.Deploy = id
	return u
}

func rollout(commit string, nodes int) []Update {
	us := []Update{pending(commit, "queued"), pending(commit, "building"), pending(commit, "staging"), pending(commit, "migrating")}
	for i := 1; i <= nodes; i++ {
		us = append(us, pending(commit, fmt.Sprintf("rolling out %d/%d", i, nodes)))
	}
	return us
}

// TestDeploy reports a deploy's updates at a deploy's pace and checks that
// GitHub receives them in order, within the budget, ending with the final.
func TestDeploy(t *testing.T) {
	c := sha(1)
	tests := []struct {
		name     string
		updates  []Update
		gap      time.Duration // between two reports
		interval time.Duration // Options.PendingInterval
		all      bool          // every update must arrive
	}{
		{
			name:     "success, every phase shown",
			updates:  append(rollout(c, 3), final(c, Success, "deployed 0000000000000001 to 3 nodes")),
			gap:      100 * time.Millisecond,
			interval: time.Millisecond,
			all:      true,
		},
		{
			name:     "success, phases faster than the pending interval",
			updates:  append(rollout(c, 3), final(c, Success, "deployed 0000000000000001 to 3 nodes")),
			gap:      20 * time.Millisecond,
			interval: 50 * time.Millisecond,
		},
		{
			name:     "failure",
			updates:  []Update{pending(c, "queued"), pending(c, "building"), final(c, Failure, "build on build: step 2 (npm ci) exited 1")},
			gap:      20 * time.Millisecond,
			interval: 50 * time.Millisecond,
		},
		{
			name:     "error before any host is touched",
			updates:  []Update{pending(c, "queued"), final(c, Error, "deploy.yaml:12: build.artifact: required")},
			interval: 50 * time.Millisecond,
		},
		{
			name:     "a hundred nodes stay within 20 posts",
			updates:  append(rollout(c, 100), final(c, Success, "deployed 0000000000000001 to 100 nodes")),
			gap:      10 * time.Millisecond,
			interval: 40 * time.Millisecond,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := start(t, githubtest.Config{}, func(o *Options) { o.PendingInterval = tt.interval })
			for _, u := range tt.updates {
				f.r.Report(u)
				time.Sleep(tt.gap)
			}
			last := tt.updates[len(tt.updates)-1]
			f.await(t, c, last.State)
			f.r.Close()

			got := f.gh.Statuses(c)
			if len(got) > 20 {
				t.Errorf("%d posts, want at most 20", len(got))
			}
			// In order: each post is a later report than the one before.
			idx := -1
			for _, st := range got {
				i := indexOf(tt.updates, st.Description, idx+1)
				if i < 0 {
					t.Fatalf("post %q (%s) is not a later report than #%d; got %v", st.Description, st.State, idx, describe(got))
				}
				if st.State != tt.updates[i].State || st.Context != "deploy/production" || st.TargetURL != tt.updates[i].TargetURL {
					t.Errorf("post %d: got %+v, want %+v", i, st, tt.updates[i])
				}
				idx = i
			}
			if end := got[len(got)-1]; end.State != last.State || end.Description != last.Description {
				t.Errorf("last post %s %q, want %s %q", end.State, end.Description, last.State, last.Description)
			}
			if tt.all && len(got) != len(tt.updates) {
				t.Errorf("got %d posts %v, want all %d", len(got), describe(got), len(tt.updates))
			}
		})
	}
}

func indexOf(us []Update, desc string, from int) int {
	for i := from; i < len(us); i++ {
		if us[i].Description == desc {
			return i
		}
	}
	return -1
}

func describe(sts []githubtest.Status) []string {
	var d []string
	for _, s := range sts {
		d = append(d, s.State+" "+s.Description)
	}
	return d
}

// TestPassedOver follows reconcile.Worker: a commit passed over by a newer
// head gets error "not deployed: superseded by <sha>", and a late pending
// for it (a trigger that raced) never covers that.
func TestPassedOver(t *testing.T) {
	a, b := sha(0xa), sha(0xb)
	f := start(t, githubtest.Config{}, nil)
	f.r.Report(pending(a, "queued"))
	f.r.Report(pending(b, "queued"))
	f.await(t, a, Pending)
	for _, u := range rollout(b, 2)[1:] {
		f.r.Report(u)
	}
	f.r.Report(final(b, Success, "deployed 000000000000 to 2 nodes"))
	f.r.Report(final(a, Error, "not deployed: superseded by 00000000000b"))
	f.await(t, a, Error)
	f.r.Report(pending(a, "queued")) // stale: after the final
	f.await(t, b, Success)
	f.r.Close()

	if diff := cmp.Diff([]string{"pending queued", "error not deployed: superseded by 00000000000b"}, describe(f.gh.Statuses(a))); diff != "" {
		t.Errorf("passed-over commit (-want +got):\n%s", diff)
	}
	if got := f.gh.Statuses(b); got[len(got)-1].State != Success {
		t.Errorf("deployed commit: %v", describe(got))
	}
}

// TestCoalescing holds GitHub so that updates queue behind one in flight,
// which makes the coalescing rules observable without timing.
func TestCoalescing(t *testing.T) {
	c := sha(0xc)
	tests := []struct {
		name    string
		updates []Update // the first goes on the wire, the rest queue behind it
		want    []string
	}{
		{"newest pending wins", []Update{pending(c, "queued"), pending(c, "building"), pending(c, "staging")},
			[]string{"pending queued", "pending staging"}},
		{"final replaces a queued pending", []Update{pending(c, "queued"), pending(c, "building"), final(c, Success, "deployed")},
			[]string{"pending queued", "success deployed"}},
		{"pending after a queued final is dropped", []Update{pending(c, "queued"), final(c, Failure, "build failed"), pending(c, "rolling out 1/3")},
			[]string{"pending queued", "failure build failed"}},
		{"pending after a sent final is dropped", []Update{final(c, Error, "superseded"), pending(c, "queued")},
			[]string{"error superseded"}},
		{"newer final replaces an older queued final", []Update{pending(c, "queued"), final(c, Failure, "health check failed"), final(c, Error, "host lon unreachable")},
			[]string{"pending queued", "error host lon unreachable"}},
		{"pending of a newer deploy after a sent final starts over", []Update{withDeploy(final(c, Success, "deployed"), 3), withDeploy(pending(c, "building"), 4)},
			[]string{"success deployed", "pending building"}},
		{"pending of the same deploy after its final is dropped", []Update{withDeploy(final(c, Success, "deployed"), 4), withDeploy(pending(c, "rolling out 3/3"), 4)},
			[]string{"success deployed"}},
		{"queued pending, no deploy yet, after a final is dropped", []Update{withDeploy(final(c, Success, "deployed"), 4), pending(c, "queued")},
			[]string{"success deployed"}},
		{"identical update posted once", []Update{pending(c, "building"), pending(c, "building")},
			[]string{"pending building"}},
		{"back to what was sent posts nothing", []Update{pending(c, "building"), pending(c, "staging"), pending(c, "building")},
			[]string{"pending building"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := start(t, githubtest.Config{}, nil)
			release := f.gh.Hold()
			f.r.Report(tt.updates[0])
			f.inflight(t, c)
			for _, u := range tt.updates[1:] {
				f.r.Report(u)
			}
			release()
			f.r.Close()
			if diff := cmp.Diff(tt.want, describe(f.gh.Statuses(c))); diff != "" {
				t.Errorf("posted (-want +got):\n%s", diff)
			}
		})
	}
}

// TestDuplicates: the same state and description, reported again later, is
// posted once (Flux does the same).
func TestDuplicates(t *testing.T) {
	c := sha(0xd)
	f := start(t, githubtest.Config{}, nil)
	for range 3 {
		f.r.Report(pending(c, "building"))
		time.Sleep(80 * time.Millisecond) // past the pending interval
	}
	for range 2 {
		f.r.Report(final(c, Success, "deployed"))
		time.Sleep(20 * time.Millisecond)
	}
	f.await(t, c, Success)
	f.r.Close()
	if diff := cmp.Diff([]string{"pending building", "success deployed"}, describe(f.gh.Statuses(c))); diff != "" {
		t.Errorf("posted (-want +got):\n%s", diff)
	}
}

// TestFlood: a deploy that reports 500 pendings in a burst posts a few of
// them and then its final, never more than 20.
func TestFlood(t *testing.T) {
	c := sha(0xf)
	f := start(t, githubtest.Config{}, func(o *Options) { o.PendingInterval = 10 * time.Millisecond })
	for i := 1; i <= 500; i++ {
		f.r.Report(pending(c, fmt.Sprintf("rolling out %d/500", i)))
		if i%25 == 0 {
			time.Sleep(5 * time.Millisecond) // a pace that would allow 100 posts without the cap
		}
	}
	f.r.Report(final(c, Success, "deployed to 500 nodes"))
	f.await(t, c, Success)
	f.r.Close()
	got := f.gh.Statuses(c)
	if len(got) > 20 {
		t.Errorf("%d posts, want at most 20", len(got))
	}
	if got[len(got)-1].State != Success {
		t.Errorf("last post %v, want success", got[len(got)-1])
	}
	t.Logf("500 pendings and a success made %d posts", len(got))
}

// flaky fails the first n round trips as a broken network would.
type flaky struct {
	n    atomic.Int32
	next http.RoundTripper
}

func (f *flaky) RoundTrip(req *http.Request) (*http.Response, error) {
	if f.n.Add(-1) >= 0 {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, errors.New("connection reset by peer")
	}
	return f.next.RoundTrip(req)
}

// TestRetry: 5xx answers and network errors are retried with backoff until
// the status arrives; a refusal (422) is not retried.
func TestRetry(t *testing.T) {
	tests := []struct {
		name         string
		fail         int // 500s from the stand-in
		netFail      int32
		wantRequests int // reaching the stand-in
	}{
		{"500 twice, then recovers", 2, 0, 3},
		{"network errors twice, then recovers", 0, 2, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tr := &flaky{next: http.DefaultTransport}
			tr.n.Store(tt.netFail)
			f := start(t, githubtest.Config{}, func(o *Options) { o.HTTPClient = &http.Client{Transport: tr} })
			f.gh.FailNext(tt.fail)
			c := sha(0xe)
			f.r.Report(final(c, Success, "deployed"))
			f.await(t, c, Success)
			if got := len(f.gh.Requests()); got != tt.wantRequests {
				t.Errorf("got %d requests, want %d", got, tt.wantRequests)
			}
			if got := strings.Count(f.logs.String(), "retrying"); got != 2 {
				t.Errorf("logged %d retries, want 2:\n%s", got, f.logs)
			}
		})
	}

	t.Run("gives up after MaxAttempts", func(t *testing.T) {
		t.Parallel()
		f := start(t, githubtest.Config{}, func(o *Options) { o.MaxAttempts = 3 })
		f.gh.FailNext(100)
		f.r.Report(final(sha(1), Failure, "migrate failed"))
		waitLog(t, f, "GitHub kept failing")
		if got := len(f.gh.Requests()); got != 3 {
			t.Errorf("got %d requests, want 3", got)
		}
	})

	t.Run("422 is dropped, not retried", func(t *testing.T) {
		t.Parallel()
		f := start(t, githubtest.Config{MaxPerContext: 2}, nil)
		c := sha(2)
		f.r.Report(final(c, Failure, "health check failed on nyc"))
		f.await(t, c, Failure)
		f.r.Report(final(c, Error, "host lon unreachable"))
		f.await(t, c, Error)
		f.r.Report(final(c, Success, "deployed")) // the third for this SHA and context: 422
		waitLog(t, f, "refused by GitHub")
		time.Sleep(100 * time.Millisecond) // room for a wrong retry to show
		if got := len(f.gh.Requests()); got != 3 {
			t.Errorf("got %d requests, want 3", got)
		}
		if !strings.Contains(f.logs.String(), "maximum number of statuses") {
			t.Errorf("log does not say why:\n%s", f.logs)
		}
	})
}

func waitLog(t *testing.T, f *fixture, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(f.logs.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("log never said %q:\n%s", s, f.logs)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRateLimit: a rate-limited post waits as long as GitHub says, then
// the final status arrives; the limit is not hammered meanwhile.
func TestRateLimit(t *testing.T) {
	tests := []struct {
		name  string
		limit func(gh *githubtest.Server) (notBefore time.Time)
	}{
		{"403 primary limit until X-RateLimit-Reset", func(gh *githubtest.Server) time.Time {
			reset := time.Unix(time.Now().Add(2*time.Second).Unix(), 0) // GitHub sends whole seconds
			gh.LimitPrimary(reset)
			return reset
		}},
		{"429 with Retry-After: 2", func(gh *githubtest.Server) time.Time {
			gh.LimitSecondary(http.StatusTooManyRequests, 2*time.Second)
			return time.Now().Add(2 * time.Second)
		}},
		{"403 secondary limit with Retry-After: 2", func(gh *githubtest.Server) time.Time {
			gh.LimitSecondary(http.StatusForbidden, 2*time.Second)
			return time.Now().Add(2 * time.Second)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := start(t, githubtest.Config{}, nil)
			notBefore := tt.limit(f.gh)
			c := sha(0x1a)
			f.r.Report(pending(c, "queued"))
			time.Sleep(50 * time.Millisecond)
			f.r.Report(final(c, Success, "deployed"))
			f.await(t, c, Success)
			reqs := f.gh.Requests()
			if len(reqs) != 2 || reqs[0].Code == http.StatusCreated {
				t.Fatalf("requests %+v, want one refused and one accepted", reqs)
			}
			if at := reqs[1].At; at.Before(notBefore) {
				t.Errorf("status arrived %v before the limit ended", notBefore.Sub(at))
			}
			// The limit held the queued pending back; the final replaced it.
			if diff := cmp.Diff([]string{"success deployed"}, describe(f.gh.Statuses(c))); diff != "" {
				t.Errorf("posted (-want +got):\n%s", diff)
			}
		})
	}
}

// TestJudge classifies answers GitHub gives, including those the stand-in
// does not make (a 429 that names no wait, a permission 403).
func TestJudge(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	answer := func(code int, h map[string]string, msg string) error {
		resp := &http.Response{StatusCode: code, Header: http.Header{}, Request: &http.Request{Method: "POST"}}
		for k, v := range h {
			resp.Header.Set(k, v)
		}
		return &github.ErrorResponse{Response: resp, Message: msg}
	}
	after := 3 * time.Second
	tests := []struct {
		name      string
		err       error
		want      verdict
		wantNamed time.Duration
	}{
		{"ok", nil, sent, 0},
		{"500", answer(500, nil, "Server Error"), retry, 0},
		{"502", answer(502, nil, ""), retry, 0},
		{"network", errors.New("dial tcp: connection refused"), retry, 0},
		{"422", answer(422, nil, "Validation Failed"), drop, 0},
		{"401", answer(401, nil, "Bad credentials"), drop, 0},
		{"404", answer(404, nil, "Not Found"), drop, 0},
		{"403 without the permission", answer(403, nil, "Resource not accessible by integration"), drop, 0},
		{"403 naming a rate limit but no wait", answer(403, nil, "You have exceeded a secondary rate limit"), limited, -1},
		{"429 naming no wait", answer(429, nil, "slow down"), limited, -1},
		{"429 Retry-After", answer(429, map[string]string{"Retry-After": "7"}, ""), limited, 7 * time.Second},
		{"429 X-RateLimit-Reset", answer(429, map[string]string{"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1700000042"}, ""), limited, 42 * time.Second},
		{"429 reset ignored while requests remain", answer(429, map[string]string{"X-RateLimit-Remaining": "10", "X-RateLimit-Reset": "1700000042"}, ""), limited, -1},
		{"go-github RateLimitError", &github.RateLimitError{Rate: github.Rate{Reset: github.Timestamp{Time: now.Add(time.Minute)}}}, limited, time.Minute},
		{"go-github AbuseRateLimitError", &github.AbuseRateLimitError{RetryAfter: &after}, limited, 3 * time.Second},
		{"go-github AbuseRateLimitError naming no wait", &github.AbuseRateLimitError{}, limited, -1},
		{"wrapped", fmt.Errorf("post: %w", answer(503, nil, "")), retry, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, named := judge(nil, tt.err, now)
			if v != tt.want || named != tt.wantNamed {
				t.Errorf("got %v %v, want %v %v", v, named, tt.want, tt.wantNamed)
			}
		})
	}
}

func TestRateLimitWait(t *testing.T) {
	r := &Reporter{o: Options{MinRateLimitWait: time.Minute}}
	tests := []struct {
		streak   int
		named    time.Duration
		min, max time.Duration
	}{
		{1, -1, time.Minute, time.Minute + 6100*time.Millisecond},                     // nothing named: at least a minute
		{1, 2 * time.Second, 2 * time.Second, 2300 * time.Millisecond},                // Retry-After: 2
		{2, 2 * time.Second, 2 * time.Minute, 2*time.Minute + 12100*time.Millisecond}, // persists: back off
		{3, time.Hour, time.Hour, time.Hour + 6*time.Minute + 100*time.Millisecond},   // a named wait is honoured in full
		{40, -1, maxRateLimitBackoff, maxRateLimitBackoff*11/10 + 100*time.Millisecond},
	}
	for _, tt := range tests {
		r.limitStreak = tt.streak
		for range 20 {
			if got := r.rateLimitWait(tt.named); got < tt.min || got >= tt.max {
				t.Errorf("streak %d named %v: wait %v, want [%v, %v)", tt.streak, tt.named, got, tt.min, tt.max)
			}
		}
	}
}

func TestClip(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"short", "building", "building"},
		{"exactly 140", strings.Repeat("a", 140), strings.Repeat("a", 140)},
		{"141", strings.Repeat("a", 141), strings.Repeat("a", 139) + "…"},
		{"multi-byte runes", strings.Repeat("é", 150), strings.Repeat("é", 139) + "…"},
		{"four-byte runes", strings.Repeat("🚀", 141), strings.Repeat("🚀", 139) + "…"},
		{"multi-byte at the cut", strings.Repeat("a", 138) + "日本語", strings.Repeat("a", 138) + "日…"},
		{"stderr tail on one line", "build: exit 1:\n  error: x\n\tmore", "build: exit 1: error: x more"},
		{"invalid UTF-8", "bad \xff byte", "bad \uFFFD byte"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := clip(tt.in)
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if n := utf8.RuneCountInString(got); n > MaxDescription || !utf8.ValidString(got) {
				t.Errorf("%d runes, valid %v", n, utf8.ValidString(got))
			}
		})
	}
}

// TestLongDescription: what GitHub would refuse with 422 arrives cut.
func TestLongDescription(t *testing.T) {
	f := start(t, githubtest.Config{}, nil)
	descs := []string{strings.Repeat("x", 141), strings.Repeat("ü", 200), "rollout on lon: health: " + strings.Repeat("😀", 150)}
	for i, d := range descs {
		f.r.Report(final(sha(0x100+i), Failure, d))
	}
	for i, d := range descs {
		st := f.await(t, sha(0x100+i), Failure)
		if st.Description != clip(d) || utf8.RuneCountInString(st.Description) != MaxDescription {
			t.Errorf("description %q (%d runes), want %q", st.Description, utf8.RuneCountInString(st.Description), clip(d))
		}
	}
}

// TestNeverBlocks: with GitHub hung, Report still returns at once; the
// queue drops the oldest pending, never a final.
func TestNeverBlocks(t *testing.T) {
	f := start(t, githubtest.Config{}, func(o *Options) { o.QueueSize = 4 })
	release := f.gh.Hold()
	first := sha(1)
	f.r.Report(pending(first, "queued"))
	f.inflight(t, first) // the sender is stuck on this one
	// Were Report to wait for GitHub, it would wait for as long as GitHub
	// is held: forever, here. The bound is loose so a loaded machine passes.
	finals := []int{2, 3, 500, 998, 1000} // old and new, dropped pendings among them
	done := make(chan time.Duration)
	go func() {
		var slowest time.Duration
		report := func(u Update) {
			t0 := time.Now()
			f.r.Report(u)
			slowest = max(slowest, time.Since(t0))
		}
		for i := 2; i <= 1000; i++ {
			report(pending(sha(i), "queued"))
		}
		for _, i := range finals {
			report(final(sha(i), Success, "deployed"))
		}
		for i := 1001; i <= 1010; i++ {
			report(pending(sha(i), "queued"))
		}
		done <- slowest
	}()
	select {
	case slowest := <-done:
		t.Logf("1015 reports with GitHub hung; the slowest took %v", slowest)
	case <-time.After(10 * time.Second):
		t.Fatal("Report blocks while GitHub hangs")
	}

	release()
	f.r.Close()
	all := f.gh.All()
	for _, i := range finals {
		if l := all[sha(i)]; len(l) == 0 || l[len(l)-1].State != Success {
			t.Errorf("final for commit %d lost: %v", i, describe(l))
		}
	}
	pendings := 0
	for i := 2; i <= 1010; i++ {
		for _, st := range all[sha(i)] {
			if st.State == Pending {
				pendings++
			}
		}
	}
	// The queue held 4: every final took the room of an older pending.
	if pendings != 0 {
		t.Errorf("%d pendings posted, want 0 (finals took their room)", pendings)
	}
	if !strings.Contains(f.logs.String(), "queue full") {
		t.Errorf("dropping was not logged")
	}
}

// TestNeverBlocksFinalsOnly: finals beyond QueueSize wait rather than drop.
func TestNeverBlocksFinalsOnly(t *testing.T) {
	f := start(t, githubtest.Config{}, func(o *Options) { o.QueueSize = 2 })
	release := f.gh.Hold()
	f.r.Report(pending(sha(1), "queued"))
	f.inflight(t, sha(1))
	for i := 2; i <= 9; i++ {
		f.r.Report(final(sha(i), Error, "not deployed: superseded"))
	}
	f.r.Report(pending(sha(10), "queued")) // no room: every queued update is final
	release()
	f.r.Close()
	all := f.gh.All()
	for i := 2; i <= 9; i++ {
		if len(all[sha(i)]) != 1 {
			t.Errorf("final for commit %d: %v", i, describe(all[sha(i)]))
		}
	}
	if len(all[sha(10)]) != 0 {
		t.Errorf("pending beyond a queue of finals was posted")
	}
}

// TestClose: Close flushes what is queued, pendings included, and gives up
// at FlushTimeout when GitHub hangs.
func TestClose(t *testing.T) {
	t.Run("flushes", func(t *testing.T) {
		f := start(t, githubtest.Config{}, func(o *Options) { o.PendingInterval = time.Hour })
		a, b := sha(1), sha(2)
		f.r.Report(pending(a, "queued"))
		f.await(t, a, Pending)
		f.r.Report(pending(a, "the operator is stopping; the next run finishes the deploy"))
		f.r.Report(final(b, Success, "deployed"))
		f.r.Close()
		if got := describe(f.gh.Statuses(a)); len(got) != 2 {
			t.Errorf("interrupted deploy: %v", got)
		}
		if got := describe(f.gh.Statuses(b)); len(got) != 1 {
			t.Errorf("finished deploy: %v", got)
		}
		f.r.Report(final(a, Success, "deployed")) // after Close: dropped
		f.r.Close()                               // twice is fine
		if got := len(f.gh.Statuses(a)); got != 2 {
			t.Errorf("a report after Close was posted")
		}
	})
	t.Run("gives up on a hung GitHub", func(t *testing.T) {
		f := start(t, githubtest.Config{}, func(o *Options) { o.FlushTimeout = 300 * time.Millisecond })
		f.gh.Hold()
		f.r.Report(final(sha(1), Success, "deployed"))
		f.inflight(t, sha(1))
		t0 := time.Now()
		f.r.Close()
		if d := time.Since(t0); d > 2*time.Second {
			t.Errorf("Close took %v", d)
		}
		if !strings.Contains(f.logs.String(), "not sent before shutdown") {
			t.Errorf("the lost final was not logged:\n%s", f.logs)
		}
	})
	t.Run("never started", func(t *testing.T) {
		r, err := New(Options{Token: token, Repository: "acme/chat", Context: "deploy/x"})
		if err != nil {
			t.Fatal(err)
		}
		r.Report(final(sha(1), Success, "deployed"))
		r.Close()
	})
}

// TestTokenNeverLeaks drives every error path and checks that no log line,
// error or posted status carries the token.
func TestTokenNeverLeaks(t *testing.T) {
	tr := &flaky{next: http.DefaultTransport}
	tr.n.Store(1)
	f := start(t, githubtest.Config{MaxPerContext: 3}, func(o *Options) { o.HTTPClient = &http.Client{Transport: tr} })
	c := sha(0x70)
	f.gh.FailNext(1)
	f.r.Report(final(c, Failure, "build: git fetch https://x-access-token:"+token+"@github.com/acme/chat: exit 128"))
	st := f.await(t, c, Failure)
	if strings.Contains(st.Description, token) || !strings.Contains(st.Description, "[redacted]") {
		t.Errorf("posted description %q", st.Description)
	}
	f.r.Report(final(c, Error, "one"))
	f.await(t, c, Error)
	f.r.Report(final(c, Success, "two"))
	f.await(t, c, Success)
	f.r.Report(final(c, Failure, "three")) // 422: over the limit
	waitLog(t, f, "refused by GitHub")

	// A wrong token: the stand-in answers 401, and the wrong one must not
	// show either.
	const wrong = "ghp_WRONGtoken9876543210zyxwvuSECRET"
	logs := &logBuffer{}
	r, err := New(Options{APIURL: f.gh.URL(), Token: wrong, Repository: "acme/chat", Context: "deploy/production",
		Log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), PostInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r.Start(t.Context())
	r.Report(final(sha(0x71), Success, "deployed"))
	r.Close()

	// And the raw error go-github returns, before the reporter wraps it.
	gh := github.NewClient(nil).WithAuthToken(wrong)
	gh.BaseURL = r.gh.BaseURL
	_, _, rawErr := gh.Repositories.CreateStatus(t.Context(), "acme", "chat", sha(0x71), &github.RepoStatus{State: github.String("success")})

	for name, text := range map[string]string{"log": f.logs.String(), "wrong-token log": logs.String(), "go-github error": fmt.Sprint(rawErr)} {
		for _, tok := range []string{token, wrong} {
			if strings.Contains(text, tok) {
				t.Errorf("%s contains a token:\n%s", name, text)
			}
		}
	}
	// The paths were taken: a network error, a 500, a 422 and a 401.
	for _, want := range []string{"connection reset", "500", "422", "401 Bad credentials"} {
		if !strings.Contains(f.logs.String()+logs.String(), want) {
			t.Errorf("no log line mentions %q", want)
		}
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		wantErr string
		wantURL string
	}{
		{"defaults", Options{Token: "t", Repository: "acme/chat", Context: "deploy/production"}, "", "https://api.github.com/"},
		{"trailing slash added", Options{APIURL: "https://ghe.acme.test/api/v3", Token: "t", Repository: "acme/chat", Context: "c"}, "", "https://ghe.acme.test/api/v3/"},
		{"test server root kept as is", Options{APIURL: "http://127.0.0.1:9/", Token: "t", Repository: "acme/chat", Context: "c"}, "", "http://127.0.0.1:9/"},
		{"no token", Options{Repository: "acme/chat", Context: "c"}, "token is required", ""},
		{"no context", Options{Token: "t", Repository: "acme/chat"}, "context is required", ""},
		{"bad repository", Options{Token: "t", Repository: "chat", Context: "c"}, "want owner/name", ""},
		{"nested repository", Options{Token: "t", Repository: "a/b/c", Context: "c"}, "want owner/name", ""},
		{"credentials in the URL", Options{APIURL: "https://x:" + token + "@api.github.com/", Token: "t", Repository: "acme/chat", Context: "c"}, "credentials belong in GITHUB_TOKEN", ""},
		{"not http", Options{APIURL: "ftp://api.github.com/", Token: "t", Repository: "acme/chat", Context: "c"}, "want an http or https URL", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := New(tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want an error with %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), token) {
					t.Errorf("error carries the token: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := r.gh.BaseURL.String(); got != tt.wantURL {
				t.Errorf("base URL %q, want %q", got, tt.wantURL)
			}
		})
	}
}

// TestInvalidUpdates are dropped at Report, with a warning.
func TestInvalidUpdates(t *testing.T) {
	f := start(t, githubtest.Config{}, nil)
	f.r.Report(Update{Commit: "abc123", State: Success})
	f.r.Report(Update{Commit: sha(1), State: "done"})
	f.r.Report(Update{Commit: strings.ToUpper(sha(0xab)), State: Success, Description: "ok", TargetURL: "javascript:alert(1)"})
	st := f.await(t, sha(0xab), Success)
	if st.TargetURL != "" {
		t.Errorf("target URL %q posted", st.TargetURL)
	}
	f.r.Close()
	if n := len(f.gh.Requests()); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
	if got := strings.Count(f.logs.String(), "commit status dropped"); got != 2 {
		t.Errorf("%d drops logged, want 2", got)
	}
}
