// Package server is the operator's HTTP side on `listen`: the GitHub push
// webhook, the API that `operator sync`, `history`, `logs`, `lock` and
// `unlock` talk to (bearer OPERATOR_API_TOKEN), the health check and the
// Prometheus metrics. It never runs a deploy: it hands requests to a
// Controller, which enqueues.
package server

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/clusterops/operator/history"
)

// SyncResult is the answer to a sync request.
type SyncResult struct {
	// Status is "started" (a deploy began for this request), "joined" (the
	// deploy already running serves it), "queued" (it waits behind the
	// running deploy), "noop" (every node runs the head) or "refused"
	// (locked, stopping).
	Status   string `json:"status"`
	DeployID int64  `json:"deploy,omitempty"`
	// Behind is the running deploy a queued request waits for.
	Behind int64  `json:"behind,omitempty"`
	Note   string `json:"note,omitempty"`
	// Locked, for a rollback, says how the environment was locked so that
	// automatic deploys do not undo it.
	Locked string `json:"locked,omitempty"`
}

// Controller is what the server asks of the operator's worker.
type Controller interface {
	// Sync enqueues a reconcile asked for by who and says what became of
	// it, waiting at most until ctx ends for the deploy to start.
	Sync(ctx context.Context, who string) SyncResult
	// Rollback locks the environment and enqueues a deploy of an earlier
	// commit: to (a SHA or a prefix), or the release the nodes ran before
	// their current one when to is "".
	Rollback(ctx context.Context, to, who string) SyncResult
	// Status is the worker's state, as JSON.
	Status() any
	// Lock and Unlock hold and release automatic deploys.
	Lock(reason, who string) error
	// Unlock releases the lock; held triggers run, and with none held a
	// reconcile is enqueued so the environment goes back to the branch.
	Unlock(who string) error
}

// Options configures the server.
type Options struct {
	Controller Controller
	History    *history.Store
	// APIToken guards /api/*; empty turns the API off (every call 503).
	APIToken string
	// Webhook, when set, is mounted on POST /hooks/github.
	Webhook http.Handler
	// Metrics, when set, is mounted on GET /metrics.
	Metrics http.Handler
	// Pages, when set, serves GET / and GET /deploys/….
	Pages http.Handler
	Log   *slog.Logger
}

// New returns the operator's HTTP handler.
func New(o Options) http.Handler {
	s := &srv{o: o}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	if o.Webhook != nil {
		mux.Handle("/hooks/github", o.Webhook)
	}
	if o.Metrics != nil {
		mux.Handle("GET /metrics", o.Metrics)
	}
	if o.Pages != nil {
		mux.Handle("GET /{$}", o.Pages)
		mux.Handle("GET /deploys/", o.Pages)
	}
	mux.Handle("POST /api/sync", s.api(s.sync))
	mux.Handle("POST /api/rollback", s.api(s.rollback))
	mux.Handle("GET /api/status", s.api(s.status))
	mux.Handle("GET /api/deploys", s.api(s.deploys))
	mux.Handle("GET /api/deploys/{id}", s.api(s.deploy))
	mux.Handle("GET /api/deploys/{id}/log", s.api(s.log))
	mux.Handle("POST /api/lock", s.api(s.lock))
	mux.Handle("DELETE /api/lock", s.api(s.unlock))
	return mux
}

type srv struct{ o Options }

// api guards h with the bearer token, compared in constant time.
func (s *srv) api(h func(w http.ResponseWriter, r *http.Request) (any, int, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.o.APIToken == "" {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "the API is off: OPERATOR_API_TOKEN is not set where the daemon runs"})
			return
		}
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(token), []byte(s.o.APIToken)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="operator"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong bearer token"})
			return
		}
		v, code, err := h(w, r)
		if err != nil {
			if code == 0 {
				code = http.StatusInternalServerError
			}
			writeJSON(w, code, map[string]string{"error": err.Error()})
			return
		}
		if code == 0 {
			code = http.StatusOK
		}
		writeJSON(w, code, v)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// who names the person behind an API call: the X-Operator-User header the
// CLI sends ($USER), for the deploy's trigger and the lock.
func who(r *http.Request) string {
	u := strings.TrimSpace(r.Header.Get("X-Operator-User"))
	if u == "" || len(u) > 64 || strings.ContainsAny(u, "\n\r") {
		return "api"
	}
	return u
}

