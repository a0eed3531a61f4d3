package traffic_test

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/clusterops/operator/testbed/traffic"
)

// The stand-in's nodes. They are names only: everything is served from one
// listener on the loopback.
const (
	nodeA  = "chat@node-a"
	nodeB  = "chat@node-b"
	commit = "0123456789abcdef0123456789abcdef01234567"
)

// raceEnabled says the race detector is on: it slows both the clients and
// the stand-in several times over, so TestManyClients then checks counts
// but only logs its timings.
var raceEnabled bool

// standInEnv makes the test binary serve the stand-in instead of running
// tests, so that TestManyClients measures the clients alone.
const standInEnv = "TRAFFIC_STAND_IN"

func TestMain(m *testing.M) {
	if os.Getenv(standInEnv) == "1" {
		serveStandIn()
		return
	}
	os.Exit(m.Run())
}

func TestNoFaults(t *testing.T) {
	s := startStandIn(t)
	l := &traffic.Load{
		BaseURL:          s.url,
		NewConnClients:   2,
		KeepAliveClients: 2,
		Pause:            20 * time.Millisecond,
		Paths:            []string{"/health", "/", "/slow?ms=30"},
		WSClients:        20,
	}
	start(t, l)
	waitConnected(t, l)
	time.Sleep(1500 * time.Millisecond)
	r := l.Stop()
	t.Logf("\n%s", r)

	for name, h := range map[string]traffic.HTTPStats{"new-conn": r.NewConn, "keep-alive": r.KeepAlive} {
		if h.Sent < 20 || h.Failed != 0 {
			t.Errorf("%s: sent %d, failed %d (%v); want 20+ sent, none failed", name, h.Sent, h.Failed, h.Samples)
		}
		for _, node := range []string{nodeA, nodeB} {
			if h.Servers[traffic.Server{Node: node, Commit: commit}] == 0 {
				t.Errorf("%s: no /health answer from %s: %v", name, node, h.Servers)
			}
		}
	}
	if r.NewConn.Conns != r.NewConn.Sent {
		t.Errorf("new-conn clients opened %d connections for %d requests", r.NewConn.Conns, r.NewConn.Sent)
	}
	ws := r.WS
	if ws.Clients != 21 || ws.Connects != 21 || ws.Open != 21 || ws.Drops != 0 || ws.FailedConnects != 0 || ws.NeverConnected != 0 {
		t.Errorf("WebSocket: %+v; want 21 clients connected once, no drops, no failures", ws)
	}
	b := r.Broadcasts
	if b.Sent < 10 || b.Expected < 10*20 || b.Missed != 0 || b.Lost != 0 || b.Duplicates != 0 || b.Delivered < b.Expected {
		t.Errorf("broadcasts: %+v; want 10+ sent, all delivered", b)
	}
	if r.Capped || r.Duration < 1500*time.Millisecond {
		t.Errorf("capped %v after %v; want not capped, 1.5 s or more", r.Capped, r.Duration)
	}
}

