package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/clusterops/operator/history"
	"github.com/clusterops/operator/server"
)

func TestPrintable(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"plain", "Fix the login page", "Fix the login page"},
		{"newline and tab kept", "a\tb\nc", "a\tb\nc"},
		{"unicode kept", "café 日本 ␛ 🚀", "café 日本 ␛ 🚀"},
		{"window title (OSC, BEL)", "\x1b]0;pwned\x07", "␛]0;pwned␇"},
		{"clear screen (CSI)", "\x1b[2J\x1b[H", "␛[2J␛[H"},
		{"carriage return", "ok\rFAIL", "ok␍FAIL"},
		{"C1 CSI", "\u009b31mred", "\uFFFD31mred"},
		{"C1 range ends", "\u0080\u009f\u00a0", "\uFFFD\uFFFD\u00a0"},
		{"NUL and DEL", "a\x00b\x7f", "a␀b␡"},
		{"backspace", "secret\b\b\b\b\b\bpublic", "secret␈␈␈␈␈␈public"},
		{"not UTF-8", "a\xffb\xc3", "a\uFFFDb\uFFFD"},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := printable(tt.in); got != tt.want {
				t.Errorf("printable(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if got := isPrintable(tt.in); got != (tt.in == tt.want) {
				t.Errorf("isPrintable(%q) = %v", tt.in, got)
			}
		})
	}
}

func TestTerminalKeepsCharactersSplitAcrossWrites(t *testing.T) {
	var b bytes.Buffer
	w := newTerminal(&b)
	for _, p := range []string{"caf\xc3", "\xa9 \xe6\x97", "\xa5 \xc2", "\x9b end \xf0\x9f"} {
		if n, err := w.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", p, n, err)
		}
	}
	w.Flush()
	// Flush shows a character that never ended as its bytes: not UTF-8.
	if got, want := b.String(), "café 日 \uFFFD end \uFFFD\uFFFD"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// evil is a commit subject, a log line and a lock reason as an attacker who
// can push (or make a host print) would write them: it retitles the
// window, clears the screen, returns to the line's start to overwrite it,
// and starts a CSI with the C1 control U+009B.
const evil = "fix \x1b]0;pwned\x07 login \x1b[2J page\r OK \u009b31m red"

// evilShown is how the CLI shows evil.
const evilShown = "fix ␛]0;pwned␇ login ␛[2J page␍ OK \uFFFD31m red"

// raw finds what a terminal would obey.
var raw = regexp.MustCompile("[\x00-\x08\x0b-\x1f\x7f\u0080-\u009f]")

