package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A token in the repository's URL is for git alone: the daemon's log (its
// start line, the failed fetch), its API and its pages show the URL
// redacted.
func TestDaemonShowsNoTokenOfTheRepoURL(t *testing.T) {
	const secret = "SECRET0123456789abcdef"
	// Nothing listens at the repository's address: the start's reconcile
	// fails to fetch, and says so.
	unreachable := freePort(t)
	tests := []struct{ name, repo, shown string }{
		{"token as password", "https://x-access-token:" + secret + "@" + unreachable + "/acme/chat.git", "https://x-access-token:REDACTED@" + unreachable + "/acme/chat.git"},
		{"token as user", "https://" + secret + "@" + unreachable + "/acme/chat.git", "https://REDACTED@" + unreachable + "/acme/chat.git"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			knownHosts := filepath.Join(dir, "known_hosts")
			if err := os.WriteFile(knownHosts, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			t.Setenv("SSH_AUTH_SOCK", filepath.Join(dir, "no-agent"))
			t.Setenv("OPERATOR_API_TOKEN", testAPIToken)
			t.Setenv("OPERATOR_WEBHOOK_SECRET", "")
			t.Setenv("GITHUB_TOKEN", "")
			listen := freePort(t)
			ctx, cancel := context.WithCancel(t.Context())
			out := &syncBuffer{}
			done := make(chan int, 1)
			go func() {
				done <- run(ctx, []string{"run", "--repo", tt.repo, "--state-dir", filepath.Join(dir, "state"), "--listen", listen,
					"--poll", "", "--ssh-known-hosts", knownHosts, "--log-format", "json"}, out, out)
			}()

			get := func(path string) string {
				req, _ := http.NewRequest(http.MethodGet, "http://"+listen+path, nil)
				req.Header.Set("Authorization", "Bearer "+testAPIToken)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					return ""
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return string(b)
			}
			deadline := time.Now().Add(20 * time.Second)
			for !strings.Contains(out.String(), "ls-remote") {
				if time.Now().After(deadline) {
					cancel()
					t.Fatalf("the daemon did not try the repository within 20 s:\n%s", out)
				}
				time.Sleep(50 * time.Millisecond)
			}
			shown := out.String() + get("/") + get("/api/status") + get("/api/deploys")
			cancel()
			select {
			case <-done:
			case <-time.After(time.Minute):
				t.Fatal("the daemon did not stop")
			}
			shown += out.String()

			if strings.Contains(shown, secret) {
				t.Errorf("the token shows:\n%s", shown)
			}
			var start string
			for _, line := range strings.Split(out.String(), "\n") {
				if strings.Contains(line, `"msg":"operator running"`) {
					start = line
				}
			}
			if !strings.Contains(start, `"repo":"`+tt.shown+`"`) {
				t.Errorf("the start line does not name the repository as %s:\n%s", tt.shown, start)
			}
		})
	}
}
