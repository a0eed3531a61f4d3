package pages

import (
	"bufio"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/clusterops/operator/history"
)

const (
	shaA = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
	shaB = "b0c1d2e3f4a5b6c7d8e9f0011223344556677889"
)

// xssLine and badUTF8 are lines a host may print: markup, and bytes that
// are not UTF-8.
const (
	xssLine = "<script>alert(1)</script>"
	badUTF8 = "caf\xe9 na\xefve \xff\xfe end"
)

func openStore(t testing.TB) *history.Store {
	t.Helper()
	s, err := history.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// waitLines waits until deploy id has n committed log lines: Recorder.Line
// queues, and the history commits in batches.
func waitLines(t *testing.T, s *history.Store, id int64, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		lines, err := s.LogLines(id, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(lines) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("deploy %d: %d log lines committed, want %d", id, len(lines), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// finishedDeploy records a whole deploy of shaA that updated nyc and lon.
func finishedDeploy(t *testing.T, s *history.Store) int64 {
	t.Helper()
	rec, err := s.Begin("production", shaA, "Fix <b>chat</b> & presence", "webhook 42")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now().Add(-3 * time.Second)
	rec.Logf("", "deploying %s", shaA[:12])
	rec.Line("build", "stdout", "Compiling 3 files (.ex)")
	rec.Line("build", "stderr", "warning: variable \"x\" is unused")
	rec.Line("nyc", "stdout", xssLine)
	rec.Line("lon", "stdout", badUTF8)
	rec.Line("", "progress", "rolling out 2/2")
	rec.Phase("build", start, "ok")
	rec.Phase("migrate", start, "skipped: no migrate command")
	rec.Phase("cleanup", start, "rm: releases/\xff: permission denied")
	rec.Node(history.NodeResult{Host: "nyc", From: shaB, To: shaA, Outcome: "updated"})
	rec.Node(history.NodeResult{Host: "lon", From: shaB, To: shaA, Outcome: "updated"})
	rec.Spend("build step", 15*time.Millisecond)
	rec.Spend("health wait", 3*time.Millisecond)
	time.Sleep(30 * time.Millisecond) // some overhead of the operator's own
	if err := rec.Finish(history.Success, "every node on "+shaA[:12]); err != nil {
		t.Fatal(err)
	}
	return rec.ID()
}

// A RunningDeploy converts from the wiring layer's own such struct, tags
// and all (reconcile.RunningDeploy has JSON tags).
var _ = (*RunningDeploy)(&struct {
	ID     int64  `json:"id"`
	Commit string `json:"commit"`
}{})

func get(t *testing.T, h http.Handler, path string) (int, http.Header, string) {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
	return w.Code, w.Header(), w.Body.String()
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func wantIn(t *testing.T, body string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(body, w) {
			t.Errorf("page lacks %q", w)
		}
	}
}

func wantNotIn(t *testing.T, body string, nots ...string) {
	t.Helper()
	for _, n := range nots {
		if strings.Contains(body, n) {
			t.Errorf("page has %q", n)
		}
	}
}

func TestIndex(t *testing.T) {
	s := openStore(t)
	first := finishedDeploy(t, s)
	rec, err := s.Begin("production", shaB, "Second <i>try</i>", "poll")
	if err != nil {
		t.Fatal(err)
	}
	rec.Node(history.NodeResult{Host: "nyc", From: shaA, To: shaA, Outcome: "rolled back after health failed: ok"})
	if err := rec.Finish(history.Failure, "health check failed on nyc"); err != nil {
		t.Fatal(err)
	}
	second := rec.ID()
	since := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

	t.Run("from history", func(t *testing.T) {
		h := New(Options{History: s, Env: "production", Repo: "https://x-access-token:s3cret@github.com/acme/chat.git", Branch: "main", Log: quiet(),
			Status: func() Status {
				return Status{Pending: 2, Failed: shaB, Lock: &history.Lock{Env: "production", Reason: "freeze <until> Monday", Who: "ann", Since: since},
					Running: &RunningDeploy{ID: 7, Commit: shaB}}
			}})
		code, hdr, body := get(t, h, "/")
		if code != http.StatusOK {
			t.Fatalf("GET /: %d", code)
		}
		if got := hdr.Get("Content-Type"); got != "text/html; charset=utf-8" {
			t.Errorf("Content-Type %q", got)
		}
		wantIn(t, body,
			"<h1>production</h1>", "github.com/acme/chat.git", "<code>main</code>",
			// the lock
			"freeze &lt;until&gt; Monday", "ann", "2026-03-04 05:06:07 UTC",
			// what runs now
			`href="/deploys/7"`, "2 more triggers waiting",
			// the deploys, newest first, each linking to its page
			`href="/deploys/1"`, `href="/deploys/2"`, shaA[:12], shaB[:12],
			"Fix &lt;b&gt;chat&lt;/b&gt; &amp; presence", "Second &lt;i&gt;try&lt;/i&gt;",
			"webhook 42", "poll", `badge r-success`, `badge r-failure`, "health check failed on nyc",
			// nodes: nyc from the last deploy, lon from the one before
			"<td>nyc</td>", "<td>lon</td>",
		)
		wantNotIn(t, body, "s3cret", "x-access-token", "<b>chat</b>", "<script")
		recent := body[strings.Index(body, "Recent deploys"):]
		if i, j := strings.Index(recent, `href="/deploys/2"`), strings.Index(recent, `href="/deploys/1"`); i > j {
			t.Error("deploy 2 listed after deploy 1; want newest first")
		}
		// nyc was rolled back to shaA by deploy 2; lon was last set by deploy 1.
		wantIn(t, body, nodeRowHTML("nyc", shaA, second), nodeRowHTML("lon", shaA, first))
	})

	t.Run("nodes from the worker", func(t *testing.T) {
		h := New(Options{History: s, Env: "production", Log: quiet(), Status: func() Status {
			return Status{Nodes: []NodeState{{Name: "ams", Commit: shaB}}}
		}})
		_, _, body := get(t, h, "/")
		wantIn(t, body, "<td>ams</td>", shaB[:12], "Idle")
		wantNotIn(t, body, "<td>nyc</td>", "Locked")
	})

	t.Run("no status func", func(t *testing.T) {
		if err := s.Lock("production", "db maintenance", "bob"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Unlock("production") })
		h := New(Options{History: s, Env: "production", PublicURL: "https://deploy.acme.test/ops/", Log: quiet()})
		_, _, body := get(t, h, "/")
		wantIn(t, body, "db maintenance", "bob", `href="/ops/deploys/1"`, `href="/ops/"`)
	})
}

// nodeRowHTML is the index's row for a node whose commit came from deploy.
func nodeRowHTML(host, sha string, deploy int64) string {
	return "<tr><td>" + host + `</td><td><code title="` + sha + `">` + sha[:12] + `</code></td><td><a href="/deploys/` +
		itoa(deploy) + `">deploy ` + itoa(deploy) + "</a></td></tr>"
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestDeployPage(t *testing.T) {
	s := openStore(t)
	id := finishedDeploy(t, s)
	h := New(Options{History: s, Env: "production", Log: quiet()})
	code, hdr, body := get(t, h, "/deploys/"+itoa(id))
	if code != http.StatusOK {
		t.Fatalf("GET /deploys/%d: %d\n%s", id, code, body)
	}
	if !utf8.ValidString(body) {
		t.Error("page is not valid UTF-8")
	}
	wantIn(t, body,
		// the commit: short SHA and subject, escaped
		`<code title="`+shaA+`">`+shaA[:12]+"</code>", "Fix &lt;b&gt;chat&lt;/b&gt; &amp; presence",
		"webhook 42", "badge r-success", "every node on "+shaA[:12],
		// phases with outcomes
		"<td>build</td>", "<td>migrate</td>", "skipped: no migrate command",
		"<td>cleanup</td>", "rm: releases/\uFFFD: permission denied",
		// node results: host, from → to, outcome
		"<td>nyc</td>", "<td>lon</td>", shaB[:12], "updated",
		// where the time went
		"build step", "15ms", "health wait", "3ms", "operator overhead", "<meter",
		// the log, with the operator's own lines and stderr set apart
		`class="op"`, `class="progress"`, `class="stderr"`, `class="out"`,
		"Compiling 3 files (.ex)", "rolling out 2/2",
		"&lt;script&gt;alert(1)&lt;/script&gt;",
		"caf\uFFFD na\uFFFDve \uFFFD end",
		"result success: every node on "+shaA[:12],
	)
	wantNotIn(t, body, xssLine, "<b>chat</b>", "<script", "http-equiv")
	if csp := hdr.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("Content-Security-Policy %q", csp)
	}
	// The short SHA is 12 characters, not 13.
	if strings.Contains(body, ">"+shaA[:13]+"<") {
		t.Error("short SHA longer than 12")
	}
}

func TestErrors(t *testing.T) {
	s := openStore(t)
	id := finishedDeploy(t, s)
	h := New(Options{History: s, Log: quiet()})
	for _, tc := range []struct {
		path string
		want int
	}{
		{"/deploys/999", http.StatusNotFound},
		{"/deploys/999/events", http.StatusNotFound},
		{"/deploys/abc", http.StatusBadRequest},
		{"/deploys/0", http.StatusBadRequest},
		{"/deploys/-3", http.StatusBadRequest},
		{"/deploys/99999999999999999999", http.StatusBadRequest},
		{"/deploys/abc/events", http.StatusBadRequest},
		{"/deploys/" + itoa(id) + "/events?after=x", http.StatusBadRequest},
		{"/deploys/" + itoa(id) + "/events?after=-1", http.StatusBadRequest},
		{"/deploys/" + itoa(id) + "?before=x", http.StatusBadRequest},
		{"/deploys/" + itoa(id) + "?before=0", http.StatusBadRequest},
		{"/deploys/" + itoa(id) + "?before=-5", http.StatusBadRequest},
		{"/deploys/" + itoa(id) + "?before=2.5", http.StatusBadRequest},
		{"/deploys/" + itoa(id) + "?before=99999999999999999999", http.StatusBadRequest},
		{"/nowhere", http.StatusNotFound},
		{"/deploys/", http.StatusNotFound},
	} {
		t.Run(tc.path, func(t *testing.T) {
			code, hdr, body := get(t, h, tc.path)
			if code != tc.want {
				t.Fatalf("GET %s: %d, want %d", tc.path, code, tc.want)
			}
			if !strings.HasPrefix(hdr.Get("Content-Type"), "text/html") || !strings.Contains(body, "<h1>"+itoa(int64(tc.want))) {
				t.Errorf("GET %s: not an error page:\n%s", tc.path, body)
			}
			// A bad parameter is named.
			if _, q, ok := strings.Cut(tc.path, "?"); ok && !strings.Contains(body, strings.SplitN(q, "=", 2)[0]+" &#34;") {
				t.Errorf("GET %s: the error page does not name the parameter:\n%s", tc.path, body)
			}
		})
	}
}

// runningDeploy begins a deploy and logs n lines, committed when it
// returns.
func runningDeploy(t *testing.T, s *history.Store, n int) *history.Recorder {
	t.Helper()
	rec, err := s.Begin("production", shaA, "Live one", "manual")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rec.Finish(history.Interrupted, "test over") })
	for i := 1; i <= n; i++ {
		rec.Line("build", "stdout", "before "+itoa(int64(i)))
	}
	waitLines(t, s, rec.ID(), n)
	return rec
}

func TestRunningPageWithoutJavaScript(t *testing.T) {
	s := openStore(t)
	rec := runningDeploy(t, s, 3)
	h := New(Options{History: s, Log: quiet()})
	code, hdr, body := get(t, h, "/deploys/"+itoa(rec.ID()))
	if code != http.StatusOK {
		t.Fatalf("GET: %d", code)
	}
	wantIn(t, body, "before 1", "before 2", "before 3", "badge r-running", "so far",
		`<noscript><meta http-equiv="refresh" content="3"></noscript>`,
		`data-running="true"`, `data-seq="3"`, `data-events="/deploys/`+itoa(rec.ID())+`/events"`)

	// The inline script is the embedded one, and the policy allows it by
	// its hash (and the stylesheet by its own).
	m := regexp.MustCompile(`(?s)<script>(.*?)</script>`).FindStringSubmatch(body)
	if m == nil {
		t.Fatal("no script on a running deploy's page")
	}
	sum := sha256.Sum256([]byte(m[1]))
	if csp := hdr.Get("Content-Security-Policy"); !strings.Contains(csp, "'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'") {
		t.Errorf("Content-Security-Policy %q does not allow the page's script", csp)
	}
	m = regexp.MustCompile(`(?s)<style>(.*?)</style>`).FindStringSubmatch(body)
	if m == nil {
		t.Fatal("no stylesheet")
	}
	sum = sha256.Sum256([]byte(m[1]))
	if csp := hdr.Get("Content-Security-Policy"); !strings.Contains(csp, "'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'") {
		t.Errorf("Content-Security-Policy %q does not allow the page's stylesheet", csp)
	}
}

// event is one server-sent event.
type event struct {
	name, id, data string
}

// readEvents reads srv's event stream at path into a channel, closed at
// the end of the stream.
func readEvents(t *testing.T, url string) <-chan event {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s %q\n%s", url, resp.Status, resp.Header.Get("Content-Type"), b)
	}
	ch := make(chan event, 100)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		var e event
		for sc.Scan() {
			l := sc.Text()
			switch {
			case l == "":
				if e.name != "" {
					ch <- e
				}
				e = event{}
			case strings.HasPrefix(l, "event: "):
				e.name = l[len("event: "):]
			case strings.HasPrefix(l, "id: "):
				e.id = l[len("id: "):]
			case strings.HasPrefix(l, "data: "):
				e.data = l[len("data: "):]
			}
		}
	}()
	return ch
}

