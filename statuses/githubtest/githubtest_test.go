package githubtest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

const (
	token = "ghp_standin0123456789"
	sha   = "0123456789abcdef0123456789abcdef01234567"
)

// TestEnforces checks that the stand-in refuses what GitHub refuses, so a
// reporter passing against it would pass against GitHub.
func TestEnforces(t *testing.T) {
	gh := New(t, Config{Token: token, Repository: "acme/chat", MaxPerContext: 2})
	ok := `{"state":"pending","description":"building","target_url":"https://deploy.acme.test/deploys/1","context":"deploy/production"}`
	tests := []struct {
		name     string
		method   string
		path     string
		auth     string
		accept   string
		body     string
		wantCode int
		wantMsg  string
	}{
		{"accepted with bearer", "POST", "/repos/acme/chat/statuses/" + sha, "Bearer " + token, "", ok, 201, ""},
		{"accepted with token scheme", "POST", "/repos/acme/chat/statuses/" + sha, "token " + token, "", `{"state":"success","context":"deploy/staging"}`, 201, ""},
		{"wrong method", "GET", "/repos/acme/chat/statuses/" + sha, "Bearer " + token, "", "", 404, "Not Found"},
		{"wrong path", "POST", "/repos/acme/chat/status/" + sha, "Bearer " + token, "", ok, 404, "Not Found"},
		{"no token", "POST", "/repos/acme/chat/statuses/" + sha, "", "", ok, 401, "Bad credentials"},
		{"wrong token", "POST", "/repos/acme/chat/statuses/" + sha, "Bearer nope", "", ok, 401, "Bad credentials"},
		{"other repository", "POST", "/repos/acme/other/statuses/" + sha, "Bearer " + token, "", ok, 404, "Not Found"},
		{"wrong accept", "POST", "/repos/acme/chat/statuses/" + sha, "Bearer " + token, "text/html", ok, 415, "Accept"},
		{"short sha", "POST", "/repos/acme/chat/statuses/0123456", "Bearer " + token, "", ok, 422, "No commit found"},
		{"bad json", "POST", "/repos/acme/chat/statuses/" + sha, "Bearer " + token, "", `{"state":`, 400, "Problems parsing JSON"},
		{"bad state", "POST", "/repos/acme/chat/statuses/" + sha, "Bearer " + token, "", `{"state":"done"}`, 422, "not included in the list"},
		{"description too long", "POST", "/repos/acme/chat/statuses/" + sha, "Bearer " + token, "", `{"state":"pending","description":"` + strings.Repeat("x", 141) + `"}`, 422, "description is too long"},
		{"140 multi-byte runes fit", "POST", "/repos/acme/chat/statuses/" + sha, "Bearer " + token, "", `{"state":"pending","description":"` + strings.Repeat("é", 140) + `"}`, 201, ""},
		{"bad target url", "POST", "/repos/acme/chat/statuses/" + sha, "Bearer " + token, "", `{"state":"pending","target_url":"not a url","context":"x"}`, 422, "target_url"},
		// MaxPerContext is 2: "deploy/production" had one, "Deploy/Production" is the same context.
		{"second in context", "POST", "/repos/acme/chat/statuses/" + sha, "Bearer " + token, "", `{"state":"success","context":"Deploy/Production"}`, 201, ""},
		{"over the limit per context", "POST", "/repos/acme/chat/statuses/" + sha, "Bearer " + token, "", ok, 422, "maximum number of statuses"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), tt.method, strings.TrimSuffix(gh.URL(), "/")+tt.path, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			accept := tt.accept
			if accept == "" {
				accept = "application/vnd.github.v3+json"
			}
			req.Header.Set("Accept", accept)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.wantCode {
				t.Fatalf("got %d %s, want %d", resp.StatusCode, body, tt.wantCode)
			}
			if !bytes.Contains(body, []byte(tt.wantMsg)) {
				t.Errorf("body %s lacks %q", body, tt.wantMsg)
			}
			if bytes.Contains(body, []byte(token)) {
				t.Errorf("body %s echoes the token", body)
			}
			if tt.wantCode == 201 {
				var got map[string]any
				if err := json.Unmarshal(body, &got); err != nil {
					t.Fatal(err)
				}
				for _, k := range []string{"id", "state", "description", "target_url", "context", "created_at"} {
					if _, ok := got[k]; !ok {
						t.Errorf("answer lacks %q: %s", k, body)
					}
				}
			}
		})
	}
	got := gh.Statuses(strings.ToUpper(sha))
	var states []string
	for _, s := range got {
		states = append(states, s.State+" "+s.Context)
	}
	want := []string{"pending deploy/production", "success deploy/staging", "pending default", "success Deploy/Production"}
	if strings.Join(states, ",") != strings.Join(want, ",") {
		t.Errorf("recorded %q, want %q", states, want)
	}
}

func post(t *testing.T, gh *Server) *http.Response {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), "POST", gh.URL()+"repos/acme/chat/statuses/"+sha, strings.NewReader(`{"state":"success"}`))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/vnd.github.v3+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func TestFaults(t *testing.T) {
	gh := New(t, Config{Token: token})
	gh.FailNext(2)
	for i, want := range []int{500, 500, 201} {
		if got := post(t, gh).StatusCode; got != want {
			t.Fatalf("request %d: got %d, want %d", i, got, want)
		}
	}

	reset := time.Now().Add(3 * time.Second)
	gh.LimitPrimary(reset)
	resp := post(t, gh)
	if resp.StatusCode != 403 || resp.Header.Get("X-RateLimit-Remaining") != "0" || resp.Header.Get("X-RateLimit-Reset") == "" {
		t.Fatalf("primary limit: got %d %v", resp.StatusCode, resp.Header)
	}
	gh.LimitPrimary(time.Time{})

	gh.LimitSecondary(429, 2*time.Second)
	resp = post(t, gh)
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "2" {
		t.Fatalf("secondary limit: got %d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	gh.LimitSecondary(429, 0)

	release := gh.Hold()
	answered := make(chan int)
	go func() { answered <- post(t, gh).StatusCode }()
	select {
	case code := <-answered:
		t.Fatalf("held request answered %d", code)
	case <-time.After(100 * time.Millisecond):
	}
	release()
	if code := <-answered; code != 201 {
		t.Fatalf("released request: got %d", code)
	}

	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if _, err := gh.Await(ctx, sha, "success"); err != nil {
		t.Fatal(err)
	}
	if n := len(gh.Requests()); n != 6 {
		t.Errorf("got %d requests recorded, want 6", n)
	}
}
