package pages

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterops/operator/history"
)

// TestChromiumFollowsLiveLog opens a running deploy's page in headless
// Chromium, then logs more lines and finishes the deploy, and checks that
// the page's script put them in the DOM: the page was served once, before
// those lines existed, and never reloaded, so only the script can have
// added them. It also checks that the page raised no console error, no
// exception, no policy violation and no dialog (the logged
// <script>alert(1)</script> must stay text).
//
// Chromium is driven through the DevTools protocol over
// --remote-debugging-pipe: plain file descriptors, so the standard library
// is all the client needs.
func TestChromiumFollowsLiveLog(t *testing.T) {
	bin := chromiumPath(t)
	s := openStore(t)
	rec := runningDeploy(t, s, 3)
	id := itoa(rec.ID())

	var pageHits, eventHits atomic.Int32
	streaming := make(chan struct{}, 1)
	pages := New(Options{History: s, Env: "production", Repo: "git@github.com:acme/chat.git", Branch: "main", Log: quiet()})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/deploys/" + id:
			pageHits.Add(1)
		case "/deploys/" + id + "/events":
			eventHits.Add(1)
			select {
			case streaming <- struct{}{}:
			default:
			}
		}
		pages.ServeHTTP(w, r)
	}))
	defer srv.Close()

	b := startChromium(t, bin)
	b.navigate(srv.URL + "/deploys/" + id)
	b.waitFor(`document.readyState === "complete"`)
	if got := b.eval(`document.querySelectorAll("#log > div").length`); got != float64(3) {
		t.Fatalf("%v lines in the page as served; want 3", got)
	}
	b.eval(`window.probe = "same document"; 0`)
	select {
	case <-streaming:
	case <-time.After(10 * time.Second):
		t.Fatal("the page's script did not open the event stream within 10s")
	}
	b.waitFor(`document.getElementById("live").textContent.includes("live")`)

	// Lines logged while the page is open, in separate batches.
	rec.Line("nyc", "stdout", "live line 1")
	time.Sleep(200 * time.Millisecond)
	rec.Line("nyc", "stderr", xssLine)
	rec.Line("lon", "stdout", badUTF8)
	rec.Phase("rollout", time.Now().Add(-time.Second), "ok")
	rec.Node(history.NodeResult{Host: "nyc", From: shaB, To: shaA, Outcome: "updated"})
	time.Sleep(200 * time.Millisecond)
	rec.Line("lon", "stdout", "live line 2")
	if err := rec.Finish(history.Success, "every node on "+shaA[:12]); err != nil {
		t.Fatal(err)
	}

	b.waitFor(`document.getElementById("log").textContent.includes("result success") &&
		document.querySelector("#record .badge").textContent === "success"`)
	checks := []struct{ js, what string }{
		{`window.probe === "same document"`, "the page was not reloaded"},
		{`document.querySelectorAll("#log > div").length === 9`, "the log has its 3 + 6 lines"},
		{`document.getElementById("L4").textContent.includes("live line 1")`, "a live line in order"},
		{`document.querySelector("#L5 .x").textContent === "<script>alert(1)</script>"`, "markup from a host stays text"},
		{`document.querySelectorAll("#log script, #log b").length === 0`, "no element made from a line"},
		{`document.getElementById("L5").className === "stderr"`, "stderr set apart"},
		{`document.querySelector("#L6 .x").textContent === "caf\uFFFD na\uFFFDve \uFFFD end"`, "bytes that are not UTF-8 shown as U+FFFD"},
		{`document.getElementById("L7").className === "op"`, "the operator's lines set apart"},
		{`document.getElementById("record").textContent.includes("rollout")`, "the phase logged live is in the record"},
		{`document.getElementById("record").textContent.includes("updated")`, "the node result recorded live"},
		{`document.getElementById("live").textContent === "The deploy ended: success."`, "the note tells the end"},
		{`document.getElementById("log").getAttribute("data-seq") === "9"`, "the script's place in the log"},
	}
	for _, c := range checks {
		if b.eval(c.js) != true {
			t.Errorf("%s: false: %s", c.what, c.js)
		}
	}
	// A moment for anything late: a reconnect, an error after the end.
	time.Sleep(300 * time.Millisecond)
	if n := pageHits.Load(); n != 1 {
		t.Errorf("the page was requested %d times; want once", n)
	}
	if n := eventHits.Load(); n != 1 {
		t.Errorf("the event stream was requested %d times; want once (no reconnect after the end)", n)
	}
	for _, e := range b.problems() {
		t.Errorf("browser: %s", e)
	}
}