// next returns the next event other than a record, failing after a
// timeout.
func next(t *testing.T, ch <-chan event) (event, bool) {
	t.Helper()
	for {
		select {
		case e, ok := <-ch:
			if ok && e.name == "record" {
				continue
			}
			return e, ok
		case <-time.After(5 * time.Second):
			t.Fatal("no event within 5s")
		}
	}
}

func wantLine(t *testing.T, ch <-chan event, seq int64, text string) {
	t.Helper()
	e, ok := next(t, ch)
	if !ok {
		t.Fatalf("stream ended; want line %d", seq)
	}
	var l line
	if e.name != "line" || json.Unmarshal([]byte(e.data), &l) != nil {
		t.Fatalf("event %q %s; want line %d", e.name, e.data, seq)
	}
	if l.Seq != seq || l.Text != text || e.id != itoa(seq) {
		t.Fatalf("got line %d (id %s) %q; want %d %q", l.Seq, e.id, l.Text, seq, text)
	}
}

func TestEventsFollowLiveDeploy(t *testing.T) {
	s := openStore(t)
	rec := runningDeploy(t, s, 2)
	srv := httptest.NewServer(New(Options{History: s, Log: quiet()}))
	defer srv.Close()
	url := srv.URL + "/deploys/" + itoa(rec.ID()) + "/events"

	// What the page holds is 2 lines: the stream starts after them.
	ch := readEvents(t, url+"?after=1")
	wantLine(t, ch, 2, "before 2")
	rec.Line("nyc", "stdout", "after 1")
	rec.Line("nyc", "stderr", xssLine)
	rec.Line("lon", "stdout", badUTF8)
	wantLine(t, ch, 3, "after 1")
	wantLine(t, ch, 4, xssLine) // JSON: the script sets it as text
	wantLine(t, ch, 5, "caf\uFFFD na\uFFFDve \uFFFD end")
	time.Sleep(100 * time.Millisecond) // a separate batch: lines that arrive while followed
	rec.Line("lon", "stdout", "after 4")
	wantLine(t, ch, 6, "after 4")
	if err := rec.Finish(history.Failure, "health check failed on lon"); err != nil {
		t.Fatal(err)
	}
	wantLine(t, ch, 7, "result failure: health check failed on lon")
	e, ok := next(t, ch)
	if !ok || e.name != "end" {
		t.Fatalf("got %q %s; want the end event", e.name, e.data)
	}
	var end endEvent
	if err := json.Unmarshal([]byte(e.data), &end); err != nil {
		t.Fatal(err)
	}
	if end.Result != history.Failure || end.Description != "health check failed on lon" || end.Seq != 7 || !strings.Contains(end.HTML, "badge r-failure") {
		t.Errorf("end event %+v", end)
	}
	if e, ok := next(t, ch); ok {
		t.Errorf("event %q after the end; want the stream closed", e.name)
	}
}

