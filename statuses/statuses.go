// Package statuses reports deploys to GitHub as commit statuses
// (PRODUCT.md §3 step 7): pending while a deploy is queued and at each
// phase, then success, failure or error, each linking to the deploy's page.
//
// A deploy must never wait for GitHub, so Report only queues; one sender
// goroutine posts. What reaches GitHub follows a few rules, each from a
// failure other tools have shown:
//
//   - Per commit the last state wins. Updates queued for a commit coalesce
//     into the newest one. Once a final state (success, failure, error) is
//     sent or queued for a commit, later pending updates for it are dropped,
//     so a stale pending can never cover a finished deploy (Flux
//     notification-controller#327); a newer final replaces an older one.
//     A pending that names a deploy newer than the one the final came
//     from starts over (a retry, a rollback to the commit, a deploy after an
//     unlock): the commit shows that deploy's progress and its own final.
//   - A post whose state and description equal the last one sent for the
//     commit is skipped (as Flux's GitHub notifier does).
//   - A deploy posts about 20 statuses at most, whatever its size: pending
//     posts are spaced per commit (Options.PendingInterval, keeping the
//     newest) and capped per commit (Options.MaxPendingPosts); finals always
//     go out. GitHub keeps at most 1,000 statuses per SHA and context, and
//     its secondary rate limits punish bursts.
//   - Descriptions are cut to 140 characters on a rune boundary: GitHub
//     answers 422 beyond.
//   - 5xx answers and network errors are retried with exponential backoff
//     and jitter; 403/429 rate limits wait as GitHub documents (Retry-After,
//     else X-RateLimit-Reset when X-RateLimit-Remaining is 0, else at least
//     Options.MinRateLimitWait), backing off while the limit persists. Other
//     4xx answers (422 over 1,000 statuses, 401 bad token, 404) are logged
//     and dropped: retrying cannot help.
//   - The token never appears in a log line or an error: go-github's errors
//     carry the URL, never the Authorization header, and the reporter
//     scrubs the token from anything it logs or posts all the same.
package statuses

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/go-github/v57/github"
)

// Commit status states, as GitHub names them.
const (
	Pending = "pending"
	Success = "success"
	Failure = "failure"
	Error   = "error"
)

// MaxDescription is the longest description GitHub accepts, in characters.
const MaxDescription = 140

// Update is one state of a deploy, for one commit.
type Update struct {
	// Commit is the full 40-hex SHA.
	Commit string
	// State is Pending, Success, Failure or Error.
	State string
	// Description says what happens (building, rolling out 2/3) or why it
	// ended; it is cut to MaxDescription characters.
	Description string
	// TargetURL links the status to the deploy's page; an invalid URL is
	// left out rather than have GitHub refuse the whole status.
	TargetURL string
	// Deploy is the deploy the update comes from, 0 when there is none yet
	// (queued). A pending of a deploy newer than the commit's last final is
	// fresh, not stale.
	Deploy int64
}

// final reports whether u ends a deploy.
func (u Update) final() bool { return u.State != Pending }

// Options configure a Reporter. Zero values mean the defaults named.
type Options struct {
	// APIURL is github.api_url: https://api.github.com/, a GitHub
	// Enterprise API root, or a test server.
	APIURL string
	// Token is GITHUB_TOKEN; it needs the repo:status (classic) or
	// "Commit statuses: write" (fine-grained) permission.
	Token string
	// Repository is owner/name.
	Repository string
	// Context is the status context, unique per environment
	// (deploy/production) so environments do not overwrite each other's
	// statuses.
	Context string
	// QueueSize bounds the updates waiting to be sent (default 256). When
	// it is full the oldest waiting pending update is dropped; finals are
	// never dropped for room (one per commit, at a deploy's pace) up to a
	// hard ceiling of ten times QueueSize.
	QueueSize int
	// Log receives what went wrong; nil discards.
	Log *slog.Logger
	// HTTPClient carries the requests; nil means a client with a 30 s
	// timeout, so a hung GitHub holds the sender for 30 s at most.
	HTTPClient *http.Client
	// Now is the clock, for tests; nil means time.Now.
	Now func() time.Time
	// MinRateLimitWait is how long a rate-limited answer that names no
	// wait is waited out, and the base of the backoff while the limit
	// persists (default 1 min, as GitHub asks).
	MinRateLimitWait time.Duration
	// PendingInterval is the least time between two pending posts for one
	// commit (default 2 s); the newest pending waits for its turn.
	PendingInterval time.Duration
	// MaxPendingPosts caps the pending posts for one commit (default 19,
	// leaving room for the final within 20 posts).
	MaxPendingPosts int
	// PostInterval is the least time between any two posts (default 1 s),
	// as GitHub asks of clients that create content.
	PostInterval time.Duration
	// RetryMin and RetryMax bound the backoff after a 5xx or network error
	// (defaults 1 s and 5 min).
	RetryMin, RetryMax time.Duration
	// MaxAttempts is how often one update is tried against 5xx answers and
	// network errors before it is dropped (default 10: with the default
	// backoff, 4 to 9 minutes of GitHub trouble). Rate-limited attempts
	// do not count: waiting them out is bound to work.
	MaxAttempts int
	// FlushTimeout bounds how long Close keeps sending (default 10 s).
	FlushTimeout time.Duration
}