func (s *srv) sync(w http.ResponseWriter, r *http.Request) (any, int, error) {
	// The deploy may wait behind one in progress; the answer must not.
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	return answer(s.o.Controller.Sync(ctx, who(r)))
}

// answer is the reply to a sync or rollback request: 202 when a deploy
// started or waits, 200 when there was nothing to do, 409 when refused.
func answer(res SyncResult) (any, int, error) {
	code := http.StatusAccepted
	switch res.Status {
	case "noop":
		code = http.StatusOK
	case "refused":
		code = http.StatusConflict
	}
	return res, code, nil
}

func (s *srv) rollback(w http.ResponseWriter, r *http.Request) (any, int, error) {
	var body struct {
		To string `json:"to"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&body); err != nil && !errors.Is(err, io.EOF) {
		return nil, http.StatusBadRequest, fmt.Errorf("rollback: want a JSON body {\"to\": \"<commit>\"} or none: %w", err)
	}
	// Finding the previous release reads the hosts; then the deploy may
	// wait behind one in progress, and the answer must not.
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	return answer(s.o.Controller.Rollback(ctx, body.To, who(r)))
}

func (s *srv) status(w http.ResponseWriter, r *http.Request) (any, int, error) {
	return s.o.Controller.Status(), 0, nil
}

func (s *srv) deploys(w http.ResponseWriter, r *http.Request) (any, int, error) {
	limit := 20
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return nil, http.StatusBadRequest, fmt.Errorf("limit %q: want 1 to 1000", v)
		}
		limit = n
	}
	list, err := s.o.History.List(limit)
	return list, 0, err
}

func (s *srv) id(r *http.Request) (int64, error) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 1 {
		return 0, fmt.Errorf("deploy ID %q: want a positive number", r.PathValue("id"))
	}
	return id, nil
}

func (s *srv) deploy(w http.ResponseWriter, r *http.Request) (any, int, error) {
	id, err := s.id(r)
	if err != nil {
		return nil, http.StatusBadRequest, err
	}
	d, err := s.o.History.Get(id)
	if errors.Is(err, history.ErrNotFound) {
		return nil, http.StatusNotFound, err
	}
	return d, 0, err
}

// LogPage is a page of a deploy's log with the deploy as it stands, for
// clients following a live deploy: ask again with after = Next.
type LogPage struct {
	Deploy *history.Deploy   `json:"deploy"`
	Lines  []history.LogLine `json:"lines"`
	Next   int64             `json:"next"`
}

func (s *srv) log(w http.ResponseWriter, r *http.Request) (any, int, error) {
	id, err := s.id(r)
	if err != nil {
		return nil, http.StatusBadRequest, err
	}
	var after int64
	if v := r.URL.Query().Get("after"); v != "" {
		if after, err = strconv.ParseInt(v, 10, 64); err != nil {
			return nil, http.StatusBadRequest, fmt.Errorf("after %q: want a number", v)
		}
	}
	d, err := s.o.History.Get(id)
	if errors.Is(err, history.ErrNotFound) {
		return nil, http.StatusNotFound, err
	}
	if err != nil {
		return nil, 0, err
	}
	lines, err := s.o.History.LogLines(id, after, 1000)
	if err != nil {
		return nil, 0, err
	}
	next := after
	if len(lines) > 0 {
		next = lines[len(lines)-1].Seq
	}
	return LogPage{Deploy: d, Lines: lines, Next: next}, 0, nil
}

func (s *srv) lock(w http.ResponseWriter, r *http.Request) (any, int, error) {
	var body struct {
		Reason string `json:"reason"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&body); err != nil {
		return nil, http.StatusBadRequest, fmt.Errorf("lock: want a JSON body {\"reason\": \"…\"}: %w", err)
	}
	if strings.TrimSpace(body.Reason) == "" {
		return nil, http.StatusBadRequest, errors.New("lock: a reason is required")
	}
	if err := s.o.Controller.Lock(body.Reason, who(r)); err != nil {
		return nil, 0, err
	}
	return s.o.Controller.Status(), 0, nil
}

func (s *srv) unlock(w http.ResponseWriter, r *http.Request) (any, int, error) {
	if err := s.o.Controller.Unlock(who(r)); err != nil {
		return nil, 0, err
	}
	return s.o.Controller.Status(), 0, nil
}
