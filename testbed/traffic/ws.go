package traffic

import (
	"context"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

const (
	// wsPath is the app's WebSocket endpoint.
	wsPath = "/socket/websocket"
	// maxMessage is the longest frame a client accepts; a longer one ends
	// the connection (1009), which is then counted as a drop.
	maxMessage = 4096
	// maxSeqs bounds the broadcasts of one run, whatever MaxDuration and
	// BroadcastInterval say: the broadcaster stops after that many.
	maxSeqs = 1 << 20
	// maxDrops bounds the drops kept one by one in WSStats.DropLog.
	maxDrops = 100_000
)

// reconnectAfter is Phoenix's JavaScript client's default reconnectAfterMs:
// the wait before try n is reconnectAfter[n-1], and 5 s past the end.
var reconnectAfter = [...]time.Duration{
	10 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond,
	150 * time.Millisecond, 200 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2 * time.Second,
}

func backoff(try int) time.Duration {
	if try <= len(reconnectAfter) {
		return reconnectAfter[try-1]
	}
	return 5 * time.Second
}

// wsClient is one WebSocket client. Everything but conn belongs to its own
// goroutine; what it finds goes to the shared wsTally at each connect and
// drop, and its broadcast counts once at the end, so that a client costs a
// few dozen bytes besides its connection.
type wsClient struct {
	l    *Load
	id   int
	conn atomic.Pointer[websocket.Conn] // nil while down; the broadcaster writes on it
	got  seqSet                         // broadcasts received on the current connection

	delivered, expected, missed, duplicates int64
}

// startWS starts the WebSocket clients and, if broadcasting, the broadcaster
// (client number WSClients, one more than the rest).
func (l *Load) startWS(dialer *net.Dialer) {
	l.wsURL = l.BaseURL + wsPath
	// Small buffers: messages here are a few dozen bytes, and there may be
	// thousands of connections.
	l.wsHTTP = &http.Client{Transport: &http.Transport{
		DialContext:     dialer.DialContext,
		ReadBufferSize:  1024,
		WriteBufferSize: 1024,
	}}
	l.wsCount, l.casterID = l.WSClients, -1
	seqs := 0
	if l.BroadcastInterval > 0 {
		l.casterID = l.wsCount
		l.wsCount++
		seqs = int(min(l.MaxDuration/l.BroadcastInterval+2, maxSeqs))
	}
	l.ws = newWSTally(l.wsCount, l.casterID)
	l.casts = &broadcasts{at: make([]atomic.Int64, seqs), got: make([]atomic.Int32, seqs)}
	for i := range l.wsCount {
		c := &wsClient{l: l, id: i}
		l.wg.Add(1)
		go c.run()
		if i == l.casterID {
			l.wg.Add(1)
			go l.broadcast(c)
		}
	}
}

// run connects, reads until the connection drops, and reconnects with
// Phoenix's backoff, until the run ends. It records each connect (and the
// gap since the drop before it), each failed try, and each drop with its
// close code.
func (c *wsClient) run() {
	l := c.l
	defer l.wg.Done()
	ctx := l.ctx
	ever := false
	down, drop := time.Duration(-1), -1 // the pending drop: when, and its DropLog index
	for try := 0; ; try++ {
		if try > 0 && !sleep(ctx, backoff(try)) {
			break
		}
		first := int(l.casts.issued.Load())
		conn, srv, f := c.dial(ctx)
		if f != nil {
			if ctx.Err() != nil {
				break
			}
			l.ws.failed(c.id, f)
			continue
		}
		since := l.now()
		ever = true
		l.connected.Add(1)
		l.ws.connected(srv, since, down, drop)
		down, drop, try = -1, -1, 0
		c.got.reset(first)
		c.conn.Store(conn)

		err := c.read(ctx, conn)

		c.conn.Store(nil)
		conn.CloseNow()
		l.connected.Add(-1)
		if ctx.Err() != nil {
			c.settle(since, l.end())
			l.ws.open(srv)
			break
		}
		down = l.now()
		if c.id == l.casterID {
			l.casts.retract(&c.got, down, l.Grace)
		}
		c.settle(since, down)
		drop = l.ws.dropped(c.id, down, closeCode(err), srv)
	}
	l.ws.finished(c, ever, down)
}

// dial connects and waits for the welcome, all within l.Timeout.
func (c *wsClient) dial(ctx context.Context) (*websocket.Conn, Server, *Failure) {
	ctx, cancel := context.WithTimeout(ctx, c.l.Timeout)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, c.l.wsURL, &websocket.DialOptions{HTTPClient: c.l.wsHTTP})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			err = &statusError{code: resp.StatusCode, body: body}
		}
		return nil, Server{}, failure(ctx, err)
	}
	conn.SetReadLimit(maxMessage)
	typ, msg, err := conn.Read(ctx)
	if err != nil {
		conn.CloseNow()
		return nil, Server{}, failure(ctx, err)
	}
	w := strings.Fields(string(msg))
	if typ != websocket.MessageText || len(w) != 3 || w[0] != "welcome" {
		conn.CloseNow()
		return nil, Server{}, &Failure{Kind: KindProtocol, Err: "first message is not a welcome: " + truncate(string(msg), 80)}
	}
	return conn, Server{Node: w[1], Commit: w[2]}, nil
}