// chromiumPath finds Chromium, failing (never skipping) without it: the
// test suite must not pass on a machine that could not run this test.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium is not installed: scripts/install-deps.sh installs it (Debian package chromium), as `make test` does")
	return ""
}

// browser is headless Chromium and a DevTools protocol session on one tab.
type browser struct {
	t       *testing.T
	cmds    *os.File // Chromium's fd 3: messages to it
	session string

	mu       sync.Mutex
	nextID   int
	replies  map[int]chan cdpMessage
	troubles []string // console errors, exceptions, violations, dialogs
}

// cdpMessage is a DevTools protocol message, both ways.
type cdpMessage struct {
	ID        int             `json:"id,omitempty"`
	Method    string          `json:"method,omitempty"`
	Params    json.RawMessage `json:"params,omitempty"`
	SessionID string          `json:"sessionId,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"`
	Error     *struct {
		Message string `json:"message"`
	} `json:"error,omitempty"`
}

func startChromium(t *testing.T, bin string) *browser {
	t.Helper()
	toChrome, cmds, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	events, fromChrome, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--disable-quic", "--no-first-run", "--no-default-browser-check",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-extensions", "--disable-default-apps", "--mute-audio",
		"--user-data-dir="+t.TempDir(), "--remote-debugging-pipe", "about:blank")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.ExtraFiles = []*os.File{toChrome, fromChrome} // fds 3 and 4
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	toChrome.Close()
	fromChrome.Close()
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	b := &browser{t: t, cmds: cmds, replies: map[int]chan cdpMessage{}}
	go b.read(events)
	t.Cleanup(func() {
		b.call("", "Browser.close", nil)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		cmds.Close()
		events.Close()
		if t.Failed() {
			t.Logf("browser troubles: %q", b.problems())
			t.Logf("chromium's stderr:\n%s", stderr.String())
		}
	})

	var target struct {
		TargetID string `json:"targetId"`
	}
	b.decode(b.call("", "Target.createTarget", map[string]any{"url": "about:blank"}), &target)
	var attached struct {
		SessionID string `json:"sessionId"`
	}
	b.decode(b.call("", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}), &attached)
	b.session = attached.SessionID
	for _, m := range []string{"Runtime.enable", "Log.enable", "Page.enable"} {
		b.call(b.session, m, nil)
	}
	return b
}

// read takes Chromium's NUL-terminated messages: replies to their callers,
// events of trouble to the list.
func (b *browser) read(r *os.File) {
	br := bufio.NewReader(r)
	for {
		raw, err := br.ReadBytes(0)
		if err != nil {
			b.mu.Lock()
			for id, ch := range b.replies {
				close(ch)
				delete(b.replies, id)
			}
			b.mu.Unlock()
			return
		}
		var m cdpMessage
		if err := json.Unmarshal(raw[:len(raw)-1], &m); err != nil {
			continue
		}
		b.mu.Lock()
		if m.ID != 0 {
			if ch, ok := b.replies[m.ID]; ok {
				ch <- m
				delete(b.replies, m.ID)
			}
		} else if trouble := troubleOf(m); trouble != "" {
			b.troubles = append(b.troubles, trouble)
		}
		b.mu.Unlock()
	}
}