func TestDrops(t *testing.T) {
	for _, tc := range []struct {
		name     string
		abnormal bool
		code     int
	}{
		{"going away", false, 1001},
		{"abnormal", true, 1006},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startStandIn(t)
			l := &traffic.Load{BaseURL: s.url, WSClients: 40}
			start(t, l)
			waitConnected(t, l)
			time.Sleep(300 * time.Millisecond)
			closed := s.stop(nodeA, tc.abnormal)
			waitConnected(t, l)
			time.Sleep(700 * time.Millisecond)
			r := l.Stop()
			t.Logf("closed %d of %d\n%s", closed, r.WS.Clients, r)

			ws := r.WS
			if closed == 0 || ws.Drops != int64(closed) || ws.DropsByCode[tc.code] != int64(closed) {
				t.Errorf("drops %d by code %v; want %d, all %d", ws.Drops, ws.DropsByCode, closed, tc.code)
			}
			if ws.Reconnects != int64(closed) || ws.NotReconnected != 0 || ws.Open != 41 {
				t.Errorf("reconnects %d, not reconnected %d, open %d; want %d, 0, 41", ws.Reconnects, ws.NotReconnected, ws.Open, closed)
			}
			if ws.GapP50 <= 0 || ws.LongestGap < ws.GapP99 || ws.LongestGap > time.Second || ws.GapsOverSecond != 0 {
				t.Errorf("gaps p50 %v p99 %v longest %v, %d over 1 s; want all between 0 and 1 s", ws.GapP50, ws.GapP99, ws.LongestGap, ws.GapsOverSecond)
			}
			if len(ws.DropLog) != closed {
				t.Fatalf("%d drops logged; want %d", len(ws.DropLog), closed)
			}
			for _, d := range ws.DropLog {
				if d.Code != tc.code || d.Server.Node != nodeA || d.Gap <= 0 || d.Gap > time.Second {
					t.Errorf("drop %+v; want code %d on %s, gap within 1 s", d, tc.code, nodeA)
				}
			}
			a, b := ws.Servers[traffic.Server{Node: nodeA, Commit: commit}], ws.Servers[traffic.Server{Node: nodeB, Commit: commit}]
			if a.Drops != int64(closed) || a.Open != 0 || b.Open != 41 || b.Connects != 41 {
				t.Errorf("%s %+v, %s %+v; want every drop on the first, all open on the second", nodeA, a, nodeB, b)
			}
			if c := r.Broadcasts; c.Sent < 5 || c.Missed != 0 || c.Lost != 0 {
				t.Errorf("broadcasts %+v; want 5+ sent, none missed", c)
			}
		})
	}
}

func TestServiceUnavailable(t *testing.T) {
	s := startStandIn(t)
	l := &traffic.Load{BaseURL: s.url, NewConnClients: 3, KeepAliveClients: 3, Pause: 20 * time.Millisecond}
	start(t, l)
	time.Sleep(300 * time.Millisecond)
	s.fail503.Store(true)
	time.Sleep(300 * time.Millisecond)
	s.fail503.Store(false)
	time.Sleep(300 * time.Millisecond)
	r := l.Stop()
	t.Logf("\n%s", r)

	for name, h := range map[string]traffic.HTTPStats{"new-conn": r.NewConn, "keep-alive": r.KeepAlive} {
		if h.Failed < 10 || h.ByKind[traffic.KindStatus] != h.Failed || h.ByStatus[503] != h.Failed || h.Sent < 2*h.Failed {
			t.Errorf("%s: sent %d, failed %d, by kind %v, by status %v; want 10+ failed, all 503, most not", name, h.Sent, h.Failed, h.ByKind, h.ByStatus)
		}
		if len(h.Samples) == 0 || h.Samples[0].Status != 503 || !strings.Contains(h.Samples[0].Err, "No server is available") {
			t.Errorf("%s: samples %+v; want a 503 with its text", name, h.Samples)
		}
	}
}

func TestServerStopsAnswering(t *testing.T) {
	s := startStandIn(t)
	l := &traffic.Load{
		BaseURL:          s.url,
		NewConnClients:   2,
		KeepAliveClients: 2,
		Pause:            20 * time.Millisecond,
		Timeout:          200 * time.Millisecond,
		WSClients:        10,
	}
	start(t, l)
	waitConnected(t, l)
	time.Sleep(300 * time.Millisecond)
	s.hang.Store(true)
	time.Sleep(1200 * time.Millisecond)
	began := time.Now()
	r := l.Stop()
	took := time.Since(began)
	t.Logf("Stop took %v\n%s", took, r)

	if took > 500*time.Millisecond {
		t.Errorf("Stop took %v; want it prompt", took)
	}
	for name, h := range map[string]traffic.HTTPStats{"new-conn": r.NewConn, "keep-alive": r.KeepAlive} {
		if h.ByKind[traffic.KindTimeout] < 4 || h.Failed != h.ByKind[traffic.KindTimeout] {
			t.Errorf("%s: failed %d, by kind %v; want 4+ failed, all by timeout", name, h.Failed, h.ByKind)
		}
	}
	// The WebSockets stay open but nothing is relayed any more.
	if b := r.Broadcasts; r.WS.Open != 11 || b.Missed < 5*11 || b.Lost < 5 || len(b.Misses) == 0 {
		t.Errorf("open %d, broadcasts %+v; want 11 open that missed 5+ broadcasts each", r.WS.Open, b)
	}
}