// read receives broadcasts until the connection ends, and returns why.
// Messages that are not "b <seq>" of this run are read and ignored.
func (c *wsClient) read(ctx context.Context, conn *websocket.Conn) error {
	var buf [32]byte // longer than any "b <seq>"
	for {
		_, r, err := conn.Reader(ctx)
		if err != nil {
			return err
		}
		n, err := io.ReadFull(r, buf[:])
		switch err {
		case io.EOF, io.ErrUnexpectedEOF: // shorter than buf, as ours are
		case nil: // longer: not ours
			n = 0
			if _, err := io.Copy(io.Discard, r); err != nil {
				return err
			}
		default:
			return err
		}
		if seq, ok := c.l.casts.parse(buf[:n]); ok {
			c.receive(seq)
		}
	}
}

func (c *wsClient) receive(seq int) {
	c.l.casts.got[seq].Add(1)
	c.delivered++
	if !c.got.add(seq) {
		c.duplicates++
	}
}

// settle counts, for a connection welcomed at since that ended at end, the
// broadcasts it should have received (sent after since, and at least Grace
// before end) and those it missed.
func (c *wsClient) settle(since, end time.Duration) {
	b := c.l.casts
	for seq, n := c.got.first, int(b.issued.Load()); seq < n; seq++ {
		at := time.Duration(b.at[seq].Load())
		if at == 0 || at <= since {
			continue
		}
		if at+c.l.Grace > end {
			break
		}
		c.expected++
		if !c.got.has(seq) {
			c.missed++
			c.l.ws.miss(Miss{Client: c.id, Seq: seq, SentAt: at})
		}
	}
}

// closeCode is the close code that ended a connection: the peer's, or 1006
// when the connection ended without a close frame.
func closeCode(err error) int {
	if code := websocket.CloseStatus(err); code != -1 {
		return int(code)
	}
	return int(websocket.StatusAbnormalClosure)
}

// broadcasts is what the broadcaster sent, shared with every client.
type broadcasts struct {
	issued    atomic.Int64 // seqs handed out so far; written by the broadcaster only
	sent      atomic.Int64 // of those, written without error and not retracted
	retracted atomic.Int64
	at        []atomic.Int64 // each seq's send time, once written without error; 0 otherwise
	got       []atomic.Int32 // how many clients received each seq
}

// broadcast sends "b <seq>" on c's connection every BroadcastInterval. A
// tick while c is down, or a write that fails, sends no broadcast: c
// reconnects like any other client.
func (l *Load) broadcast(c *wsClient) {
	defer l.wg.Done()
	b := l.casts
	tick := time.NewTicker(l.BroadcastInterval)
	defer tick.Stop()
	msg := make([]byte, 0, 24)
	for seq := 0; seq < len(b.at); {
		select {
		case <-l.ctx.Done():
			return
		case <-tick.C:
		}
		conn := c.conn.Load()
		if conn == nil {
			continue
		}
		at := l.now()
		b.issued.Store(int64(seq + 1))
		ctx, cancel := context.WithTimeout(l.ctx, l.Timeout)
		msg = strconv.AppendInt(append(msg[:0], "b "...), int64(seq), 10)
		if conn.Write(ctx, websocket.MessageText, msg) == nil {
			b.at[seq].Store(int64(at))
			b.sent.Add(1)
		}
		cancel()
		seq++
	}
}

// retract takes back what the broadcaster wrote in the last grace before
// its connection dropped at down and never received itself: the node was
// closing the socket and dropped it, as it would any client's message then,
// so it was no broadcast. got is what the broadcaster received on that
// connection.
func (b *broadcasts) retract(got *seqSet, down, grace time.Duration) {
	for seq, n := got.first, int(b.issued.Load()); seq < n; seq++ {
		at := time.Duration(b.at[seq].Load())
		if at != 0 && at+grace > down && !got.has(seq) {
			b.at[seq].Store(0)
			b.sent.Add(-1)
			b.retracted.Add(1)
		}
	}
}

// parse reads "b <seq>" for a seq this run has issued.
func (b *broadcasts) parse(msg []byte) (int, bool) {
	digits, ok := strings.CutPrefix(string(msg), "b ")
	if !ok {
		return 0, false
	}
	seq, err := strconv.Atoi(digits)
	if err != nil || seq < 0 || seq >= int(b.issued.Load()) {
		return 0, false
	}
	return seq, true
}

// seqSet is the set of seqs one connection received, a bit each, from the
// first seq issued before it was welcomed: a connection that lasts ten
// minutes at ten broadcasts a second costs 750 bytes.
type seqSet struct {
	first int
	words []uint64
}

