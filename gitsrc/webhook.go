package gitsrc

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// WebhookPath is where the daemon mounts the Webhook (PRODUCT.md §4).
const WebhookPath = "/hooks/github"

// DefaultWebhookMaxBody caps a delivery's body when WebhookOptions.MaxBody
// is zero. GitHub sends up to 25 MB, but a push of the tracked branch needs
// only its first fields; 5 MiB leaves room for a push's commits[] (which
// GitHub caps at 20 entries) with a wide margin.
const DefaultWebhookMaxBody = 5 << 20

// webhookReaders is how many deliveries' bodies are read at once, and
// readerWait how long a delivery waits for its turn: with the body cap,
// what unauthenticated clients can make the daemon hold (a few times
// DefaultWebhookMaxBody, whatever their number). A delivery that finds no
// turn is answered 503; GitHub shows it, and polling still finds the push.
const (
	webhookReaders = 2
	readerWait     = 2 * time.Second
)

// seenDeliveries is how many accepted delivery IDs the Webhook remembers. A
// redelivery is a person pressing "Redeliver" in GitHub's settings, minutes
// or days later; ten thousand pushes back is further than anyone reaches.
const seenDeliveries = 10_000

// maxDeliveryID bounds the X-GitHub-Delivery header kept in memory. GitHub's
// are GUIDs (36 characters).
const maxDeliveryID = 128

// The outcomes a Webhook reports through WebhookOptions.OnOutcome, one per
// delivery. They are fixed so that a metric can be labelled by them.
const (
	// OutcomeAccepted is a push to the tracked branch handed to OnPush (202).
	OutcomeAccepted = "accepted"
	// OutcomeDuplicate is a redelivery of a push already accepted (200);
	// OnPush is not called again.
	OutcomeDuplicate = "duplicate"
	// OutcomeIgnored is a genuine delivery that asks for no deploy (200): a
	// push to another branch or repository, a tag, a branch deletion, or an
	// event other than push and ping.
	OutcomeIgnored = "ignored"
	// OutcomePing is the ping GitHub sends when a hook is created (200).
	OutcomePing = "ping"
	// OutcomeUnauthorized is a delivery without a valid X-Hub-Signature-256
	// (401).
	OutcomeUnauthorized = "unauthorized"
	// OutcomeTooLarge is a body over WebhookOptions.MaxBody (413).
	OutcomeTooLarge = "too_large"
	// OutcomeBadRequest is a signed delivery that cannot be understood: no
	// event or delivery header, a payload that does not parse (400).
	OutcomeBadRequest = "bad_request"
	// OutcomeMethodNotAllowed is a request other than POST (405).
	OutcomeMethodNotAllowed = "method_not_allowed"
	// OutcomeBusy is a delivery that found every body reader taken for
	// readerWait (503).
	OutcomeBusy = "busy"
)

// WebhookOutcomes lists every outcome a Webhook reports, so that metrics can
// start each counter at zero.
func WebhookOutcomes() []string {
	return []string{
		OutcomeAccepted, OutcomeDuplicate, OutcomeIgnored, OutcomePing,
		OutcomeUnauthorized, OutcomeTooLarge, OutcomeBadRequest, OutcomeMethodNotAllowed, OutcomeBusy,
	}
}

// Push is a push to the tracked branch, as GitHub announced it.
type Push struct {
	Delivery    string // X-GitHub-Delivery: the GUID GitHub keeps across redeliveries
	Repository  string // repository.full_name, as GitHub spells it
	Branch      string // from ref refs/heads/<branch>
	Before      string // the head before the push; forty zeros when the branch was created
	After       string // the new head; the commit to deploy (commits[] is capped, after is not)
	Pusher      string // pusher.name
	HeadSubject string // first line of head_commit.message, for logs and statuses
	Forced      bool   // a force push: Before may not be an ancestor of After
}

// WebhookOptions configures a Webhook.
type WebhookOptions struct {
	// Secret is the hook's secret (OPERATOR_WEBHOOK_SECRET). Required: with
	// no secret anyone could trigger deploys, so the daemon leaves the route
	// off instead.
	Secret []byte
	// Repository is the app repository, owner/name, compared without regard
	// to case as GitHub does. Required.
	Repository string
	// Branch is the tracked branch, e.g. main. Required.
	Branch string
	// MaxBody caps the body read; DefaultWebhookMaxBody when zero.
	MaxBody int64
	// OnPush receives each accepted push. It is called on the request's
	// goroutine before GitHub gets its answer, and GitHub gives up after
	// 10 s, so it must only enqueue. Required.
	OnPush func(Push)
	// OnOutcome, when set, is called once per delivery with one of the
	// Outcome constants, for metrics.
	OnOutcome func(outcome string)
	// Log receives one line per delivery: debug for ignored ones, info for
	// accepted ones, warn for refused ones. Nil discards.
	Log *slog.Logger
}