func TestMaxDuration(t *testing.T) {
	s := startStandIn(t)
	l := &traffic.Load{BaseURL: s.url, KeepAliveClients: 1, WSClients: 2, MaxDuration: 300 * time.Millisecond}
	start(t, l)
	time.Sleep(600 * time.Millisecond)
	if n := l.Connected(); n != 0 {
		t.Errorf("%d WebSocket clients still connected after MaxDuration", n)
	}
	r := l.Stop()
	if !r.Capped || r.Duration < 300*time.Millisecond || r.Duration > 400*time.Millisecond || r.WS.Open != 3 || r.KeepAlive.Sent == 0 {
		t.Errorf("capped %v after %v with %d open, %d requests; want capped after 300 ms, 3 open", r.Capped, r.Duration, r.WS.Open, r.KeepAlive.Sent)
	}
	if again := l.Stop(); again != r {
		t.Errorf("second Stop returned another report")
	}
}

func TestStartRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		load *traffic.Load
	}{
		{"no base URL", &traffic.Load{}},
		{"not http", &traffic.Load{BaseURL: "ftp://127.0.0.1:21"}},
		{"negative clients", &traffic.Load{BaseURL: "http://127.0.0.1:80", WSClients: -1}},
		{"relative path", &traffic.Load{BaseURL: "http://127.0.0.1:80", Paths: []string{"health"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.load.Start(t.Context()); err == nil {
				tc.load.Stop()
				t.Errorf("Start accepted %s", tc.name)
			}
		})
	}
}

// TestManyClients runs 2,000 WebSocket clients against a stand-in in
// another process, so that the memory and CPU it logs are the clients'.
func TestManyClients(t *testing.T) {
	const clients = 2000
	base := startStandInProcess(t)
	runtime.GC() // twice: the second empties the pools the first kept
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	cpu0 := cpuTime()

	l := &traffic.Load{BaseURL: base, WSClients: clients, KeepAliveClients: 2}
	start(t, l)
	began := time.Now()
	waitConnected(t, l)
	t.Logf("%d clients connected in %v, using %v of CPU", clients+1, time.Since(began).Round(time.Millisecond), cpuTime()-cpu0)

	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := int64(after.HeapInuse) - int64(before.HeapInuse)
	stack := int64(after.StackInuse) - int64(before.StackInuse)
	t.Logf("memory per WebSocket client: %d B heap + %d B stack (%d goroutines)", heap/(clients+1), stack/(clients+1), runtime.NumGoroutine())

	cpu1, wall := cpuTime(), time.Now()
	time.Sleep(time.Second)
	t.Logf("steady: %.0f ms of CPU per second with broadcasts every 100 ms to %d clients", float64((cpuTime()-cpu1).Milliseconds())/time.Since(wall).Seconds(), clients+1)

	resp, err := http.Get(base + "/_stand-in/stop?node=" + nodeA)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	closed, err := strconv.Atoi(strings.TrimSpace(string(body)))
	if err != nil {
		t.Fatalf("stop %s: %q", nodeA, body)
	}
	stopped := time.Now()
	waitConnected(t, l)
	t.Logf("closed %d in %v; all back %v later", closed, stopped.Sub(wall.Add(time.Second)).Round(time.Millisecond), time.Since(stopped).Round(time.Millisecond))
	time.Sleep(700 * time.Millisecond)
	r := l.Stop()
	t.Logf("\n%s", r)

	ws := r.WS
	if closed < clients/3 || ws.Drops != int64(closed) || ws.DropsByCode[1001] != int64(closed) || ws.Reconnects != int64(closed) {
		t.Errorf("closed %d; drops %d by code %v, reconnects %d; want all closed dropped with 1001 and back", closed, ws.Drops, ws.DropsByCode, ws.Reconnects)
	}
	if ws.Open != clients+1 || ws.NotReconnected != 0 {
		t.Errorf("open %d, not reconnected %d; want all %d open", ws.Open, ws.NotReconnected, clients+1)
	}
	if b := r.Broadcasts; b.Sent < 15 || b.Expected < 10*clients {
		t.Errorf("broadcasts %+v; want 15+ sent, each to most clients", b)
	}
	if raceEnabled {
		t.Logf("race detector on: not asserting timings: %d gaps over 1 s, %d broadcasts missed", ws.GapsOverSecond, r.Broadcasts.Missed)
		return
	}
	if ws.GapsOverSecond != 0 || r.Broadcasts.Missed != 0 || r.Broadcasts.Lost != 0 {
		t.Errorf("%d gaps over 1 s (longest %v), broadcasts %+v; want every client back within 1 s, none missed", ws.GapsOverSecond, ws.LongestGap, r.Broadcasts)
	}
}

