package gitsrc

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The payload samples in testdata/github-webhooks are GitHub's example
// payloads (MIT, LICENSE beside them, kept unchanged). All three push
// samples are a tag deletion; the tests turn them into other pushes by
// editing the decoded JSON.

var testSecret = []byte("a webhook secret for tests")

const (
	testRepo   = "Codertocat/Hello-World" // repository.full_name in the samples
	testBranch = "main"
	shaA       = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"
	shaB       = "4544205a385319fd846d5df4ed2e3b8173529d78"
)

// fixture decodes a payload sample.
func fixture(t testing.TB, name string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "github-webhooks", name))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return m
}

func encode(t testing.TB, m map[string]any) []byte {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// branchPush turns the sample name into a push of new commits to ref,
// ending at after.
func branchPush(t testing.TB, name, ref, after string) map[string]any {
	t.Helper()
	m := fixture(t, name)
	m["ref"] = ref
	m["after"] = after
	m["created"] = false
	m["deleted"] = false
	m["head_commit"] = map[string]any{"id": after, "message": "Fix the login page\n\nIt lost the session on reload."}
	return m
}

func pushBody(t testing.TB, ref, after string) []byte {
	t.Helper()
	return encode(t, branchPush(t, "push-payload.json", ref, after))
}

// delivery is one request as GitHub would send it, signed with testSecret
// unless told otherwise.
type delivery struct {
	method  string // POST when empty
	event   string
	id      string
	body    []byte
	header  http.Header // set over the signed defaults; an empty value deletes
	chunked bool        // no Content-Length, as a streaming sender would
}

// headers are the delivery's request headers.
func (d delivery) headers() http.Header {
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", "GitHub-Hookshot/044aadd")
	h.Set("X-GitHub-Event", d.event)
	h.Set("X-GitHub-Delivery", d.id)
	h.Set("X-GitHub-Hook-ID", "292430182")
	h.Set("X-Hub-Signature-256", signature(testSecret, d.body))
	for k, v := range d.header {
		if v[0] == "" {
			h.Del(k)
		} else {
			h[http.CanonicalHeaderKey(k)] = v
		}
	}
	return h
}

func (d delivery) methodAndBody() (string, io.Reader) {
	method := d.method
	if method == "" {
		method = http.MethodPost
	}
	var body io.Reader = bytes.NewReader(d.body)
	if d.chunked {
		body = io.MultiReader(body) // hides the length, so none is sent
	}
	return method, body
}

// request is the delivery as a handler receives it.
func (d delivery) request() *http.Request {
	method, body := d.methodAndBody()
	r := httptest.NewRequest(method, WebhookPath, body)
	r.Header = d.headers()
	return r
}

// send posts the delivery to the server at base and returns the status
// and answer.
func (d delivery) send(client *http.Client, base string) (int, string, error) {
	method, body := d.methodAndBody()
	r, err := http.NewRequest(method, base+WebhookPath, body)
	if err != nil {
		return 0, "", err
	}
	r.Header = d.headers()
	resp, err := client.Do(r)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	text, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(text), err
}

// recorder collects what a Webhook hands its owner.
type recorder struct {
	mu       sync.Mutex
	pushes   []Push
	outcomes map[string]int
}

func (rec *recorder) options() WebhookOptions {
	rec.outcomes = map[string]int{}
	return WebhookOptions{
		Secret:     testSecret,
		Repository: "codertocat/hello-world", // GitHub's case differs: names are case-insensitive
		Branch:     testBranch,
		OnPush: func(p Push) {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			rec.pushes = append(rec.pushes, p)
		},
		OnOutcome: func(o string) {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			rec.outcomes[o]++
		},
	}
}

func TestWebhookSignatureMatchesGitHubsTestVector(t *testing.T) {
	// From GitHub's "Validating webhook deliveries".
	secret, body := []byte("It's a Secret to Everybody"), []byte("Hello, World!")
	const want = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
	if got := signature(secret, body); got != want {
		t.Fatalf("signature = %s, want %s", got, want)
	}
	// The handler takes the documented header as GitHub writes it.
	w, err := NewWebhook(WebhookOptions{Secret: secret, Repository: testRepo, Branch: testBranch, OnPush: func(Push) {}})
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodPost, WebhookPath, strings.NewReader(string(body)))
	r.Header.Set("X-GitHub-Event", "ping")
	r.Header.Set("X-Hub-Signature-256", want)
	rw := httptest.NewRecorder()
	w.ServeHTTP(rw, r)
	if rw.Code != http.StatusOK {
		t.Fatalf("ping signed with the test vector: %d %s", rw.Code, rw.Body)
	}
}

