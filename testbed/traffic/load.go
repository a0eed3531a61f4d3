// Package traffic loads an app through HAProxy the way its users would while
// a deploy runs, and reports what they saw: HTTP requests that failed, and
// WebSocket clients that were dropped, how long each was without a
// connection, and which broadcasts they missed while connected.
//
// It speaks the chat app's protocol: GET /health answers 200 with JSON
// naming the node and commit; the WebSocket at /socket/websocket greets each
// client with "welcome <node> <commit>" and relays every text frame any
// client sends to every connected client on every node. Clients reconnect
// as Phoenix's JavaScript client does: after 10 ms, then backing off.
//
// Every count and buffer is bounded by the configuration, and every
// goroutine ends on Stop, on the context given to Start, or at MaxDuration.
package traffic

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Load is one run of clients against one base URL. Set its fields, call
// Start (which fills in the defaults), then Stop for the Report. A Load runs
// once; its fields must not change, nor it be copied, after Start.
type Load struct {
	// BaseURL is where every request goes: HAProxy's "http://<lb-addr>:80".
	BaseURL string
	// NewConnClients is the number of HTTP clients that open a new TCP
	// connection for each request.
	NewConnClients int
	// KeepAliveClients is the number of HTTP clients that each keep one
	// connection open between requests, as a browser does.
	KeepAliveClients int
	// Pause is how long each HTTP client waits after an answer before its
	// next request. Zero means 100 ms.
	Pause time.Duration
	// Paths are requested in turn by each HTTP client. Empty means
	// []string{"/health"}.
	Paths []string
	// WSClients is the number of WebSocket clients, not counting the
	// broadcaster.
	WSClients int
	// BroadcastInterval is how often one extra WebSocket client, the
	// broadcaster, sends "b <seq>". It runs only when WSClients > 0. Zero
	// means 100 ms; negative means no broadcaster, and then no traffic on
	// the WebSockets: HAProxy closes one idle for longer than its tunnel
	// (or client) timeout, and that counts as a drop.
	BroadcastInterval time.Duration
	// Timeout bounds each HTTP request (answer and body), each WebSocket
	// handshake up to its welcome, and each broadcast write. Zero means 5 s.
	Timeout time.Duration
	// Grace is how long a broadcast may take to reach a connected client
	// before the client counts it as missed. Zero means 500 ms.
	Grace time.Duration
	// MaxDuration caps the run: the clients stop by themselves then, and
	// Stop reports what they saw until then. Zero means 10 minutes.
	MaxDuration time.Duration

	mu      sync.Mutex
	started bool
	report  *Report

	start  time.Time
	endAt  atomic.Int64 // time.Duration since start at which the run ended; 0 while it runs
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	paths      []request
	newConn    *httpTally
	keepAlive  *httpTally
	transports []*http.Transport

	ws        *wsTally
	wsHTTP    *http.Client
	wsURL     string
	wsCount   int // WebSocket clients, the broadcaster included
	casterID  int // the broadcaster's client id, or -1
	connected atomic.Int64
	casts     *broadcasts
}

// errCapped is the cause of a run that MaxDuration ended.
var errCapped = errors.New("traffic: MaxDuration reached")

// Start checks the configuration and starts every client. The clients run
// until Stop, until ctx ends, or until MaxDuration.
func (l *Load) Start(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.started {
		return errors.New("traffic: Load started twice")
	}
	if err := l.setDefaults(); err != nil {
		return err
	}
	l.started = true

	l.start = time.Now()
	l.ctx, l.cancel = context.WithTimeoutCause(ctx, l.MaxDuration, errCapped)
	context.AfterFunc(l.ctx, l.markEnd)

	dialer := &net.Dialer{Timeout: l.Timeout, KeepAlive: 30 * time.Second}
	l.newConn = newHTTPTally("new-conn", l.NewConnClients)
	l.keepAlive = newHTTPTally("keep-alive", l.KeepAliveClients)
	perRequest := &http.Transport{DisableKeepAlives: true, DialContext: dialer.DialContext}
	l.transports = append(l.transports, perRequest)
	for i := range l.NewConnClients {
		l.goHTTP(&http.Client{Transport: perRequest, CheckRedirect: noRedirects}, l.newConn, i, l.NewConnClients)
	}
	for i := range l.KeepAliveClients {
		own := &http.Transport{DialContext: dialer.DialContext, MaxIdleConnsPerHost: 1, IdleConnTimeout: 90 * time.Second}
		l.transports = append(l.transports, own)
		l.goHTTP(&http.Client{Transport: own, CheckRedirect: noRedirects}, l.keepAlive, i, l.KeepAliveClients)
	}

	if l.WSClients > 0 {
		l.startWS(dialer)
	}
	return nil
}