func TestDuplicates(t *testing.T) {
	s := startStandIn(t)
	s.relayTwice.Store(true)
	l := &traffic.Load{BaseURL: s.url, WSClients: 3, BroadcastInterval: 20 * time.Millisecond}
	start(t, l)
	waitConnected(t, l)
	time.Sleep(700 * time.Millisecond)
	r := l.Stop()
	if b := r.Broadcasts; b.Duplicates < 10*4 || b.Missed != 0 || b.Delivered < 2*b.Expected {
		t.Errorf("broadcasts %+v; want every one delivered twice, counted as duplicates", b)
	}
}

// TestWelcomeWithHandshake serves the welcome in the same write as the 101,
// as the app does, so that it arrives in one TCP segment with it.
func TestWelcomeWithHandshake(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		welcome := "welcome " + nodeA + " " + commit // under 126 bytes: a one-byte length
		out := []byte("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n" +
			"sec-websocket-accept: " + base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n")
		out = append(append(out, 0x81, byte(len(welcome))), welcome...) // FIN, text; unmasked
		conn.Write(out)
		io.Copy(io.Discard, conn) // until the client goes
	}))
	t.Cleanup(srv.Close)
	l := &traffic.Load{BaseURL: srv.URL, WSClients: 1, BroadcastInterval: -1}
	start(t, l)
	waitConnected(t, l)
	r := l.Stop()
	if got := r.WS.Servers[traffic.Server{Node: nodeA, Commit: commit}]; got.Connects != 1 || r.WS.FailedConnects != 0 {
		t.Errorf("servers %v, samples %v; want one connect to %s", r.WS.Servers, r.WS.Samples, nodeA)
	}
}

// start starts l and stops it when the test ends.
func start(t *testing.T, l *traffic.Load) {
	t.Helper()
	if err := l.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Stop() })
}

func waitConnected(t *testing.T, l *traffic.Load) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := l.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
}

func cpuTime() time.Duration {
	var u syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &u); err != nil {
		panic(err)
	}
	return time.Duration(u.Utime.Nano() + u.Stime.Nano())
}

// standIn serves the chat app's protocol, with switches to break it: two
// nodes behind one listener, taking turns for each request and connection.
type standIn struct {
	url string

	fail503    atomic.Bool // plain HTTP answers 503, as HAProxy does with no server up
	hang       atomic.Bool // nothing is answered or relayed any more
	relayTwice atomic.Bool

	mu    sync.Mutex
	turn  int
	down  map[string]bool
	peers map[*peer]bool
}

type peer struct {
	node string
	conn *websocket.Conn
	out  chan string
}

func newStandIn() *standIn {
	return &standIn{down: map[string]bool{}, peers: map[*peer]bool{}}
}

