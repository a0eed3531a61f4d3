package server

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/clusterops/operator/history"
)

// controller is a Controller whose answers the test sets: the worker behind
// the real one needs real hosts, which the daemon's end-to-end test has.
type controller struct {
	sync   func(who string) SyncResult
	locked string
}

func (c *controller) Sync(_ context.Context, who string) SyncResult { return c.sync(who) }
func (c *controller) Rollback(_ context.Context, to, who string) SyncResult {
	if to == "bad" {
		return SyncResult{Status: "refused", Note: "no commit bad"}
	}
	return SyncResult{Status: "started", DeployID: 8, Note: "to " + to + " by " + who, Locked: "production locked"}
}
func (c *controller) Status() any                 { return map[string]string{"lock": c.locked} }
func (c *controller) Lock(reason, _ string) error { c.locked = reason; return nil }
func (c *controller) Unlock(string) error         { c.locked = ""; return nil }

func TestAPIAuthAndRoutes(t *testing.T) {
	hist, err := history.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer hist.Close()
	var asked []string
	c := &controller{sync: func(who string) SyncResult {
		asked = append(asked, who)
		return SyncResult{Status: "started", DeployID: 7}
	}}
	srv := httptest.NewServer(New(Options{Controller: c, History: hist, APIToken: "s3cret"}))
	defer srv.Close()
	off := httptest.NewServer(New(Options{Controller: c, History: hist}))
	defer off.Close()

	tests := []struct {
		name, base, method, path, auth, body string
		want                                 int
		wantBody                             string
	}{
		{"healthz needs no token", srv.URL, "GET", "/healthz", "", "", 200, "ok"},
		{"no token", srv.URL, "POST", "/api/sync", "", "", 401, "bearer"},
		{"wrong token", srv.URL, "POST", "/api/sync", "Bearer nope", "", 401, "bearer"},
		{"token without Bearer", srv.URL, "POST", "/api/sync", "s3cret", "", 401, "bearer"},
		{"sync", srv.URL, "POST", "/api/sync", "Bearer s3cret", "", 202, `"deploy":7`},
		{"sync by GET", srv.URL, "GET", "/api/sync", "Bearer s3cret", "", 405, ""},
		{"API off without a token", off.URL, "POST", "/api/sync", "Bearer ", "", 503, "OPERATOR_API_TOKEN"},
		{"unknown deploy", srv.URL, "GET", "/api/deploys/42", "Bearer s3cret", "", 404, "no such deploy"},
		{"bad deploy ID", srv.URL, "GET", "/api/deploys/x", "Bearer s3cret", "", 400, "positive number"},
		{"bad limit", srv.URL, "GET", "/api/deploys?limit=0", "Bearer s3cret", "", 400, "limit"},
		{"lock without reason", srv.URL, "POST", "/api/lock", "Bearer s3cret", `{"reason":" "}`, 400, "reason is required"},
		{"lock", srv.URL, "POST", "/api/lock", "Bearer s3cret", `{"reason":"incident"}`, 200, "incident"},
		{"unlock", srv.URL, "DELETE", "/api/lock", "Bearer s3cret", "", 200, `"lock":""`},
		{"rollback without a token", srv.URL, "POST", "/api/rollback", "", "", 401, "bearer"},
		{"rollback to the previous release", srv.URL, "POST", "/api/rollback", "Bearer s3cret", "", 202, `"note":"to  by ada","locked":"production locked"`},
		{"rollback to a commit", srv.URL, "POST", "/api/rollback", "Bearer s3cret", `{"to":"abc1234"}`, 202, `"deploy":8,"note":"to abc1234 by ada"`},
		{"rollback to a bad commit", srv.URL, "POST", "/api/rollback", "Bearer s3cret", `{"to":"bad"}`, 409, "no commit bad"},
		{"rollback with a bad body", srv.URL, "POST", "/api/rollback", "Bearer s3cret", `{"to":`, 400, "want a JSON body"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, tt.base+tt.path, strings.NewReader(tt.body))
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			req.Header.Set("X-Operator-User", "ada")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var b strings.Builder
			buf := make([]byte, 4096)
			n, _ := resp.Body.Read(buf)
			b.Write(buf[:n])
			if resp.StatusCode != tt.want || !strings.Contains(b.String(), tt.wantBody) {
				t.Errorf("got %d %q, want %d containing %q", resp.StatusCode, b.String(), tt.want, tt.wantBody)
			}
		})
	}
	if len(asked) != 1 || asked[0] != "ada" {
		t.Errorf("the controller was asked by %v, want once by ada (unauthorised calls must not reach it)", asked)
	}
}

// Every part mounted at once: the routes must not clash, and each request
// reaches its own handler.
func TestAllRoutesTogether(t *testing.T) {
	hist, err := history.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer hist.Close()
	named := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(name)) })
	}
	srv := httptest.NewServer(New(Options{
		Controller: &controller{}, History: hist, APIToken: "t",
		Webhook: named("webhook"), Metrics: named("metrics"), Pages: named("pages"),
	}))
	defer srv.Close()
	for _, tt := range []struct{ method, path, want string }{
		{"POST", "/hooks/github", "webhook"},
		{"GET", "/hooks/github", "webhook"}, // the webhook answers 405 itself
		{"GET", "/metrics", "metrics"},
		{"GET", "/", "pages"},
		{"GET", "/deploys/3", "pages"},
		{"GET", "/deploys/3/events", "pages"},
		{"GET", "/healthz", "ok\n"},
	} {
		req, _ := http.NewRequest(tt.method, srv.URL+tt.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 64)
		n, _ := resp.Body.Read(b)
		resp.Body.Close()
		if got := string(b[:n]); got != tt.want {
			t.Errorf("%s %s: got %q, want %q", tt.method, tt.path, got, tt.want)
		}
	}
}
