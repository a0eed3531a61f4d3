// Package githubtest is a stand-in for GitHub's commit status API, for
// tests: GitHub cannot be reached from where the tests run, and a stand-in
// that enforces what GitHub documents catches what a permissive fake would
// let through (a description over 140 characters, a short SHA, a missing
// token). It is a separate package so that net/http/httptest and the
// stand-in never reach the operator's binary.
//
// It answers POST /repos/{owner}/{repo}/statuses/{sha} as GitHub does and
// records every status it accepts. Tests can make it fail: a number of 500s,
// a primary rate limit (403 with X-RateLimit-Remaining: 0), a secondary one
// (403 or 429 with Retry-After), or hold requests as a hung GitHub would.
package githubtest

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// Config says what the stand-in accepts.
type Config struct {
	// Token is the only token accepted, as "Bearer <token>" or
	// "token <token>"; required.
	Token string
	// Repository, as owner/name, is the only repository that exists;
	// empty accepts any.
	Repository string
	// MaxPerContext is how many statuses one SHA and context take before
	// GitHub answers 422; 0 means GitHub's 1,000. Tests set it small to
	// reach the limit cheaply.
	MaxPerContext int
}

// Status is a commit status as the stand-in accepted it.
type Status struct {
	ID          int64     `json:"id"`
	State       string    `json:"state"`
	Description string    `json:"description"`
	TargetURL   string    `json:"target_url"`
	Context     string    `json:"context"`
	CreatedAt   time.Time `json:"created_at"`
}

// Request is one request the stand-in answered, accepted or not.
type Request struct {
	Method string
	Path   string
	// Code is the HTTP status it answered.
	Code int
	At   time.Time
}

// Server is the stand-in. Its methods are safe for concurrent use.
type Server struct {
	cfg Config
	srv *httptest.Server

	mu        sync.Mutex
	changed   chan struct{} // closed and replaced on every recorded request
	nextID    int64
	statuses  map[string][]Status // by lowercase SHA, in the order accepted
	requests  []Request
	fail      int       // answer this many requests with 500
	primary   time.Time // answer 403 with X-RateLimit-Remaining: 0 until then
	secondary time.Time // answer secondaryCode with Retry-After until then
	secCode   int
	held      chan struct{} // requests wait for it to close, when not nil
	release   func()        // closes held, once
}

// New starts a stand-in; t's cleanup closes it. It fails t when cfg has no
// token: a stand-in without authentication would hide a reporter that
// sends none.
func New(t testing.TB, cfg Config) *Server {
	t.Helper()
	if cfg.Token == "" {
		t.Fatal("githubtest: Config.Token is required")
	}
	if cfg.MaxPerContext <= 0 {
		cfg.MaxPerContext = 1000
	}
	s := &Server{cfg: cfg, statuses: map[string][]Status{}, changed: make(chan struct{})}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

// URL is the API base URL, with the trailing slash go-github needs: what
// github.api_url is set to in a test.
func (s *Server) URL() string { return s.srv.URL + "/" }

// Close releases held requests and shuts the server down.
func (s *Server) Close() {
	s.mu.Lock()
	release := s.release
	s.mu.Unlock()
	if release != nil {
		release()
	}
	s.srv.Close()
}

// FailNext makes the next n requests answer 500, as GitHub does in an
// incident.
func (s *Server) FailNext(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = n
}

// LimitPrimary makes every request until reset answer 403 with
// X-RateLimit-Remaining: 0 and X-RateLimit-Reset (in whole seconds, as
// GitHub sends it): the token's hourly budget is spent.
func (s *Server) LimitPrimary(reset time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.primary = reset
}

// LimitSecondary makes every request for the next d answer code (403 or
// 429) with Retry-After set to the whole seconds left: a secondary rate
// limit.
func (s *Server) LimitSecondary(code int, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.secondary, s.secCode = time.Now().Add(d), code
}

// Hold makes requests wait, without an answer, until release is called (or
// the client gives up): a hung GitHub.
func (s *Server) Hold() (release func()) {
	ch := make(chan struct{})
	var once sync.Once
	release = func() {
		once.Do(func() {
			s.mu.Lock()
			if s.held == ch {
				s.held, s.release = nil, nil
			}
			s.mu.Unlock()
			close(ch)
		})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.release != nil {
		go s.release() // a second Hold replaces the first; its requests go on
	}
	s.held, s.release = ch, release
	return release
}

// Statuses returns the statuses accepted for sha, oldest first.
func (s *Server) Statuses(sha string) []Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Status(nil), s.statuses[strings.ToLower(sha)]...)
}