func startStandIn(t *testing.T) *standIn {
	s := newStandIn()
	srv := httptest.NewUnstartedServer(s)
	srv.Config.ReadHeaderTimeout = 5 * time.Second
	srv.Start()
	s.url = srv.URL
	t.Cleanup(func() {
		s.hang.Store(false)
		s.closeAll()
		srv.Close()
	})
	return s
}

// serveStandIn is the stand-in's process for startStandInProcess: it
// prints its URL and serves until its standard input closes.
func serveStandIn() {
	s := newStandIn()
	srv := httptest.NewUnstartedServer(s)
	srv.Config.ReadHeaderTimeout = 5 * time.Second
	srv.Start()
	fmt.Println(srv.URL)
	io.Copy(io.Discard, os.Stdin)
}

func startStandInProcess(t *testing.T) string {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), standInEnv+"=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("stand-in process: %v", err)
	}
	return strings.TrimSpace(line)
}

func (s *standIn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.hang.Load() {
		<-r.Context().Done()
		return
	}
	switch r.URL.Path {
	case "/socket/websocket":
		s.socket(w, r)
		return
	case "/_stand-in/stop":
		fmt.Fprintln(w, s.stop(r.FormValue("node"), r.FormValue("abnormal") != ""))
		return
	}
	if s.fail503.Load() {
		http.Error(w, "<html><body><h1>503 Service Unavailable</h1>\nNo server is available to handle this request.\n</body></html>", http.StatusServiceUnavailable)
		return
	}
	node := s.pick()
	w.Header().Set("Connection", "close")
	switch r.URL.Path {
	case "/health":
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"app": "chat", "commit": commit, "node": node})
	case "/":
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintln(w, "<!doctype html><title>chat</title><p>chat")
	case "/slow":
		ms, _ := strconv.Atoi(r.FormValue("ms"))
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
			fmt.Fprintf(w, "slow %d\n", ms)
		case <-r.Context().Done():
		}
	default:
		http.NotFound(w, r)
	}
}

// pick is the next node that is up, or "" if none is.
func (s *standIn) pick() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range 2 {
		s.turn++
		if node := []string{nodeA, nodeB}[s.turn%2]; !s.down[node] {
			return node
		}
	}
	return ""
}

func (s *standIn) socket(w http.ResponseWriter, r *http.Request) {
	node := s.pick()
	if node == "" {
		http.Error(w, "no node", http.StatusServiceUnavailable)
		return
	}
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &peer{node: node, conn: conn, out: make(chan string, 64)}
	p.out <- "welcome " + node + " " + commit
	s.mu.Lock()
	s.peers[p] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.peers, p)
		s.mu.Unlock()
		cancel()
		conn.CloseNow()
	}()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case msg := <-p.out:
				if conn.Write(ctx, websocket.MessageText, []byte(msg)) != nil {
					return
				}
			}
		}
	}()
	for {
		_, msg, err := conn.Read(ctx)
		if err != nil {
			return
		}
		if !s.hang.Load() {
			s.relay(string(msg))
		}
	}
}

// relay sends msg to every peer, dropping it for one too far behind, as a
// node would rather than wait.
func (s *standIn) relay(msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	times := 1
	if s.relayTwice.Load() {
		times = 2
	}
	for p := range s.peers {
		for range times {
			select {
			case p.out <- msg:
			default:
			}
		}
	}
}

// stop stops node: it takes no more connections, and closes the ones it
// has with 1001, or without a close frame if abnormal. It returns how many
// it closed.
func (s *standIn) stop(node string, abnormal bool) int {
	s.mu.Lock()
	s.down[node] = true
	var victims []*peer
	for p := range s.peers {
		if p.node == node {
			victims = append(victims, p)
		}
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range victims {
		wg.Go(func() {
			if abnormal {
				p.conn.CloseNow()
			} else {
				p.conn.Close(websocket.StatusGoingAway, "node stopping")
			}
		})
	}
	wg.Wait()
	return len(victims)
}

func (s *standIn) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := range s.peers {
		p.conn.CloseNow()
	}
}