// Webhook is the http.Handler of POST /hooks/github. It verifies a
// delivery, hands a push of the tracked branch to OnPush and answers at
// once: GitHub counts an answer after 10 s as a failure and never retries by
// itself, so the deploy itself happens elsewhere.
type Webhook struct {
	secret     []byte
	repository string
	branch     string
	maxBody    int64
	onPush     func(Push)
	onOutcome  func(string)
	log        *slog.Logger
	seen       *deliverySet
	// readers holds a token per body being read (webhookReaders).
	readers chan struct{}
}

// NewWebhook checks opts and returns the handler. It refuses an empty
// secret rather than accept unsigned deliveries.
func NewWebhook(opts WebhookOptions) (*Webhook, error) {
	if len(opts.Secret) == 0 {
		return nil, errors.New("gitsrc: webhook needs a secret (OPERATOR_WEBHOOK_SECRET)")
	}
	owner, name, ok := strings.Cut(opts.Repository, "/")
	if !ok || owner == "" || name == "" || strings.Contains(name, "/") {
		return nil, fmt.Errorf("gitsrc: webhook repository %q: want owner/name", opts.Repository)
	}
	if opts.Branch == "" {
		return nil, errors.New("gitsrc: webhook needs a branch")
	}
	if opts.OnPush == nil {
		return nil, errors.New("gitsrc: webhook needs an OnPush")
	}
	if opts.MaxBody < 0 {
		return nil, fmt.Errorf("gitsrc: webhook MaxBody %d: must not be negative", opts.MaxBody)
	}
	w := &Webhook{
		// A copy, so a caller clearing its slice cannot change the key.
		secret:     bytes.Clone(opts.Secret),
		repository: opts.Repository,
		branch:     opts.Branch,
		maxBody:    opts.MaxBody,
		onPush:     opts.OnPush,
		onOutcome:  opts.OnOutcome,
		log:        opts.Log,
		seen:       newDeliverySet(seenDeliveries),
		readers:    make(chan struct{}, webhookReaders),
	}
	if w.maxBody == 0 {
		w.maxBody = DefaultWebhookMaxBody
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	return w, nil
}

// answer is what the Webhook did with one delivery: the status and short
// text GitHub shows in the hook's "Recent deliveries", and what is logged.
type answer struct {
	status   int
	outcome  string
	text     string
	revision string
}

// ServeHTTP handles one delivery. The checks run cheapest and least
// trusting first: nothing from the body is looked at before its signature
// is verified.
func (w *Webhook) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	delivery := r.Header.Get("X-GitHub-Delivery")
	event := r.Header.Get("X-GitHub-Event")
	a := w.handle(rw, r, delivery, event)

	level := slog.LevelDebug
	switch a.outcome {
	case OutcomeAccepted, OutcomePing:
		level = slog.LevelInfo
	case OutcomeUnauthorized, OutcomeTooLarge, OutcomeBadRequest:
		// A wrong secret on either side shows up here, and only here.
		level = slog.LevelWarn
	}
	if w.log.Enabled(r.Context(), level) {
		attrs := []slog.Attr{
			slog.String("delivery", delivery),
			slog.String("event", event),
			slog.String("outcome", a.outcome),
		}
		if a.revision != "" {
			attrs = append(attrs, slog.String("revision", a.revision))
		}
		attrs = append(attrs, slog.String("reason", a.text))
		w.log.LogAttrs(r.Context(), level, "github webhook", attrs...)
	}
	if w.onOutcome != nil {
		w.onOutcome(a.outcome)
	}

	h := rw.Header()
	if a.status == http.StatusMethodNotAllowed {
		h.Set("Allow", http.MethodPost)
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	rw.WriteHeader(a.status)
	io.WriteString(rw, a.text+"\n")
}

func (w *Webhook) handle(rw http.ResponseWriter, r *http.Request, delivery, event string) answer {
	if r.Method != http.MethodPost {
		return answer{status: http.StatusMethodNotAllowed, outcome: OutcomeMethodNotAllowed, text: "method not allowed: POST only"}
	}
	tooLarge := answer{status: http.StatusRequestEntityTooLarge, outcome: OutcomeTooLarge,
		text: fmt.Sprintf("too large: the body is capped at %d bytes", w.maxBody)}
	// A declared length over the cap is refused before a byte is read.
	if r.ContentLength > w.maxBody {
		return tooLarge
	}
	// The header is checked before the body is read, so an unsigned request
	// costs no read at all. Only SHA-256 is accepted: go-github's
	// ValidatePayload falls back to the SHA-1 X-Hub-Signature, which a
	// forger would pick.
	want, ok := parseSignature(r.Header.Get("X-Hub-Signature-256"))
	if !ok {
		text := "unauthorized: X-Hub-Signature-256 missing or malformed"
		if r.Header.Get("X-Hub-Signature-256") == "" && r.Header.Get("X-Hub-Signature") != "" {
			text = "unauthorized: X-Hub-Signature-256 required, SHA-1 signatures are refused"
		}
		return answer{status: http.StatusUnauthorized, outcome: OutcomeUnauthorized, text: text}
	}
	select {
	case w.readers <- struct{}{}:
	case <-time.After(readerWait):
		return answer{status: http.StatusServiceUnavailable, outcome: OutcomeBusy, text: "busy: other deliveries are being read, try again"}
	case <-r.Context().Done():
		return answer{status: http.StatusServiceUnavailable, outcome: OutcomeBusy, text: "busy: the request ended while waiting"}
	}
	body, err := readBody(rw, r, w.maxBody)
	<-w.readers
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return tooLarge
		}
		return answer{status: http.StatusBadRequest, outcome: OutcomeBadRequest, text: "bad request: body unreadable"}
	}
	if !hmac.Equal(want, mac(w.secret, body)) {
		return answer{status: http.StatusUnauthorized, outcome: OutcomeUnauthorized, text: "unauthorized: signature does not match"}
	}

	switch event {
	case "":
		return answer{status: http.StatusBadRequest, outcome: OutcomeBadRequest, text: "bad request: X-GitHub-Event missing"}
	case "ping":
		return answer{status: http.StatusOK, outcome: OutcomePing, text: "pong"}
	case "push":
	default:
		// 200 rather than 204: GitHub shows the body in the hook's recent
		// deliveries, and the text says why nothing happened.
		return answer{status: http.StatusOK, outcome: OutcomeIgnored, text: "ignored: event " + event}
	}
	if delivery == "" || len(delivery) > maxDeliveryID {
		// Without it a redelivery could not be told from a new push.
		return answer{status: http.StatusBadRequest, outcome: OutcomeBadRequest, text: "bad request: X-GitHub-Delivery missing or too long"}
	}
	payload, err := pushPayload(r.Header.Get("Content-Type"), body)
	if err != nil {
		return answer{status: http.StatusBadRequest, outcome: OutcomeBadRequest, text: "bad request: " + err.Error()}
	}
	return w.push(delivery, payload)
}