// All returns the statuses accepted, by lowercase SHA, each oldest first.
func (s *Server) All() map[string][]Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	all := make(map[string][]Status, len(s.statuses))
	for sha, l := range s.statuses {
		all[sha] = append([]Status(nil), l...)
	}
	return all
}

// Requests returns every request answered, in order, accepted or not.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Await waits until the newest status accepted for sha has the given state
// and returns it, or returns ctx's error.
func (s *Server) Await(ctx context.Context, sha, state string) (Status, error) {
	for {
		s.mu.Lock()
		l := s.statuses[strings.ToLower(sha)]
		changed := s.changed
		s.mu.Unlock()
		if len(l) > 0 && l[len(l)-1].State == state {
			return l[len(l)-1], nil
		}
		select {
		case <-ctx.Done():
			return Status{}, fmt.Errorf("await %s status of %s (have %d statuses): %w", state, sha, len(l), ctx.Err())
		case <-changed:
		}
	}
}

var statusPath = regexp.MustCompile(`^/repos/([^/]+)/([^/]+)/statuses/([^/]+)$`)
var sha1Hex = regexp.MustCompile(`^[0-9a-fA-F]{40}$`)

// mediaTypes are the Accept values GitHub documents for the REST API; the
// first is what go-github v57 sends.
var mediaTypes = []string{"application/vnd.github.v3+json", "application/vnd.github+json"}