// Reporter posts commit statuses for one repository and context. Report,
// Start and Close are safe for concurrent use.
type Reporter struct {
	gh          *github.Client
	owner, repo string
	context     string
	token       string // kept only to scrub it from what is logged or posted
	log         *slog.Logger
	now         func() time.Time
	o           Options // with defaults filled in

	mu            sync.Mutex
	commits       map[string]*commit
	seq           uint64 // order of arrival, for queue order and eviction
	queuedPending int
	queuedFinal   int
	limitedUntil  time.Time // a rate limit holds every post until then
	limitStreak   int       // rate-limited answers in a row
	lastPost      time.Time
	started       bool
	closing       bool
	deadline      time.Time // when closing: give up then
	wake          chan struct{}
	done          chan struct{}
	cancel        context.CancelFunc
}

// commit is what the reporter knows of one commit's statuses.
type commit struct {
	sha          string
	want         *Update // newest update not yet sent
	seq          uint64  // when want was queued: older goes first
	inflight     bool
	notBefore    time.Time // backoff after a failed post
	attempts     int       // failed attempts in a row
	sent         *Update   // last one GitHub accepted
	final        bool      // a final was sent or queued: pendings are stale
	finalDeploy  int64     // the deploy the final came from
	pendingPosts int
	lastPending  time.Time
	touched      uint64 // last use, for forgetting old commits
}

const (
	// remember bounds the commits the reporter keeps state for; beyond it
	// the least recently used idle ones are forgotten. A forgotten commit
	// is months of deploys old: a stale pending for it is not a risk.
	remember = 4096
	// finalCeiling times QueueSize is how many finals may wait when GitHub
	// is unreachable; reached only after thousands of deploys.
	finalCeiling = 10
	// maxRateLimitBackoff caps the backoff while a rate limit persists;
	// a wait GitHub names is always honoured in full.
	maxRateLimitBackoff = 30 * time.Minute
)