// reset empties s for a connection whose broadcasts start at first,
// keeping its memory.
func (s *seqSet) reset(first int) {
	s.first, s.words = first, s.words[:0]
}

// add puts seq in s and reports whether it was new. Seqs before first are
// not kept.
func (s *seqSet) add(seq int) bool {
	i := seq - s.first
	if i < 0 {
		return true
	}
	for len(s.words) <= i/64 {
		s.words = append(s.words, 0)
	}
	bit := uint64(1) << (i % 64)
	if s.words[i/64]&bit != 0 {
		return false
	}
	s.words[i/64] |= bit
	return true
}

func (s *seqSet) has(seq int) bool {
	i := seq - s.first
	return i >= 0 && i/64 < len(s.words) && s.words[i/64]&(1<<(i%64)) != 0
}

// wsTally gathers what the WebSocket clients saw.
type wsTally struct {
	caster int // the broadcaster's client id, or -1
	mu     sync.Mutex
	s      WSStats
	casts  BroadcastStats
}

func newWSTally(clients, caster int) *wsTally {
	return &wsTally{caster: caster, s: WSStats{
		Clients:      clients,
		FailedByKind: map[FailureKind]int64{},
		DropsByCode:  map[int]int64{},
		Servers:      map[Server]ServerCounts{},
	}}
}

func (t *wsTally) failed(client int, f *Failure) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.s.FailedConnects++
	t.s.FailedByKind[f.Kind]++
	if len(t.s.Samples) < maxSamples {
		f.Client, f.Path = "ws "+strconv.Itoa(client), wsPath
		if client == t.caster {
			f.Client = "broadcaster"
		}
		t.s.Samples = append(t.s.Samples, *f)
	}
}

// connected records a welcome from srv at since; down and drop are the
// client's pending drop (down < 0 when there is none).
func (t *wsTally) connected(srv Server, since, down time.Duration, drop int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.s.Connects++
	t.bump(srv, func(c *ServerCounts) { c.Connects++ })
	if down < 0 {
		return
	}
	gap := since - down
	t.s.Reconnects++
	t.gap(gap)
	if drop >= 0 {
		t.s.DropLog[drop].Gap = gap
	}
}

// dropped records a drop and returns its index in DropLog, or -1 once
// DropLog is full.
func (t *wsTally) dropped(client int, at time.Duration, code int, srv Server) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.s.Drops++
	t.s.DropsByCode[code]++
	t.bump(srv, func(c *ServerCounts) { c.Drops++ })
	if len(t.s.DropLog) >= maxDrops {
		return -1
	}
	t.s.DropLog = append(t.s.DropLog, Drop{Client: client, At: at, Code: code, Server: srv, Gap: -1})
	return len(t.s.DropLog) - 1
}

func (t *wsTally) open(srv Server) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.s.Open++
	t.bump(srv, func(c *ServerCounts) { c.Open++ })
}

func (t *wsTally) miss(m Miss) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.casts.Misses) < maxSamples {
		t.casts.Misses = append(t.casts.Misses, m)
	}
}

// finished adds up a client that has stopped: down is when its last
// connection dropped if it was not back by the end, else negative.
func (t *wsTally) finished(c *wsClient, ever bool, down time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !ever {
		t.s.NeverConnected++
	}
	if down >= 0 {
		t.s.NotReconnected++
		t.gap(c.l.end() - down)
	}
	t.casts.Delivered += c.delivered
	t.casts.Expected += c.expected
	t.casts.Missed += c.missed
	t.casts.Duplicates += c.duplicates
}

// gap counts a time a client spent without a connection after a drop.
func (t *wsTally) gap(d time.Duration) {
	t.s.LongestGap = max(t.s.LongestGap, d)
	if d > time.Second {
		t.s.GapsOverSecond++
	}
}

func (t *wsTally) bump(srv Server, f func(*ServerCounts)) {
	srv = intern(t.s.Servers, srv)
	c := t.s.Servers[srv]
	f(&c)
	t.s.Servers[srv] = c
}

// report finishes the figures once every client has stopped.
func (t *wsTally) report(b *broadcasts, grace, end time.Duration) (WSStats, BroadcastStats) {
	s, casts := t.s, t.casts
	var gaps []time.Duration
	for _, d := range s.DropLog {
		if d.Gap >= 0 {
			gaps = append(gaps, d.Gap)
		}
	}
	slices.Sort(gaps)
	s.GapP50, s.GapP99 = percentile(gaps, 0.50), percentile(gaps, 0.99)

	casts.Sent, casts.Retracted = b.sent.Load(), b.retracted.Load()
	for seq := range int(b.issued.Load()) {
		at := time.Duration(b.at[seq].Load())
		if at != 0 && at+grace <= end && b.got[seq].Load() == 0 {
			casts.Lost++
		}
	}
	return s, casts
}

// percentile is the nearest-rank q-th of sorted d, or 0 for none.
func percentile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := int(q*float64(len(d))+0.999999) - 1
	return d[min(max(i, 0), len(d)-1)]
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