func TestCLIShowsControlCharactersHarmlessly(t *testing.T) {
	dir := t.TempDir()
	// status and plan reach no host (there is no manifest), but the pool
	// they open wants a way to authenticate.
	t.Setenv("SSH_AUTH_SOCK", filepath.Join(dir, "no-agent"))
	bare := filepath.Join(dir, "app.git")
	work := filepath.Join(dir, "work")
	gitIn := func(dir string, args ...string) string {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=Dev", "GIT_AUTHOR_EMAIL=dev@example.test",
			"GIT_COMMITTER_NAME=Dev", "GIT_COMMITTER_EMAIL=dev@example.test", "GIT_CONFIG_GLOBAL=/dev/null")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	gitIn(dir, "init", "-q", "--bare", "-b", "main", bare)
	gitIn(dir, "clone", "-q", bare, work)
	gitIn(work, "checkout", "-q", "-b", "main")
	// No deploy.yaml: status and plan show the commit, then fail on the
	// manifest, touching no host.
	gitIn(work, "commit", "-q", "--allow-empty", "--cleanup=verbatim", "-m", evil+"\n\nbody")
	gitIn(work, "push", "-q", "origin", "HEAD:refs/heads/main")
	sha := gitIn(work, "rev-parse", "HEAD")

	state := filepath.Join(dir, "state")
	hist, err := history.Open(state)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := hist.Begin("production", sha, evil, "manual by "+evil)
	if err != nil {
		t.Fatal(err)
	}
	rec.Line("n1", "stdout", evil)
	if err := rec.Finish(history.Failure, "build failed: "+evil); err != nil {
		t.Fatal(err)
	}
	hist.Close()
	knownHosts := filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(knownHosts, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	flags := []string{"--repo", bare, "--state-dir", state, "--poll", "", "--ssh-known-hosts", knownHosts, "--listen", freePort(t)}

	// The same deploy, as a daemon's API gives it.
	started := time.Now().Add(-time.Minute)
	deploy := history.Deploy{ID: 1, Env: "production", Commit: sha, Subject: evil, Trigger: "manual by " + evil,
		Started: started, Ended: started.Add(time.Second), Result: history.Failure, Description: "build failed: " + evil}
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var v any
		switch {
		case r.URL.Path == "/healthz":
			fmt.Fprintln(w, "ok")
			return
		case r.URL.Path == "/api/deploys":
			v = []history.Deploy{deploy}
		case r.URL.Path == "/api/deploys/1/log" && r.URL.Query().Get("after") == "0":
			v = server.LogPage{Deploy: &deploy, Lines: []history.LogLine{{Seq: 1, Time: started, Host: "n1" + evil, Stream: "stdout", Text: evil}}, Next: 1}
		case r.URL.Path == "/api/deploys/1/log":
			v = server.LogPage{Deploy: &deploy, Next: 1}
		default:
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(v)
	}))
	t.Cleanup(api.Close)
	apiFlags := []string{"--state-dir", t.TempDir(), "--repo", bare, "--listen", strings.TrimPrefix(api.URL, "http://")}

	tests := []struct {
		name  string
		args  []string
		token string // OPERATOR_API_TOKEN: set, the command asks the daemon
		want  int    // how many times evil shows, harmlessly
	}{
		{"status", append([]string{"status"}, flags...), "", 2},   // the head's subject, the last deploy's description
		{"plan", append([]string{"plan"}, flags...), "", 1},       // the desired commit's subject
		{"history", append([]string{"history"}, flags...), "", 2}, // the trigger, the description
		{"logs", append([]string{"logs"}, append(flags, "1")...), "", 1},
		{"history through the daemon", append([]string{"history"}, apiFlags...), "token", 2},
		{"logs through the daemon", append([]string{"logs"}, append(apiFlags, "1")...), "token", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("OPERATOR_API_TOKEN", tt.token)
			var stdout, stderr bytes.Buffer
			code := run(t.Context(), tt.args, &stdout, &stderr)
			out := stdout.String() + stderr.String()
			t.Logf("$ operator %s → %d\n%s", tt.args[0], code, out)
			if loc := raw.FindStringIndex(out); loc != nil {
				t.Errorf("the output holds %q raw, at %d", out[loc[0]:loc[1]], loc[0])
			}
			if got := strings.Count(out, evilShown); got < tt.want {
				t.Errorf("the text shows %d times as %q, want %d", got, evilShown, tt.want)
			}
		})
	}
}

// The text log handler colours its output, but what it is given to log
// reaches the terminal as printable shows it.
func TestTextLogShowsControlCharactersHarmlessly(t *testing.T) {
	var b bytes.Buffer
	log, err := newLogger(newTerminal(&b), "text", "info")
	if err != nil {
		t.Fatal(err)
	}
	log.Info("deploy failed "+evil, "revision", evil, "err", fmt.Errorf("build: %s", evil), "hosts", []string{evil})
	colours := regexp.MustCompile("\x1b\\[[0-9;]*m")
	out := colours.ReplaceAllString(b.String(), "")
	if loc := raw.FindStringIndex(strings.TrimSuffix(out, "\n")); loc != nil {
		t.Errorf("the log line holds %q raw, at %d: %q", out[loc[0]:loc[1]], loc[0], out)
	}
	if !strings.Contains(b.String(), "\x1b[") {
		t.Errorf("the text handler lost its colours: %q", b.String())
	}
}
