package traffic

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Report is what the clients of one Load saw. Times in it are measured from
// Start.
type Report struct {
	// Duration is how long the clients ran.
	Duration time.Duration
	// Capped says MaxDuration ended the run before Stop did.
	Capped bool
	// NewConn is the HTTP clients that open a connection per request.
	NewConn HTTPStats
	// KeepAlive is the HTTP clients that keep their connection.
	KeepAlive HTTPStats
	// WS is the WebSocket clients, the broadcaster included.
	WS WSStats
	// Broadcasts is what became of the broadcaster's messages.
	Broadcasts BroadcastStats
}

// Server is one node of the app, as named by /health or a welcome.
type Server struct {
	Node   string // e.g. "chat@10.0.0.2"
	Commit string
}

// FailureKind is why a request or a connection attempt failed.
type FailureKind string

// The kinds of failure.
const (
	// KindTimeout is no complete answer within Load.Timeout.
	KindTimeout FailureKind = "timeout"
	// KindTransport is a connection refused, reset or closed early.
	KindTransport FailureKind = "transport"
	// KindStatus is an answer other than 200 (101 for a WebSocket), such as
	// HAProxy's 503 when no server is available.
	KindStatus FailureKind = "status"
	// KindProtocol is a WebSocket whose first message was not a welcome.
	KindProtocol FailureKind = "protocol"
)

// Failure is one failed request or connection attempt, kept as an example.
type Failure struct {
	At     time.Duration // when it was sent
	Client string        // "new-conn", "keep-alive", "ws 12" or "broadcaster"
	Kind   FailureKind
	Status int // the HTTP status, for KindStatus
	Path   string
	Err    string
}

// HTTPStats counts the requests of one kind of HTTP client. Requests still
// under way when the run ended are not counted at all.
type HTTPStats struct {
	Clients int
	// Sent is the requests that ended, well or not.
	Sent int64
	// Failed is the requests that got no 200 within Load.Timeout.
	Failed int64
	// ByKind splits Failed by kind.
	ByKind map[FailureKind]int64
	// ByStatus counts the answers other than 200, by status.
	ByStatus map[int]int64
	// Conns is the TCP connections opened.
	Conns int64
	// MaxLatency is the slowest successful request, body included.
	MaxLatency time.Duration
	// Servers counts the /health answers by the server that gave them.
	Servers map[Server]int64
	// Samples are the first few failures.
	Samples []Failure
}

// WSStats counts what the WebSocket clients saw. A gap is the time from a
// drop to the client's next welcome; one still open when the run ended
// counts until then in LongestGap and GapsOverSecond.
type WSStats struct {
	// Clients is the WebSocket clients, the broadcaster included.
	Clients int
	// Connects is the connections welcomed, first ones and reconnects.
	Connects int64
	// FailedConnects is the tries that did not reach a welcome.
	FailedConnects int64
	// FailedByKind splits FailedConnects by kind.
	FailedByKind map[FailureKind]int64
	// Drops is the welcomed connections that ended before the run did.
	Drops int64
	// DropsByCode splits Drops by close code: 1001 from a node that stops,
	// 1006 for a connection that ended without a close frame.
	DropsByCode map[int]int64
	// Reconnects is the drops followed by a welcome before the end.
	Reconnects int64
	// NotReconnected is the clients down after a drop when the run ended.
	NotReconnected int
	// NeverConnected is the clients never welcomed at all.
	NeverConnected int
	// LongestGap is the longest time a client was without a connection
	// after a drop.
	LongestGap time.Duration
	// GapsOverSecond is the gaps longer than one second.
	GapsOverSecond int64
	// GapP50 and GapP99 are percentiles of the reconnect gaps in DropLog.
	GapP50, GapP99 time.Duration
	// Open is the connections still open when the run ended.
	Open int
	// Servers counts connects, drops and connections open at the end by
	// the server that welcomed them.
	Servers map[Server]ServerCounts
	// DropLog is every drop, up to the first 100,000.
	DropLog []Drop
	// Samples are the first few failed connects.
	Samples []Failure
}

// ServerCounts is what the WebSocket clients saw of one server.
type ServerCounts struct {
	Connects, Drops int64
	Open            int
}

// Drop is one welcomed connection that ended before the run did.
type Drop struct {
	Client int
	At     time.Duration
	Code   int
	Server Server
	// Gap is the time until the client's next welcome, or -1 if none came
	// before the end.
	Gap time.Duration
}