// troubleOf describes an event that means the page went wrong, or is "".
func troubleOf(m cdpMessage) string {
	switch m.Method {
	case "Runtime.exceptionThrown":
		var p struct {
			Details struct {
				Text      string `json:"text"`
				Exception struct {
					Description string `json:"description"`
				} `json:"exception"`
			} `json:"exceptionDetails"`
		}
		json.Unmarshal(m.Params, &p)
		return "exception: " + p.Details.Text + " " + p.Details.Exception.Description
	case "Runtime.consoleAPICalled":
		var p struct {
			Type string            `json:"type"`
			Args []json.RawMessage `json:"args"`
		}
		json.Unmarshal(m.Params, &p)
		if p.Type == "error" || p.Type == "assert" {
			return fmt.Sprintf("console.%s: %s", p.Type, p.Args)
		}
	case "Log.entryAdded": // network failures, policy violations, …
		var p struct {
			Entry struct {
				Level, Source, Text, URL string
			} `json:"entry"`
		}
		json.Unmarshal(m.Params, &p)
		if p.Entry.Level == "error" {
			return fmt.Sprintf("%s error: %s %s", p.Entry.Source, p.Entry.Text, p.Entry.URL)
		}
	case "Page.javascriptDialogOpening":
		return "dialog opened: " + string(m.Params)
	}
	return ""
}

func (b *browser) problems() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.troubles...)
}

// call sends a command and waits for its result.
func (b *browser) call(session, method string, params any) json.RawMessage {
	b.t.Helper()
	b.mu.Lock()
	b.nextID++
	id := b.nextID
	ch := make(chan cdpMessage, 1)
	b.replies[id] = ch
	b.mu.Unlock()
	msg := map[string]any{"id": id, "method": method}
	if params != nil {
		msg["params"] = params
	}
	if session != "" {
		msg["sessionId"] = session
	}
	raw, err := json.Marshal(msg)
	if err != nil {
		b.t.Fatal(err)
	}
	if _, err := b.cmds.Write(append(raw, 0)); err != nil {
		if method == "Browser.close" {
			return nil
		}
		b.t.Fatalf("%s: %v", method, err)
	}
	select {
	case m, ok := <-ch:
		if !ok {
			if method == "Browser.close" {
				return nil
			}
			b.t.Fatalf("%s: chromium went away", method)
		}
		if m.Error != nil {
			b.t.Fatalf("%s: %s", method, m.Error.Message)
		}
		return m.Result
	case <-time.After(10 * time.Second):
		if method == "Browser.close" {
			return nil
		}
		b.t.Fatalf("%s: no answer from chromium within 10s", method)
	}
	return nil
}

func (b *browser) decode(raw json.RawMessage, v any) {
	b.t.Helper()
	if err := json.Unmarshal(raw, v); err != nil {
		b.t.Fatalf("decode %s: %v", raw, err)
	}
}

func (b *browser) navigate(url string) {
	b.t.Helper()
	var r struct {
		ErrorText string `json:"errorText"`
	}
	b.decode(b.call(b.session, "Page.navigate", map[string]any{"url": url}), &r)
	if r.ErrorText != "" {
		b.t.Fatalf("navigate to %s: %s", url, r.ErrorText)
	}
}

// eval returns the value of a JavaScript expression in the page.
func (b *browser) eval(js string) any {
	b.t.Helper()
	var r struct {
		Result struct {
			Value any `json:"value"`
		} `json:"result"`
		Exception *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	b.decode(b.call(b.session, "Runtime.evaluate", map[string]any{"expression": js, "returnByValue": true}), &r)
	if r.Exception != nil {
		b.t.Fatalf("evaluate %s: %s", js, r.Exception.Text)
	}
	return r.Result.Value
}

// waitFor waits until a JavaScript expression is true in the page.
func (b *browser) waitFor(js string) {
	b.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for b.eval(js) != true {
		if time.Now().After(deadline) {
			html, _ := b.eval(`document.documentElement.outerHTML`).(string)
			b.t.Fatalf("not true within 10s: %s\npage now:\n%s", strings.TrimSpace(js), html)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