// TestEventsPollDeployOfAnotherStore follows a deploy that another Store
// runs, as when two operator processes share a state_dir: Subscribe cannot
// follow it, so the stream reads the log again until the deploy ends.
func TestEventsPollDeployOfAnotherStore(t *testing.T) {
	dir := t.TempDir()
	runner, err := history.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer runner.Close()
	reader, err := history.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	rec, err := runner.Begin("production", shaA, "Elsewhere", "manual")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(New(Options{History: reader, Log: quiet()}))
	defer srv.Close()
	ch := readEvents(t, srv.URL+"/deploys/"+itoa(rec.ID())+"/events")
	rec.Line("nyc", "stdout", "polled 1")
	wantLine(t, ch, 1, "polled 1")
	rec.Line("nyc", "stdout", "polled 2")
	wantLine(t, ch, 2, "polled 2")
	if err := rec.Finish(history.Success, "done"); err != nil {
		t.Fatal(err)
	}
	wantLine(t, ch, 3, "result success: done")
	if e, _ := next(t, ch); e.name != "end" {
		t.Fatalf("got %q; want the end event", e.name)
	}
}

func TestEventsOfEndedDeploy(t *testing.T) {
	s := openStore(t)
	id := finishedDeploy(t, s)
	srv := httptest.NewServer(New(Options{History: s, Log: quiet()}))
	defer srv.Close()
	all, err := s.LogLines(id, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, after := range []int64{0, 5, int64(len(all))} {
		ch := readEvents(t, srv.URL+"/deploys/"+itoa(id)+"/events?after="+itoa(after))
		for _, l := range all[after:] {
			wantLine(t, ch, l.Seq, strings.ToValidUTF8(l.Text, "\uFFFD"))
		}
		if e, _ := next(t, ch); e.name != "end" {
			t.Fatalf("after %d: got %q; want the end event", after, e.name)
		}
		if _, ok := next(t, ch); ok {
			t.Fatal("stream goes on after the end event")
		}
	}
}

func TestCleanText(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain", "plain"},
		{"\x1b[1;32mgreen\x1b[0m done", "green done"},
		{"tab\there", "tab\there"},
		{"bell\a", "bell\u2407"},
		{"\xff\xfe", "\uFFFD"},
		{"nul\x00", "nul\u2400"},
	} {
		if got := cleanText(tc.in); got != tc.want {
			t.Errorf("cleanText(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestRedactRepo(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"git@github.com:acme/chat.git", "git@github.com:acme/chat.git"},
		{"https://github.com/acme/chat.git", "https://github.com/acme/chat.git"},
		{"https://ghp_token@github.com/acme/chat.git", "https://github.com/acme/chat.git"},
		{"https://user:pw@git.acme.test/chat.git", "https://git.acme.test/chat.git"},
		{"ssh://git:pw@git.acme.test/chat.git", "ssh://git@git.acme.test/chat.git"},
		{"ssh://git@git.acme.test/chat.git", "ssh://git@git.acme.test/chat.git"},
		{"/srv/git/chat", "/srv/git/chat"},
	} {
		if got := redactRepo(tc.in); got != tc.want {
			t.Errorf("redactRepo(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