// New returns a Reporter; Start sets it sending.
func New(opts Options) (*Reporter, error) {
	if opts.Token == "" {
		return nil, errors.New("statuses: a token is required (GITHUB_TOKEN)")
	}
	if opts.Context == "" {
		return nil, errors.New("statuses: a status context is required")
	}
	owner, repo, ok := strings.Cut(opts.Repository, "/")
	if !ok || owner == "" || repo == "" || strings.Contains(repo, "/") {
		return nil, fmt.Errorf("statuses: repository %q: want owner/name", opts.Repository)
	}
	if opts.APIURL == "" {
		opts.APIURL = "https://api.github.com/"
	}
	base, err := url.Parse(opts.APIURL)
	if err != nil {
		// A *url.Error quotes the URL, which could hold a credential.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("statuses: api url: %w", err)
	}
	if base.Scheme != "http" && base.Scheme != "https" || base.Host == "" {
		return nil, fmt.Errorf("statuses: api url %q: want an http or https URL", base.Redacted())
	}
	if base.User != nil {
		// url.URL.String, used in error messages, would print a password.
		return nil, fmt.Errorf("statuses: api url %q: credentials belong in GITHUB_TOKEN, not the URL", base.Redacted())
	}
	if !strings.HasSuffix(base.Path, "/") {
		base.Path += "/"
	}
	hc := opts.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	// BaseURL is set directly, as go-github's own tests do:
	// WithEnterpriseURLs would append api/v3/ to a test server's root.
	gh := github.NewClient(hc).WithAuthToken(opts.Token)
	gh.BaseURL = base

	if opts.QueueSize <= 0 {
		opts.QueueSize = 256
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	setDefault(&opts.MinRateLimitWait, time.Minute)
	setDefault(&opts.PendingInterval, 2*time.Second)
	setDefault(&opts.PostInterval, time.Second)
	setDefault(&opts.RetryMin, time.Second)
	setDefault(&opts.RetryMax, 5*time.Minute)
	setDefault(&opts.FlushTimeout, 10*time.Second)
	setDefault(&opts.MaxPendingPosts, 19)
	setDefault(&opts.MaxAttempts, 10)
	opts.RetryMax = max(opts.RetryMax, opts.RetryMin)

	return &Reporter{
		gh: gh, owner: owner, repo: repo, context: opts.Context, token: opts.Token,
		log:     opts.Log.With("context", opts.Context),
		now:     opts.Now,
		o:       opts,
		commits: map[string]*commit{},
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}, nil
}

func setDefault[T time.Duration | int](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// Report queues u for GitHub and returns at once: a deploy never waits for
// GitHub. An invalid update (not a 40-hex SHA, an unknown state) is logged
// and dropped; so is every update after Close.
func (r *Reporter) Report(u Update) {
	u, err := r.normalize(u)
	if err != nil {
		r.log.Warn("commit status dropped", "revision", u.Commit, "err", err)
		return
	}
	// Logged after the lock is released: a slow log never holds the
	// sender, nor the next Report.
	var note func()
	defer func() {
		if note != nil {
			note()
		}
	}()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closing {
		note = func() { r.log.Debug("commit status dropped: reporter closed", "revision", u.Commit, "state", u.State) }
		return
	}
	c := r.commit(u.Commit)
	if !u.final() && c.final && u.Deploy > c.finalDeploy {
		// A newer deploy of the commit: its progress is news again.
		c.final, c.pendingPosts = false, 0
	}
	if !u.final() {
		if c.final {
			note = func() {
				r.log.Debug("stale pending status dropped: the commit has a final status", "revision", u.Commit, "description", u.Description)
			}
			return
		}
		if c.pendingPosts >= r.o.MaxPendingPosts {
			return // the budget is spent; the final will still go out
		}
	}
	if c.want == nil {
		var ok bool
		if ok, note = r.makeRoom(u); !ok {
			return
		}
		r.seq++
		c.seq = r.seq
	} else {
		r.count(c.want, -1)
	}
	c.want = &u
	r.count(c.want, +1)
	if u.final() {
		c.final = true
		c.finalDeploy = max(c.finalDeploy, u.Deploy)
	}
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// makeRoom reports whether u may join the queue, dropping the oldest
// waiting pending update if the queue is full; note, when not nil, logs
// what was dropped. Must hold r.mu.
func (r *Reporter) makeRoom(u Update) (ok bool, note func()) {
	if r.queuedPending+r.queuedFinal < r.o.QueueSize {
		return true, nil
	}
	if r.queuedPending > 0 {
		old := r.oldest(false)
		w := *old.want
		r.count(old.want, -1)
		old.want = nil
		return true, func() {
			r.log.Warn("commit status dropped: queue full", "revision", w.Commit, "state", w.State, "description", w.Description)
		}
	}
	if !u.final() {
		return false, func() {
			r.log.Warn("commit status dropped: queue full of final statuses", "revision", u.Commit, "description", u.Description)
		}
	}
	if r.queuedFinal < finalCeiling*r.o.QueueSize {
		return true, nil
	}
	old := r.oldest(true)
	w := *old.want
	r.count(old.want, -1)
	old.want = nil
	return true, func() {
		r.log.Error("final commit status dropped: GitHub unreachable for too long", "revision", w.Commit, "state", w.State, "description", w.Description)
	}
}

// oldest returns the commit whose waiting update, final or pending as
// asked, was queued first. Must hold r.mu; one must exist.
func (r *Reporter) oldest(final bool) *commit {
	var o *commit
	for _, c := range r.commits {
		if c.want != nil && c.want.final() == final && (o == nil || c.seq < o.seq) {
			o = c
		}
	}
	return o
}

func (r *Reporter) count(u *Update, n int) {
	if u.final() {
		r.queuedFinal += n
	} else {
		r.queuedPending += n
	}
}

// commit returns sha's state, making it, and forgetting the least recently
// used idle commits when too many are known. Must hold r.mu.
func (r *Reporter) commit(sha string) *commit {
	r.seq++
	c := r.commits[sha]
	if c == nil {
		if len(r.commits) >= remember {
			r.forget(remember / 4)
		}
		c = &commit{sha: sha}
		r.commits[sha] = c
	}
	c.touched = r.seq
	return c
}

// forget drops about n idle commits, least recently used first.
func (r *Reporter) forget(n int) {
	idle := make([]uint64, 0, len(r.commits))
	for _, c := range r.commits {
		if c.want == nil && !c.inflight {
			idle = append(idle, c.touched)
		}
	}
	if len(idle) == 0 {
		return
	}
	// The n-th smallest touch: a full sort is cheap at this size and rare.
	slices.Sort(idle)
	cut := idle[min(n, len(idle))-1]
	for sha, c := range r.commits {
		if c.want == nil && !c.inflight && c.touched <= cut {
			delete(r.commits, sha)
		}
	}
}

// normalize checks u and shapes it as GitHub accepts it.
func (r *Reporter) normalize(u Update) (Update, error) {
	u.Commit = strings.ToLower(strings.TrimSpace(u.Commit))
	if !isSHA(u.Commit) {
		return u, fmt.Errorf("commit %q is not a full 40-hex SHA", u.Commit)
	}
	switch u.State {
	case Pending, Success, Failure, Error:
	default:
		return u, fmt.Errorf("state %q is not pending, success, failure or error", u.State)
	}
	u.Description = clip(r.scrub(u.Description))
	if u.TargetURL != "" {
		t, err := url.Parse(u.TargetURL)
		if err != nil || (t.Scheme != "http" && t.Scheme != "https") || t.Host == "" || t.User != nil {
			// GitHub refuses the whole status for a bad target_url; the
			// state matters more than the link.
			r.log.Warn("commit status target URL left out: not a plain http(s) URL", "revision", u.Commit)
			u.TargetURL = ""
		} else {
			u.TargetURL = r.scrub(u.TargetURL)
		}
	}
	return u, nil
}

func isSHA(s string) bool {
	if len(s) != 40 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !('0' <= s[i] && s[i] <= '9' || 'a' <= s[i] && s[i] <= 'f') {
			return false
		}
	}
	return true
}

// clip makes s one line of valid UTF-8 of at most MaxDescription
// characters (GitHub counts characters, not bytes, and answers 422
// beyond). Error messages carry newlines from stderr tails: GitHub shows
// one line, so runs of white space become one space. A cut description
// ends in "…", so a reader knows there is more on the deploy's page.
func clip(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Join(strings.FieldsFunc(s, unicode.IsSpace), " ")
	if utf8.RuneCountInString(s) <= MaxDescription {
		return s
	}
	n := 0
	for i := range s {
		if n == MaxDescription-1 {
			return s[:i] + "…"
		}
		n++
	}
	return s // unreachable: s has more runes than MaxDescription
}

// scrub replaces the token wherever it appears: a description is often an
// error's text, and nothing the reporter writes may carry the token.
func (r *Reporter) scrub(s string) string {
	if r.token == "" || !strings.Contains(s, r.token) {
		return s
	}
	return strings.ReplaceAll(s, r.token, "[redacted]")
}

// scrubbed is an error whose text has the token scrubbed out; errors.Is
// and errors.As still see the original.
type scrubbed struct {
	err error
	msg string
}

func (e *scrubbed) Error() string { return e.msg }
func (e *scrubbed) Unwrap() error { return e.err }

func (r *Reporter) scrubErr(err error) error {
	return &scrubbed{err: err, msg: r.scrub(err.Error())}
}

// Start sets the sender going until Close, or until ctx ends (which drops
// whatever is still queued: call Close first to flush). A second call does
// nothing.
func (r *Reporter) Start(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started || r.closing {
		return
	}
	r.started = true
	ctx, r.cancel = context.WithCancel(ctx)
	go func() {
		defer close(r.done)
		r.run(ctx)
	}()
}

// Close stops taking updates, sends what is queued for up to
// Options.FlushTimeout, and stops the sender. Pending updates still waiting
// for their turn go out at once; a rate limit or backoff that would end
// after the deadline is not waited for. What is left is logged and dropped.
func (r *Reporter) Close() {
	r.mu.Lock()
	if r.closing {
		r.mu.Unlock()
		<-r.waitDone()
		return
	}
	r.closing = true
	r.deadline = r.now().Add(r.o.FlushTimeout)
	started := r.started
	r.mu.Unlock()
	if !started {
		r.dropRest()
		return
	}
	select {
	case r.wake <- struct{}{}:
	default:
	}
	t := time.NewTimer(r.o.FlushTimeout)
	defer t.Stop()
	select {
	case <-r.done:
	case <-t.C:
		r.cancel() // a request in flight ends now
		<-r.done
	}
	r.cancel()
	r.dropRest()
}

func (r *Reporter) waitDone() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.started {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	return r.done
}

// dropRest logs what Close could not send.
func (r *Reporter) dropRest() {
	r.mu.Lock()
	var lost []Update
	for _, c := range r.commits {
		if c.want != nil {
			lost = append(lost, *c.want)
			r.count(c.want, -1)
			c.want = nil
		}
	}
	r.mu.Unlock()
	for _, u := range lost {
		level := slog.LevelWarn
		if u.final() {
			level = slog.LevelError
		}
		r.log.Log(context.Background(), level, "commit status not sent before shutdown", "revision", u.Commit, "state", u.State, "description", u.Description)
	}
}

// errStatus is the error a status post ends with: it names the commit and
// the state, and wraps what GitHub or the network said.
func (r *Reporter) errStatus(u Update, err error) error {
	return r.scrubErr(fmt.Errorf("post %s status of %s to %s/%s: %w", u.State, u.Commit, r.owner, r.repo, err))
}
