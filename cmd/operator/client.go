package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/clusterops/operator/config"
	"github.com/clusterops/operator/history"
	"github.com/clusterops/operator/server"
)

// apiClient talks to a running daemon's API on `listen`.
type apiClient struct {
	base  string
	token string
	http  *http.Client
	// stateDir is where a follower reads a deploy's end when the daemon
	// has gone (stopped at the deploy's safe point) before it could ask.
	stateDir string
}

// errNoDaemon is returned when no daemon answers on `listen`.
var errNoDaemon = errors.New("no operator daemon answers")

func newAPIClient(cfg *config.Config) *apiClient {
	return &apiClient{base: "http://" + cfg.Listen, token: os.Getenv("OPERATOR_API_TOKEN"), http: &http.Client{Timeout: 30 * time.Second}, stateDir: cfg.StateDir}
}

// up reports whether a daemon answers /healthz.
func (c *apiClient) up(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/healthz", nil)
	resp, err := c.http.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// do calls the API and decodes its JSON answer into out.
func (c *apiClient) do(ctx context.Context, method, path string, body, out any) (int, error) {
	if c.token == "" {
		return 0, errors.New("OPERATOR_API_TOKEN is not set: the API needs it")
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Operator-User", currentUser())
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%w on %s: %v", errNoDaemon, c.base, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode >= 400 {
		var e struct {
			Error string `json:"error"`
		}
		json.Unmarshal(data, &e)
		if e.Error == "" {
			e.Error = strings.TrimSpace(string(data))
		}
		return resp.StatusCode, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, e.Error)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

// workerStatus is the part of the daemon's status the CLI reads.
type workerStatus struct {
	Running *struct {
		ID     int64  `json:"id"`
		Commit string `json:"commit"`
	} `json:"running"`
	Pending int  `json:"pending"`
	Busy    bool `json:"busy"`
	Lock    *struct {
		Reason string    `json:"reason"`
		Who    string    `json:"who"`
		Since  time.Time `json:"since"`
	} `json:"lock"`
	Failed string `json:"failed"`
}

// follow prints a deploy's progress lines until it ends and returns the
// exit code: 0 for success, 1 otherwise.
func (c *apiClient) follow(ctx context.Context, id int64, stdout io.Writer) (int, error) {
	var after int64
	for {
		var page server.LogPage
		if _, err := c.do(ctx, http.MethodGet, fmt.Sprintf("/api/deploys/%d/log?after=%d", id, after), nil, &page); err != nil {
			if errors.Is(err, errNoDaemon) {
				return c.followLocal(ctx, id, after, stdout, err)
			}
			return 1, err
		}
		printProgress(stdout, page.Lines)
		after = page.Next
		if d := page.Deploy; d != nil && d.Result != history.Running && len(page.Lines) == 0 {
			fmt.Fprintf(stdout, "deploy %d: %s: %s\n", d.ID, d.Result, d.Description)
			return exitCode(d), nil
		}
		if len(page.Lines) == 0 {
			select {
			case <-ctx.Done():
				return 1, ctx.Err()
			case <-time.After(300 * time.Millisecond):
			}
		}
	}
}

// followLocal finishes following deploy id from the database in state_dir
// when the daemon went away mid-follow: a daemon that stops records how the
// deploy ended before it exits. gone is why the API failed.
func (c *apiClient) followLocal(ctx context.Context, id, after int64, stdout io.Writer, gone error) (int, error) {
	if _, err := os.Stat(c.stateDir); err != nil {
		return 1, gone
	}
	h, err := history.Open(c.stateDir)
	if err != nil {
		return 1, gone
	}
	defer h.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d, err := h.Get(id)
		if err != nil {
			return 1, gone
		}
		if d.Result != history.Running {
			lines, _ := h.LogLines(id, after, 100000)
			printProgress(stdout, lines)
			fmt.Fprintf(stdout, "deploy %d: %s: %s (read from %s: the daemon has stopped)\n", d.ID, d.Result, d.Description, c.stateDir)
			return exitCode(d), nil
		}
		if time.Now().After(deadline) {
			return 1, fmt.Errorf("%w; deploy %d is still recorded as running: operator logs %d", gone, id, id)
		}
		select {
		case <-ctx.Done():
			return 1, ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// printProgress prints the progress lines among a deploy's log lines.
func printProgress(stdout io.Writer, lines []history.LogLine) {
	for _, l := range lines {
		if l.Stream == "progress" {
			fmt.Fprintln(stdout, l.Text)
		}
	}
}

// exitCode is the exit code for an ended deploy: 0 for success, 1
// otherwise.
func exitCode(d *history.Deploy) int {
	if d.Result == history.Success {
		return 0
	}
	return 1
}

// waitBehind waits until the deploy a queued request waits behind has
// ended and returns the ID of the deploy that ran next, 0 if none did.
func (c *apiClient) waitBehind(ctx context.Context, behind int64) (int64, error) {
	for {
		var st workerStatus
		if _, err := c.do(ctx, http.MethodGet, "/api/status", nil, &st); err != nil {
			return 0, err
		}
		if st.Running != nil && st.Running.ID != behind {
			return st.Running.ID, nil
		}
		if st.Running == nil && st.Pending == 0 && !st.Busy {
			var list []history.Deploy
			if _, err := c.do(ctx, http.MethodGet, "/api/deploys?limit=1", nil, &list); err != nil {
				return 0, err
			}
			if len(list) > 0 && list[0].ID > behind {
				return list[0].ID, nil
			}
			return 0, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// currentUser names the person at the keyboard, for triggers and locks.
func currentUser() string {
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "unknown"
}