// push decides what a verified push event asks for.
func (w *Webhook) push(delivery string, ev *pushEvent) answer {
	ignored := func(text string) answer {
		return answer{status: http.StatusOK, outcome: OutcomeIgnored, text: "ignored: " + text, revision: ev.After}
	}
	switch {
	case ev.Repository.FullName == "":
		return answer{status: http.StatusBadRequest, outcome: OutcomeBadRequest, text: "bad request: no repository.full_name"}
	case ev.Ref == "":
		return answer{status: http.StatusBadRequest, outcome: OutcomeBadRequest, text: "bad request: no ref"}
	case !strings.EqualFold(ev.Repository.FullName, w.repository):
		return ignored("other repository")
	case ev.Deleted || isZeroHash(ev.After):
		return ignored("deletion of " + ev.Ref)
	case strings.HasPrefix(ev.Ref, "refs/tags/"):
		return ignored("tag " + strings.TrimPrefix(ev.Ref, "refs/tags/"))
	}
	branch, ok := strings.CutPrefix(ev.Ref, "refs/heads/")
	if !ok {
		return ignored("ref " + ev.Ref + " is not a branch")
	}
	if branch != w.branch {
		return ignored("branch " + branch + " is not tracked")
	}
	// The SHA becomes a path on every host (releases/<sha>) and a word in
	// remote commands: take nothing but a hash.
	if !isHash(ev.After) {
		return answer{status: http.StatusBadRequest, outcome: OutcomeBadRequest, text: "bad request: after is not a commit SHA"}
	}
	// Claimed only now, so that a redelivery of a push refused above (say,
	// before the configuration was fixed) is looked at afresh.
	if !w.seen.add(delivery) {
		return answer{status: http.StatusOK, outcome: OutcomeDuplicate, text: "duplicate: delivery already accepted", revision: ev.After}
	}
	p := Push{
		Delivery:   delivery,
		Repository: ev.Repository.FullName,
		Branch:     branch,
		Before:     ev.Before,
		After:      ev.After,
		Pusher:     ev.Pusher.Name,
		Forced:     ev.Forced,
	}
	if ev.HeadCommit != nil {
		p.HeadSubject, _, _ = strings.Cut(ev.HeadCommit.Message, "\n")
	}
	w.onPush(p)
	return answer{status: http.StatusAccepted, outcome: OutcomeAccepted, text: "accepted: " + branch + " at " + ev.After, revision: ev.After}
}