const docs = "https://docs.github.com/rest/commits/statuses#create-a-commit-status"

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	code := s.answer(w, r)
	s.mu.Lock()
	s.requests = append(s.requests, Request{Method: r.Method, Path: r.URL.Path, Code: code, At: time.Now()})
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// answer writes the response to r and returns its code.
func (s *Server) answer(w http.ResponseWriter, r *http.Request) int {
	s.mu.Lock()
	held := s.held
	s.mu.Unlock()
	if held != nil {
		select {
		case <-held:
		case <-r.Context().Done():
			return 0 // the client gave up; nothing is written
		}
	}

	m := statusPath.FindStringSubmatch(r.URL.Path)
	if m == nil || r.Method != http.MethodPost {
		return reply(w, http.StatusNotFound, map[string]any{"message": "Not Found", "documentation_url": "https://docs.github.com/rest"})
	}
	if !s.authorized(r.Header.Get("Authorization")) {
		// GitHub checks credentials before it looks at the repository.
		return reply(w, http.StatusUnauthorized, map[string]any{"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"})
	}
	if s.cfg.Repository != "" && !strings.EqualFold(m[1]+"/"+m[2], s.cfg.Repository) {
		return reply(w, http.StatusNotFound, map[string]any{"message": "Not Found", "documentation_url": docs})
	}
	if !acceptable(r.Header.Get("Accept")) {
		return reply(w, http.StatusUnsupportedMediaType, map[string]any{"message": "Unsupported 'Accept' header", "documentation_url": "https://docs.github.com/rest"})
	}

	now := time.Now()
	s.mu.Lock()
	failing := s.fail > 0
	if failing {
		s.fail--
	}
	primary, secondary, secCode := s.primary, s.secondary, s.secCode
	s.mu.Unlock()
	switch {
	case failing:
		return reply(w, http.StatusInternalServerError, map[string]any{"message": "Server Error"})
	case now.Before(primary):
		h := w.Header()
		h.Set("X-RateLimit-Limit", "5000")
		h.Set("X-RateLimit-Remaining", "0")
		h.Set("X-RateLimit-Used", "5000")
		h.Set("X-RateLimit-Reset", strconv.FormatInt(primary.Unix(), 10))
		h.Set("X-RateLimit-Resource", "core")
		return reply(w, http.StatusForbidden, map[string]any{
			"message":           "API rate limit exceeded for user ID 1.",
			"documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-primary-rate-limits",
		})
	case now.Before(secondary):
		secs := int64((secondary.Sub(now) + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
		return reply(w, secCode, map[string]any{
			"message":           "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
			"documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
		})
	}

	sha := m[3]
	if !sha1Hex.MatchString(sha) {
		return invalid(w, "No commit found for SHA: "+sha, nil)
	}
	var body struct {
		State       *string `json:"state"`
		TargetURL   *string `json:"target_url"`
		Description *string `json:"description"`
		Context     *string `json:"context"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&body); err != nil {
		return reply(w, http.StatusBadRequest, map[string]any{"message": "Problems parsing JSON", "documentation_url": docs})
	}
	st := Status{State: deref(body.State), Description: deref(body.Description), TargetURL: deref(body.TargetURL), Context: deref(body.Context)}
	if st.Context == "" {
		st.Context = "default"
	}
	switch st.State {
	case "pending", "success", "failure", "error":
	default:
		return invalid(w, "Validation Failed", fieldError("state", "state is not included in the list"))
	}
	if utf8.RuneCountInString(st.Description) > 140 {
		return invalid(w, "Validation Failed", fieldError("description", "description is too long (maximum is 140 characters)"))
	}
	if st.TargetURL != "" {
		if u, err := url.Parse(st.TargetURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return invalid(w, "Validation Failed", fieldError("target_url", "target_url is not a valid URL"))
		}
	}

	key := strings.ToLower(sha)
	s.mu.Lock()
	n := 0
	for _, old := range s.statuses[key] {
		if strings.EqualFold(old.Context, st.Context) { // contexts are case-insensitive
			n++
		}
	}
	if n >= s.cfg.MaxPerContext {
		s.mu.Unlock()
		return invalid(w, "Validation Failed", fieldError("context", "This SHA and context has reached the maximum number of statuses."))
	}
	s.nextID++
	st.ID, st.CreatedAt = s.nextID, now.UTC().Truncate(time.Second)
	s.statuses[key] = append(s.statuses[key], st)
	s.mu.Unlock()
	return reply(w, http.StatusCreated, map[string]any{
		"url":         fmt.Sprintf("%srepos/%s/%s/statuses/%s", s.URL(), m[1], m[2], key),
		"id":          st.ID,
		"node_id":     fmt.Sprintf("SC_%d", st.ID),
		"state":       st.State,
		"description": st.Description,
		"target_url":  nullable(st.TargetURL),
		"context":     st.Context,
		"created_at":  st.CreatedAt.Format(time.RFC3339),
		"updated_at":  st.CreatedAt.Format(time.RFC3339),
	})
}

// authorized compares in constant time, as a server holding secrets should.
func (s *Server) authorized(h string) bool {
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || (!strings.EqualFold(scheme, "bearer") && !strings.EqualFold(scheme, "token")) {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.Token)) == 1
}

func acceptable(accept string) bool {
	for part := range strings.SplitSeq(accept, ",") {
		mt, _, _ := strings.Cut(strings.TrimSpace(part), ";")
		for _, ok := range mediaTypes {
			if strings.EqualFold(mt, ok) {
				return true
			}
		}
	}
	return false
}

func fieldError(field, msg string) []map[string]string {
	return []map[string]string{{"resource": "Status", "code": "custom", "field": field, "message": msg}}
}

func invalid(w http.ResponseWriter, msg string, errs []map[string]string) int {
	body := map[string]any{"message": msg, "documentation_url": docs}
	if errs != nil {
		body["errors"] = errs
	}
	return reply(w, http.StatusUnprocessableEntity, body)
}

func reply(w http.ResponseWriter, code int, body any) int {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body) // the client may be gone; nothing to do
	return code
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}
