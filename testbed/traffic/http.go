package traffic

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync"
	"time"
)

// request is one of the paths the HTTP clients ask for.
type request struct {
	path   string
	health bool // answers JSON naming the node and commit that served it
}

const (
	// maxBody bounds what is read of one answer; the rest is left unread.
	maxBody = 1 << 20
	// maxSamples bounds the failures kept as examples, per kind of client.
	maxSamples = 10
	// maxServers bounds the distinct servers counted; the rest are lumped
	// together under otherServers.
	maxServers = 64
)

// otherServers stands for every server past the first maxServers.
var otherServers = Server{Node: "(others)"}

func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// goHTTP starts HTTP client i of n, which asks for l.paths in turn and
// pauses l.Pause after each answer. The n clients start spread over one
// pause so that they do not all ask at once.
func (l *Load) goHTTP(c *http.Client, t *httpTally, i, n int) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		if !sleep(l.ctx, l.Pause*time.Duration(i)/time.Duration(n)) {
			return
		}
		for k := i; ; k++ {
			l.get(c, t, l.paths[k%len(l.paths)])
			if !sleep(l.ctx, l.Pause) {
				return
			}
		}
	}()
}

// get sends one request and records its outcome in t, unless the run ended
// while it was under way: that is no failure of the app's.
func (l *Load) get(c *http.Client, t *httpTally, r request) {
	ctx, cancel := context.WithTimeout(l.ctx, l.Timeout)
	defer cancel()
	var fresh bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) { fresh = !info.Reused },
	})
	began := l.now()
	srv, err := get(ctx, c, l.BaseURL+r.path, r.health)
	if l.ctx.Err() != nil {
		return
	}
	var f *Failure
	if err != nil {
		f = failure(ctx, err)
		f.At, f.Client, f.Path = began, t.name, r.path
	}
	t.record(l.now()-began, fresh, srv, f)
}

// get asks for u and reads the answer. For /health it returns the server
// named in the JSON; a 200 whose JSON does not parse is still a success for
// the user, with no server.
func get(ctx context.Context, c *http.Client, u string, health bool) (Server, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return Server{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return Server{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if resp.StatusCode != http.StatusOK {
		return Server{}, &statusError{code: resp.StatusCode, body: body}
	}
	if err != nil {
		return Server{}, fmt.Errorf("read answer: %w", err)
	}
	if !health {
		return Server{}, nil
	}
	var h struct{ Node, Commit string }
	if json.Unmarshal(body, &h) != nil {
		return Server{}, nil
	}
	return Server{Node: h.Node, Commit: h.Commit}, nil
}

// statusError is an answer other than 200, or a WebSocket handshake answered
// with something other than 101.
type statusError struct {
	code int
	body []byte
}

func (e *statusError) Error() string {
	body := strings.Join(strings.Fields(string(e.body)), " ")
	return "HTTP " + strconv.Itoa(e.code) + " " + http.StatusText(e.code) + ": " + truncate(body, 160)
}

// failure classifies err from work done under ctx, a context with a
// timeout of its own.
func failure(ctx context.Context, err error) *Failure {
	f := &Failure{Kind: KindTransport, Err: err.Error()}
	var se *statusError
	var ne net.Error
	switch {
	case errors.As(err, &se):
		f.Kind, f.Status = KindStatus, se.code
	case errors.Is(ctx.Err(), context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		f.Kind = KindTimeout
	}
	return f
}

// httpTally gathers the outcomes of one kind of HTTP client.
type httpTally struct {
	name string
	mu   sync.Mutex
	s    HTTPStats
}

func newHTTPTally(name string, clients int) *httpTally {
	return &httpTally{name: name, s: HTTPStats{
		Clients:  clients,
		ByKind:   map[FailureKind]int64{},
		ByStatus: map[int]int64{},
		Servers:  map[Server]int64{},
	}}
}

// record counts one request that took took, on a new connection if fresh,
// answered by srv (when known), failed if f is not nil.
func (t *httpTally) record(took time.Duration, fresh bool, srv Server, f *Failure) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := &t.s
	s.Sent++
	if fresh {
		s.Conns++
	}
	if f != nil {
		s.Failed++
		s.ByKind[f.Kind]++
		if f.Status != 0 {
			s.ByStatus[f.Status]++
		}
		if len(s.Samples) < maxSamples {
			s.Samples = append(s.Samples, *f)
		}
		return
	}
	s.MaxLatency = max(s.MaxLatency, took)
	if srv != (Server{}) {
		s.Servers[intern(s.Servers, srv)]++
	}
}

// intern returns the key under which m counts srv: srv itself, or
// otherServers once m holds maxServers others.
func intern[V any](m map[Server]V, srv Server) Server {
	if _, ok := m[srv]; !ok && len(m) >= maxServers {
		return otherServers
	}
	return srv
}