// BroadcastStats is what became of the broadcaster's messages. A client is
// expected to receive a broadcast when it was welcomed before the broadcast
// was sent and stayed connected until at least Load.Grace after.
type BroadcastStats struct {
	// Sent is the broadcasts written without error on the broadcaster's
	// connection, less those Retracted.
	Sent int64
	// Retracted is the writes that turned out not to be broadcasts: made in
	// the last Grace before the broadcaster's own connection dropped, and
	// never received back by it. The node dropped them while closing that
	// connection, as it would a user's message.
	Retracted int64
	// Lost is the broadcasts, sent at least Grace before the end, that no
	// client received.
	Lost int64
	// Delivered is the broadcasts received, added up over all clients.
	Delivered int64
	// Expected is the (client, broadcast) pairs where the client was
	// expected to receive the broadcast.
	Expected int64
	// Missed is the Expected pairs where the client did not receive it.
	Missed int64
	// Duplicates is the broadcasts a connection received more than once.
	Duplicates int64
	// Misses are the first few missed pairs.
	Misses []Miss
}

// Miss is a broadcast that a connected client did not receive.
type Miss struct {
	Client int
	Seq    int
	SentAt time.Duration
}

// buildReport adds everything up, once every client has stopped.
func (l *Load) buildReport() *Report {
	r := &Report{
		Duration:  l.end(),
		Capped:    errors.Is(context.Cause(l.ctx), errCapped),
		NewConn:   l.newConn.s,
		KeepAlive: l.keepAlive.s,
	}
	if l.ws != nil {
		r.WS, r.Broadcasts = l.ws.report(l.casts, l.Grace, l.end())
	}
	return r
}

// String is r as a Markdown table of figure and value.
func (r *Report) String() string {
	return Table([]string{"value"}, []*Report{r})
}

// Table is a Markdown table of the same figures from several runs, one
// column each under heads: for a benchmark that compares runs.
func Table(heads []string, rs []*Report) string {
	rows := []struct {
		name string
		cell func(*Report) string
	}{
		{"duration", func(r *Report) string { return ms(r.Duration) }},
		{"HTTP new-connection requests: sent / failed", func(r *Report) string { return sentFailed(r.NewConn) }},
		{"HTTP keep-alive requests: sent / failed", func(r *Report) string { return sentFailed(r.KeepAlive) }},
		{"HTTP failures: timeout / transport / status", func(r *Report) string {
			k := func(kind FailureKind) int64 { return r.NewConn.ByKind[kind] + r.KeepAlive.ByKind[kind] }
			return fmt.Sprintf("%d / %d / %d", k(KindTimeout), k(KindTransport), k(KindStatus))
		}},
		{"HTTP slowest answer", func(r *Report) string { return ms(max(r.NewConn.MaxLatency, r.KeepAlive.MaxLatency)) }},
		{"WebSocket clients (with broadcaster)", func(r *Report) string { return fmt.Sprint(r.WS.Clients) }},
		{"WebSocket drops: 1001 / abnormal (1006) / other", func(r *Report) string {
			c := r.WS.DropsByCode
			return fmt.Sprintf("%d / %d / %d", c[1001], c[1006], r.WS.Drops-c[1001]-c[1006])
		}},
		{"WebSocket reconnects / not reconnected at end", func(r *Report) string {
			return fmt.Sprintf("%d / %d", r.WS.Reconnects, r.WS.NotReconnected)
		}},
		{"WebSocket reconnect gap: p50 / p99 / longest", func(r *Report) string {
			return ms(r.WS.GapP50) + " / " + ms(r.WS.GapP99) + " / " + ms(r.WS.LongestGap)
		}},
		{"WebSocket gaps over 1 s", func(r *Report) string { return fmt.Sprint(r.WS.GapsOverSecond) }},
		{"WebSocket failed connection tries", func(r *Report) string { return fmt.Sprint(r.WS.FailedConnects) }},
		{"WebSocket connections open at end", func(r *Report) string { return fmt.Sprint(r.WS.Open) }},
		{"broadcasts: sent / lost (retracted)", func(r *Report) string {
			return fmt.Sprintf("%d / %d (%d)", r.Broadcasts.Sent, r.Broadcasts.Lost, r.Broadcasts.Retracted)
		}},
		{"broadcast deliveries: expected / missed", func(r *Report) string {
			return fmt.Sprintf("%d / %d", r.Broadcasts.Expected, r.Broadcasts.Missed)
		}},
	}
	var b strings.Builder
	b.WriteString("| figure |")
	for _, h := range heads {
		b.WriteString(" " + h + " |")
	}
	b.WriteString("\n|---|" + strings.Repeat("---|", len(heads)) + "\n")
	for _, row := range rows {
		b.WriteString("| " + row.name + " |")
		for _, r := range rs {
			b.WriteString(" " + row.cell(r) + " |")
		}
		b.WriteString("\n")
	}
	return b.String()
}

func sentFailed(s HTTPStats) string {
	return fmt.Sprintf("%d / %d", s.Sent, s.Failed)
}

// ms writes d in milliseconds, or in seconds from ten seconds up.
func ms(d time.Duration) string {
	if d >= 10*time.Second {
		return fmt.Sprintf("%.1f s", d.Seconds())
	}
	return fmt.Sprintf("%d ms", d.Milliseconds())
}