// pushEvent is the part of GitHub's push payload the operator reads.
type pushEvent struct {
	Ref        string `json:"ref"`
	Before     string `json:"before"`
	After      string `json:"after"`
	Deleted    bool   `json:"deleted"`
	Forced     bool   `json:"forced"`
	HeadCommit *struct {
		Message string `json:"message"`
	} `json:"head_commit"`
	Repository struct {
		FullName string `json:"full_name"`
	} `json:"repository"`
	Pusher struct {
		Name string `json:"name"`
	} `json:"pusher"`
}

// pushPayload decodes a push event. GitHub sends JSON, or, when the hook's
// content type is application/x-www-form-urlencoded (the default in
// GitHub's form), the same JSON in the form field payload; the signature
// covers the body as sent either way.
func pushPayload(contentType string, body []byte) (*pushEvent, error) {
	if mt, _, _ := mime.ParseMediaType(contentType); mt == "application/x-www-form-urlencoded" {
		form, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, errors.New("form body does not parse")
		}
		body = []byte(form.Get("payload"))
	}
	var ev pushEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		return nil, errors.New("push payload is not valid JSON")
	}
	return &ev, nil
}

// readBody reads at most limit bytes of the body; past that it fails with
// an *http.MaxBytesError. The buffer grows with the bytes that arrive,
// never with the Content-Length the (not yet authenticated) sender
// declares: sizing it by that would let a client that declares the cap and
// sends nothing make the daemon hold the cap per connection.
func readBody(rw http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	return io.ReadAll(http.MaxBytesReader(rw, r.Body, limit))
}

// parseSignature decodes an X-Hub-Signature-256 value, sha256=<64 hex>.
func parseSignature(h string) ([]byte, bool) {
	hexSum, ok := strings.CutPrefix(h, "sha256=")
	if !ok || len(hexSum) != 2*sha256.Size {
		return nil, false
	}
	sum, err := hex.DecodeString(hexSum)
	if err != nil {
		return nil, false
	}
	return sum, true
}

// mac is the HMAC-SHA256 of body under secret, as GitHub signs a delivery.
func mac(secret, body []byte) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write(body)
	return h.Sum(nil)
}

// signature is the X-Hub-Signature-256 value GitHub sends with body.
func signature(secret, body []byte) string {
	return "sha256=" + hex.EncodeToString(mac(secret, body))
}

// isHash reports whether s is a full commit SHA: SHA-1, or SHA-256 for a
// repository in that object format.
func isHash(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	for _, c := range []byte(s) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func isZeroHash(s string) bool {
	return s != "" && strings.Trim(s, "0") == ""
}

// deliverySet is the delivery IDs of the last accepted pushes, the oldest
// forgotten first, so that memory stays bounded however long the daemon
// runs.
type deliverySet struct {
	mu   sync.Mutex
	ids  map[string]struct{}
	ring []string // insertion order; next is the slot to overwrite
	next int
}

func newDeliverySet(capacity int) *deliverySet {
	return &deliverySet{ids: make(map[string]struct{}, capacity), ring: make([]string, 0, capacity)}
}

// add records id and reports whether it was new. Check and record are one
// step, so of two concurrent deliveries with one ID exactly one is new.
func (s *deliverySet) add(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.ids[id]; ok {
		return false
	}
	if len(s.ring) < cap(s.ring) {
		s.ring = append(s.ring, id)
	} else {
		delete(s.ids, s.ring[s.next])
		s.ring[s.next] = id
		s.next = (s.next + 1) % len(s.ring)
	}
	s.ids[id] = struct{}{}
	return true
}