// Stop ends the run, waits for every client to finish (each aborts what it
// is doing at once) and returns the Report. Calling it again returns the
// same Report; calling it before Start returns an empty one.
func (l *Load) Stop() *Report {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.report != nil {
		return l.report
	}
	if !l.started {
		return &Report{}
	}
	l.markEnd()
	l.cancel()
	l.wg.Wait()
	for _, t := range l.transports {
		t.CloseIdleConnections()
	}
	if l.wsHTTP != nil {
		l.wsHTTP.CloseIdleConnections()
	}
	l.report = l.buildReport()
	return l.report
}

// Connected returns how many WebSocket clients, the broadcaster included,
// are connected (welcomed) now.
func (l *Load) Connected() int {
	return int(l.connected.Load())
}

// WaitConnected waits until every WebSocket client, the broadcaster
// included, is connected at once: the moment to start a deploy that should
// not disturb them. It returns an error if ctx or the run ends first.
func (l *Load) WaitConnected(ctx context.Context) error {
	l.mu.Lock()
	run, want := l.ctx, l.wsCount
	l.mu.Unlock()
	if run == nil {
		return errors.New("traffic: WaitConnected before Start")
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for l.Connected() < want {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %d WebSocket clients (%d connected): %w", want, l.Connected(), ctx.Err())
		case <-run.Done():
			return fmt.Errorf("wait for %d WebSocket clients (%d connected): run ended: %w", want, l.Connected(), context.Cause(run))
		case <-tick.C:
		}
	}
	return nil
}

func (l *Load) setDefaults() error {
	u, err := url.Parse(l.BaseURL)
	if err != nil {
		return fmt.Errorf("traffic: base URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("traffic: base URL %q: want http://host:port", l.BaseURL)
	}
	l.BaseURL = strings.TrimSuffix(l.BaseURL, "/")
	if l.NewConnClients < 0 || l.KeepAliveClients < 0 || l.WSClients < 0 {
		return errors.New("traffic: negative number of clients")
	}
	if l.Pause < 0 || l.Timeout < 0 || l.Grace < 0 || l.MaxDuration < 0 {
		return errors.New("traffic: negative duration")
	}
	if l.Pause == 0 {
		l.Pause = 100 * time.Millisecond
	}
	if len(l.Paths) == 0 {
		l.Paths = []string{"/health"}
	}
	for _, p := range l.Paths {
		pu, err := url.Parse(p)
		if err != nil || !strings.HasPrefix(p, "/") {
			return fmt.Errorf("traffic: path %q: want an absolute path", p)
		}
		l.paths = append(l.paths, request{path: p, health: pu.Path == "/health"})
	}
	if l.BroadcastInterval == 0 {
		l.BroadcastInterval = 100 * time.Millisecond
	}
	if l.Timeout == 0 {
		l.Timeout = 5 * time.Second
	}
	if l.Grace == 0 {
		l.Grace = 500 * time.Millisecond
	}
	if l.MaxDuration == 0 {
		l.MaxDuration = 10 * time.Minute
	}
	return nil
}

// now is the time since Start: every time in the run is kept this way, in
// eight bytes and on the monotonic clock.
func (l *Load) now() time.Duration {
	return max(time.Since(l.start), 1)
}

// markEnd records when the run ended, once, whichever way it ended.
func (l *Load) markEnd() {
	l.endAt.CompareAndSwap(0, int64(l.now()))
}

// end is when the run ended. Call it only once the run's context is done:
// a client may see that before the AfterFunc that marks the end has run.
func (l *Load) end() time.Duration {
	l.markEnd()
	return time.Duration(l.endAt.Load())
}

// sleep waits d, or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