func TestWebhookDeliveries(t *testing.T) {
	valid := pushBody(t, "refs/heads/main", shaA)
	wantPush := Push{
		Delivery:    "72d3162e-cc78-11e3-81ab-4c9367dc0958",
		Repository:  testRepo,
		Branch:      testBranch,
		Before:      "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
		After:       shaA,
		Pusher:      "Codertocat",
		HeadSubject: "Fix the login page",
	}
	forced := branchPush(t, "push-with-organization.payload.json", "refs/heads/main", shaB)
	forced["forced"] = true
	otherRepo := branchPush(t, "push-payload.json", "refs/heads/main", shaA)
	otherRepo["repository"].(map[string]any)["full_name"] = "Codertocat/Other"
	tag := branchPush(t, "push-payload.json", "refs/tags/v1.2.0", shaA)
	branchDeletion := fixture(t, "push-payload.json")
	branchDeletion["ref"] = "refs/heads/main"
	zerosNotDeleted := fixture(t, "push-1.payload.json")
	zerosNotDeleted["ref"] = "refs/heads/main"
	zerosNotDeleted["deleted"] = false
	notASHA := branchPush(t, "push-payload.json", "refs/heads/main", "main; rm -rf /")
	sha1Header := func(body []byte) string {
		h := hmac.New(sha1.New, testSecret)
		h.Write(body)
		return "sha1=" + hex.EncodeToString(h.Sum(nil))
	}
	push := func(body []byte) delivery {
		return delivery{event: "push", id: wantPush.Delivery, body: body}
	}
	with := func(d delivery, kv ...string) delivery {
		d.header = http.Header{}
		for i := 0; i < len(kv); i += 2 {
			d.header[kv[i]] = []string{kv[i+1]}
		}
		return d
	}
	form := push([]byte(url.Values{"payload": {string(valid)}}.Encode()))
	form = with(form, "Content-Type", "application/x-www-form-urlencoded")

	tests := []struct {
		name        string
		maxBody     int64
		before      []delivery // sent first, answered as they may be
		send        delivery
		wantStatus  int
		wantText    string // the answer starts with it
		wantOutcome string
		wantPushes  []Push // every OnPush call, those of before included
	}{
		{name: "push to the tracked branch", send: push(valid),
			wantStatus: 202, wantText: "accepted: main at " + shaA, wantOutcome: OutcomeAccepted, wantPushes: []Push{wantPush}},
		{name: "push with organization, forced", send: push(encode(t, forced)),
			wantStatus: 202, wantText: "accepted", wantOutcome: OutcomeAccepted,
			wantPushes: []Push{{Delivery: wantPush.Delivery, Repository: testRepo, Branch: testBranch, Before: wantPush.Before,
				After: shaB, Pusher: "Codertocat", HeadSubject: "Fix the login page", Forced: true}}},
		{name: "form-encoded push", send: form,
			wantStatus: 202, wantText: "accepted", wantOutcome: OutcomeAccepted, wantPushes: []Push{wantPush}},
		{name: "redelivery", before: []delivery{push(valid)}, send: push(valid),
			wantStatus: 200, wantText: "duplicate", wantOutcome: OutcomeDuplicate, wantPushes: []Push{wantPush}},
		{name: "same push under a new delivery ID", before: []delivery{push(valid)}, send: delivery{event: "push", id: "other-guid", body: valid},
			wantStatus: 202, wantText: "accepted", wantOutcome: OutcomeAccepted,
			wantPushes: []Push{wantPush, func() Push { p := wantPush; p.Delivery = "other-guid"; return p }()}},

		{name: "wrong secret", send: with(push(valid), "X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac([]byte("guess"), valid))),
			wantStatus: 401, wantText: "unauthorized", wantOutcome: OutcomeUnauthorized},
		{name: "signature of another body", send: with(push(valid), "X-Hub-Signature-256", signature(testSecret, pushBody(t, "refs/heads/main", shaB))),
			wantStatus: 401, wantText: "unauthorized", wantOutcome: OutcomeUnauthorized},
		{name: "no signature", send: with(push(valid), "X-Hub-Signature-256", ""),
			wantStatus: 401, wantText: "unauthorized", wantOutcome: OutcomeUnauthorized},
		{name: "only the SHA-1 signature", send: with(push(valid), "X-Hub-Signature-256", "", "X-Hub-Signature", sha1Header(valid)),
			wantStatus: 401, wantText: "unauthorized: X-Hub-Signature-256 required", wantOutcome: OutcomeUnauthorized},
		{name: "SHA-1 signature in the SHA-256 header", send: with(push(valid), "X-Hub-Signature-256", sha1Header(valid)),
			wantStatus: 401, wantText: "unauthorized", wantOutcome: OutcomeUnauthorized},
		{name: "signature not hex", send: with(push(valid), "X-Hub-Signature-256", "sha256="+strings.Repeat("z", 64)),
			wantStatus: 401, wantText: "unauthorized", wantOutcome: OutcomeUnauthorized},
		{name: "signature without prefix", send: with(push(valid), "X-Hub-Signature-256", strings.TrimPrefix(signature(testSecret, valid), "sha256=")),
			wantStatus: 401, wantText: "unauthorized", wantOutcome: OutcomeUnauthorized},
		{name: "unsigned ping", send: with(delivery{event: "ping", id: "p", body: encode(t, fixture(t, "ping-payload.json"))}, "X-Hub-Signature-256", ""),
			wantStatus: 401, wantText: "unauthorized", wantOutcome: OutcomeUnauthorized},

		{name: "over MaxBody", maxBody: 1024, send: push(valid),
			wantStatus: 413, wantText: "too large", wantOutcome: OutcomeTooLarge},
		{name: "over MaxBody without Content-Length", maxBody: 1024, send: delivery{event: "push", id: "c", body: valid, chunked: true},
			wantStatus: 413, wantText: "too large", wantOutcome: OutcomeTooLarge},
		{name: "exactly MaxBody", maxBody: int64(len(valid)), send: push(valid),
			wantStatus: 202, wantText: "accepted", wantOutcome: OutcomeAccepted, wantPushes: []Push{wantPush}},

		{name: "ping", send: delivery{event: "ping", id: "p", body: encode(t, fixture(t, "ping-payload.json"))},
			wantStatus: 200, wantText: "pong", wantOutcome: OutcomePing},
		{name: "other event", send: delivery{event: "issues", id: "i", body: []byte(`{"action":"opened"}`)},
			wantStatus: 200, wantText: "ignored: event issues", wantOutcome: OutcomeIgnored},
		{name: "tag push", send: push(encode(t, tag)),
			wantStatus: 200, wantText: "ignored: tag v1.2.0", wantOutcome: OutcomeIgnored},
		{name: "tag deletion, as in the sample", send: push(encode(t, fixture(t, "push-payload.json"))),
			wantStatus: 200, wantText: "ignored: deletion", wantOutcome: OutcomeIgnored},
		{name: "branch deletion", send: push(encode(t, branchDeletion)),
			wantStatus: 200, wantText: "ignored: deletion of refs/heads/main", wantOutcome: OutcomeIgnored},
		{name: "after all zeros", send: push(encode(t, zerosNotDeleted)),
			wantStatus: 200, wantText: "ignored: deletion", wantOutcome: OutcomeIgnored},
		{name: "other branch", send: push(pushBody(t, "refs/heads/feature/login", shaA)),
			wantStatus: 200, wantText: "ignored: branch feature/login", wantOutcome: OutcomeIgnored},
		{name: "branch named like the tracked one but longer", send: push(pushBody(t, "refs/heads/main2", shaA)),
			wantStatus: 200, wantText: "ignored: branch main2", wantOutcome: OutcomeIgnored},
		{name: "other ref namespace", send: push(pushBody(t, "refs/notes/commits", shaA)),
			wantStatus: 200, wantText: "ignored: ref refs/notes/commits", wantOutcome: OutcomeIgnored},
		{name: "other repository", send: push(encode(t, otherRepo)),
			wantStatus: 200, wantText: "ignored: other repository", wantOutcome: OutcomeIgnored},

		{name: "malformed JSON", send: push([]byte(`{"ref": "refs/heads/main", "after": `)),
			wantStatus: 400, wantText: "bad request", wantOutcome: OutcomeBadRequest},
		{name: "JSON of the wrong shape", send: push([]byte(`["refs/heads/main"]`)),
			wantStatus: 400, wantText: "bad request", wantOutcome: OutcomeBadRequest},
		{name: "empty object", send: push([]byte(`{}`)),
			wantStatus: 400, wantText: "bad request", wantOutcome: OutcomeBadRequest},
		{name: "after is not a SHA", send: push(encode(t, notASHA)),
			wantStatus: 400, wantText: "bad request: after", wantOutcome: OutcomeBadRequest},
		{name: "push without delivery ID", send: with(push(valid), "X-GitHub-Delivery", ""),
			wantStatus: 400, wantText: "bad request: X-GitHub-Delivery", wantOutcome: OutcomeBadRequest},
		{name: "no event header", send: with(push(valid), "X-GitHub-Event", ""),
			wantStatus: 400, wantText: "bad request: X-GitHub-Event", wantOutcome: OutcomeBadRequest},

		{name: "GET", send: delivery{method: http.MethodGet},
			wantStatus: 405, wantText: "method not allowed", wantOutcome: OutcomeMethodNotAllowed},
		{name: "PUT of a signed push", send: delivery{method: http.MethodPut, event: "push", id: "x", body: valid},
			wantStatus: 405, wantText: "method not allowed", wantOutcome: OutcomeMethodNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rec recorder
			opts := rec.options()
			opts.MaxBody = tt.maxBody
			w, err := NewWebhook(opts)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range tt.before {
				w.ServeHTTP(httptest.NewRecorder(), d.request())
			}
			rec.outcomes = map[string]int{}

			rw := httptest.NewRecorder()
			w.ServeHTTP(rw, tt.send.request())

			if got, want := rw.Code, tt.wantStatus; got != want {
				t.Errorf("status = %d, want %d (%q)", got, want, rw.Body)
			}
			if got := rw.Body.String(); !strings.HasPrefix(got, tt.wantText) || !strings.HasSuffix(got, "\n") || strings.Count(got, "\n") != 1 {
				t.Errorf("answer = %q, want one line starting %q", got, tt.wantText)
			}
			if got, want := rw.Header().Get("Content-Type"), "text/plain; charset=utf-8"; got != want {
				t.Errorf("Content-Type = %q, want %q", got, want)
			}
			if tt.wantStatus == http.StatusMethodNotAllowed {
				if got, want := rw.Header().Get("Allow"), "POST"; got != want {
					t.Errorf("Allow = %q, want %q", got, want)
				}
			}
			if diff := cmp.Diff(map[string]int{tt.wantOutcome: 1}, rec.outcomes); diff != "" {
				t.Errorf("outcomes (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantPushes, rec.pushes); diff != "" {
				t.Errorf("pushes (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNewWebhookRefusesIncompleteOptions(t *testing.T) {
	ok := WebhookOptions{Secret: testSecret, Repository: testRepo, Branch: testBranch, OnPush: func(Push) {}}
	if _, err := NewWebhook(ok); err != nil {
		t.Fatalf("complete options: %v", err)
	}
	tests := []struct {
		name string
		edit func(*WebhookOptions)
	}{
		{"no secret", func(o *WebhookOptions) { o.Secret = nil }},
		{"empty secret", func(o *WebhookOptions) { o.Secret = []byte{} }},
		{"no repository", func(o *WebhookOptions) { o.Repository = "" }},
		{"repository without owner", func(o *WebhookOptions) { o.Repository = "Hello-World" }},
		{"repository URL", func(o *WebhookOptions) { o.Repository = "github.com/Codertocat/Hello-World" }},
		{"repository with empty name", func(o *WebhookOptions) { o.Repository = "Codertocat/" }},
		{"no branch", func(o *WebhookOptions) { o.Branch = "" }},
		{"no OnPush", func(o *WebhookOptions) { o.OnPush = nil }},
		{"negative MaxBody", func(o *WebhookOptions) { o.MaxBody = -1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := ok
			tt.edit(&opts)
			if w, err := NewWebhook(opts); err == nil {
				t.Fatalf("NewWebhook accepted %+v: %v", opts, w)
			}
		})
	}
}

// GitHub may send up to 25 MB; the default cap is what stands between that
// and the daemon's memory, so it is tested at its real size over a real
// connection.
func TestWebhookDefaultMaxBodyOverHTTP(t *testing.T) {
	var rec recorder
	w, err := NewWebhook(rec.options())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(w)
	t.Cleanup(srv.Close)

	valid := pushBody(t, "refs/heads/main", shaA)
	padded := func(n int) []byte { // valid JSON of exactly n bytes
		return append(bytes.Repeat([]byte(" "), n-len(valid)), valid...)
	}
	tests := []struct {
		name       string
		body       []byte
		chunked    bool
		wantStatus int
	}{
		{"exactly 5 MiB", padded(5 << 20), false, http.StatusAccepted},
		{"5 MiB + 1 byte", padded(5<<20 + 1), false, http.StatusRequestEntityTooLarge},
		{"5 MiB + 1 byte without Content-Length", padded(5<<20 + 1), true, http.StatusRequestEntityTooLarge},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := delivery{event: "push", id: fmt.Sprintf("big-%d", i), body: tt.body, chunked: tt.chunked}
			status, text, err := d.send(srv.Client(), srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := status, tt.wantStatus; got != want {
				t.Errorf("status = %d, want %d (%q)", got, want, text)
			}
		})
	}
	if got, want := len(rec.pushes), 1; got != want {
		t.Errorf("%d pushes, want %d", got, want)
	}
}

// What a delivery costs grows with the bytes that arrive, not with the
// Content-Length its (not yet verified) sender declares.
func TestWebhookMemoryFollowsTheBodyNotItsDeclaredLength(t *testing.T) {
	w, err := NewWebhook(WebhookOptions{Secret: testSecret, Repository: testRepo, Branch: testBranch, OnPush: func(Push) {}})
	if err != nil {
		t.Fatal(err)
	}
	body := pushBody(t, "refs/heads/other", shaA)
	allocated := func(declared int64) uint64 {
		const runs = 20
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range runs {
			r := delivery{event: "push", id: "72d3162e-cc78-11e3-81ab-4c9367dc0958", body: body}.request()
			r.ContentLength = declared
			w.ServeHTTP(httptest.NewRecorder(), r)
		}
		runtime.ReadMemStats(&after)
		return (after.TotalAlloc - before.TotalAlloc) / runs
	}
	honest := allocated(int64(len(body)))
	lying := allocated(DefaultWebhookMaxBody)
	t.Logf("a %d-byte delivery allocates %d bytes; declaring %d bytes, %d", len(body), honest, DefaultWebhookMaxBody, lying)
	if lying > honest+512<<10 {
		t.Errorf("declaring %d bytes and sending %d allocates %d bytes a delivery; sending the same honestly, %d",
			DefaultWebhookMaxBody, len(body), lying, honest)
	}
}

// TestWebhookReadsFewBodiesAtOnce: bodies that trickle in hold the body
// readers; a delivery beyond them waits its turn, and one that finds no
// turn is answered 503 rather than read, so slow senders, however many,
// make the daemon hold a few capped bodies at most.
func TestWebhookReadsFewBodiesAtOnce(t *testing.T) {
	w, err := NewWebhook(WebhookOptions{Secret: testSecret, Repository: testRepo, Branch: testBranch, OnPush: func(Push) {}})
	if err != nil {
		t.Fatal(err)
	}
	body := pushBody(t, "refs/heads/main", shaA)
	var writers []*io.PipeWriter
	done := make(chan int, webhookReaders)
	for range webhookReaders { // senders that never finish their bodies
		pr, pw := io.Pipe()
		writers = append(writers, pw)
		r := delivery{event: "push", id: "72d3162e-cc78-11e3-81ab-4c9367dc0958", body: body}.request()
		r.Body = pr
		go func() {
			rec := httptest.NewRecorder()
			w.ServeHTTP(rec, r)
			done <- rec.Code
		}()
	}
	time.Sleep(100 * time.Millisecond) // the slow ones hold every reader
	rec := httptest.NewRecorder()
	started := time.Now()
	w.ServeHTTP(rec, delivery{event: "push", id: "9d3a7e8c-cc78-11e3-81ab-4c9367dc0958", body: body}.request())
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("a delivery while %d bodies trickle in: %d, want 503", webhookReaders, rec.Code)
	}
	if waited := time.Since(started); waited < readerWait/2 {
		t.Errorf("answered after %v: it did not wait its turn", waited)
	}
	for _, pw := range writers {
		pw.CloseWithError(io.ErrUnexpectedEOF)
	}
	for range webhookReaders {
		<-done
	}
	// The readers are free again.
	rec = httptest.NewRecorder()
	w.ServeHTTP(rec, delivery{event: "push", id: "0e1b2c3d-cc78-11e3-81ab-4c9367dc0958", body: body}.request())
	if rec.Code/100 != 2 {
		t.Errorf("a delivery once the slow ones ended: %d, want 2xx", rec.Code)
	}
}

func TestWebhookDeliverySetForgetsTheOldestFirst(t *testing.T) {
	s := newDeliverySet(3)
	for _, id := range []string{"a", "b", "c"} {
		if !s.add(id) {
			t.Fatalf("%s: not new", id)
		}
	}
	if s.add("a") {
		t.Fatal("a: new again while remembered")
	}
	s.add("d") // evicts a
	if got, want := len(s.ids), 3; got != want {
		t.Fatalf("%d remembered, want %d", got, want)
	}
	if !s.add("a") { // evicts b
		t.Fatal("a: still remembered after three newer IDs")
	}
	for _, id := range []string{"c", "d", "a"} {
		if s.add(id) {
			t.Errorf("%s: forgotten too early", id)
		}
	}
	if !s.add("b") {
		t.Error("b: still remembered")
	}
}

// PRODUCT.md §5: no secret in a log. The signature is as good as a secret
// for a replay of that body, so it stays out too.
func TestWebhookLogsNeitherSecretNorSignature(t *testing.T) {
	var logs bytes.Buffer
	var rec recorder
	opts := rec.options()
	opts.Log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	w, err := NewWebhook(opts)
	if err != nil {
		t.Fatal(err)
	}
	valid := pushBody(t, "refs/heads/main", shaA)
	sent := []delivery{
		{event: "push", id: "d1", body: valid},
		{event: "push", id: "d1", body: valid},
		{event: "push", id: "d2", body: pushBody(t, "refs/heads/dev", shaA)},
		{event: "push", id: "d3", body: valid, header: http.Header{"X-Hub-Signature-256": {signature([]byte("nope"), valid)}}},
		{event: "ping", id: "d4", body: []byte(`{}`)},
	}
	for _, d := range sent {
		w.ServeHTTP(httptest.NewRecorder(), d.request())
	}
	out := logs.String()
	if got, want := strings.Count(out, "\n"), len(sent); got != want {
		t.Errorf("%d log lines, want %d:\n%s", got, want, out)
	}
	for _, want := range []string{"delivery=d1", "outcome=accepted", "revision=" + shaA, "outcome=duplicate", "outcome=ignored", "outcome=unauthorized", "event=ping"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
	for _, secret := range []string{string(testSecret), strings.TrimPrefix(signature(testSecret, valid), "sha256="), strings.TrimPrefix(signature([]byte("nope"), valid), "sha256=")} {
		if strings.Contains(out, secret) {
			t.Errorf("log shows %q:\n%s", secret, out)
		}
	}
}

// A burst of pushes from many senders at once, with redeliveries mixed in,
// must neither lose a push nor hand one over twice.
func TestWebhookConcurrentDeliveries(t *testing.T) {
	const (
		senders    = 16
		heads      = 10
		perHead    = 100
		redeliver  = 10 // every tenth delivery is sent again, by its sender, after its first answer
		deliveries = heads * perHead
	)
	var (
		mu      sync.Mutex
		byID    = map[string]string{} // delivery → after
		byAfter = map[string]int{}
		calls   atomic.Int64
		outs    sync.Map // outcome → *atomic.Int64
	)
	w, err := NewWebhook(WebhookOptions{
		Secret: testSecret, Repository: testRepo, Branch: testBranch,
		OnPush: func(p Push) {
			calls.Add(1)
			mu.Lock()
			defer mu.Unlock()
			if prev, ok := byID[p.Delivery]; ok {
				t.Errorf("delivery %s handed over twice (%s, then %s)", p.Delivery, prev, p.After)
			}
			byID[p.Delivery] = p.After
			byAfter[p.After]++
		},
		OnOutcome: func(o string) {
			n, _ := outs.LoadOrStore(o, new(atomic.Int64))
			n.(*atomic.Int64).Add(1)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(w)
	t.Cleanup(srv.Close)
	client := &http.Client{Transport: &http.Transport{MaxIdleConns: senders, MaxIdleConnsPerHost: senders}}
	t.Cleanup(client.CloseIdleConnections)

	bodies := make([][]byte, heads)
	for i := range bodies {
		bodies[i] = pushBody(t, "refs/heads/main", fmt.Sprintf("%040x", i+1))
	}
	type job struct {
		id   string
		body []byte
	}
	jobs := make(chan job)
	go func() {
		defer close(jobs)
		for n := range deliveries {
			jobs <- job{id: fmt.Sprintf("guid-%04d", n), body: bodies[n%heads]}
		}
	}()
	var (
		wg       sync.WaitGroup
		statuses sync.Map // "status answer-word" → *atomic.Int64
	)
	send := func(j job) {
		status, text, err := delivery{event: "push", id: j.id, body: j.body}.send(client, srv.URL)
		if err != nil {
			t.Errorf("%s: %v", j.id, err)
			return
		}
		word, _, _ := strings.Cut(text, ":")
		n, _ := statuses.LoadOrStore(fmt.Sprint(status, " ", word), new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
	}
	for range senders {
		wg.Go(func() {
			for j := range jobs {
				send(j)
				var n int
				fmt.Sscanf(j.id, "guid-%d", &n)
				if n%redeliver == 0 {
					send(j)
				}
			}
		})
	}
	wg.Wait()

	count := func(m *sync.Map, k string) int64 {
		if n, ok := m.Load(k); ok {
			return n.(*atomic.Int64).Load()
		}
		return 0
	}
	if got, want := calls.Load(), int64(deliveries); got != want {
		t.Errorf("OnPush called %d times, want %d", got, want)
	}
	if got, want := count(&statuses, "202 accepted"), int64(deliveries); got != want {
		t.Errorf("%d answered 202 accepted, want %d", got, want)
	}
	if got, want := count(&statuses, "200 duplicate"), int64(deliveries/redeliver); got != want {
		t.Errorf("%d answered 200 duplicate, want %d", got, want)
	}
	if got, want := count(&outs, OutcomeAccepted), int64(deliveries); got != want {
		t.Errorf("outcome accepted %d times, want %d", got, want)
	}
	if got, want := count(&outs, OutcomeDuplicate), int64(deliveries/redeliver); got != want {
		t.Errorf("outcome duplicate %d times, want %d", got, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if got, want := len(byID), deliveries; got != want {
		t.Errorf("%d distinct deliveries handed over, want %d", got, want)
	}
	for i := range heads {
		after := fmt.Sprintf("%040x", i+1)
		if got, want := byAfter[after], perHead; got != want {
			t.Errorf("%s handed over %d times, want %d", after, got, want)
		}
	}
}

// BenchmarkWebhookDeliveries measures signed pushes of the tracked branch
// over real HTTP on loopback, each under a new delivery ID, as a burst from
// GitHub would arrive.
func BenchmarkWebhookDeliveries(b *testing.B) {
	var pushes atomic.Int64
	w, err := NewWebhook(WebhookOptions{
		Secret: testSecret, Repository: testRepo, Branch: testBranch,
		OnPush: func(Push) { pushes.Add(1) },
	})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(w)
	b.Cleanup(srv.Close)
	const conns = 64
	client := &http.Client{Transport: &http.Transport{MaxIdleConns: conns, MaxIdleConnsPerHost: conns}}
	b.Cleanup(client.CloseIdleConnections)

	body := pushBody(b, "refs/heads/main", shaA)
	header := delivery{event: "push", body: body}.headers()
	var sent, seq atomic.Int64
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r, err := http.NewRequest(http.MethodPost, srv.URL+WebhookPath, bytes.NewReader(body))
			if err != nil {
				b.Error(err)
				return
			}
			r.Header = header.Clone()
			r.Header.Set("X-GitHub-Delivery", fmt.Sprintf("bench-%d", seq.Add(1)))
			resp, err := client.Do(r)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
			sent.Add(1)
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(sent.Load())/b.Elapsed().Seconds(), "deliveries/s")
	if got, want := pushes.Load(), sent.Load(); got != want {
		b.Fatalf("OnPush called %d times for %d deliveries", got, want)
	}
}
