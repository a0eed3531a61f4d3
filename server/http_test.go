package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterops/operator/gitsrc"
)

// serve runs the operator's real handler, the webhook mounted, behind
// HTTPServer with limits, and returns its address. entered counts the
// requests that reached the webhook.
func serve(t *testing.T, limits Limits) (addr string, entered *atomic.Int64) {
	t.Helper()
	wh, err := gitsrc.NewWebhook(gitsrc.WebhookOptions{
		Secret: []byte("a webhook secret for tests"), Repository: "acme/chat", Branch: "main",
		OnPush: func(gitsrc.Push) {},
	})
	if err != nil {
		t.Fatal(err)
	}
	entered = new(atomic.Int64)
	h := New(Options{
		Controller: &controller{sync: func(string) SyncResult { return SyncResult{Status: "noop"} }},
		APIToken:   "token",
		Webhook: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			entered.Add(1)
			wh.ServeHTTP(w, r)
		}),
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := HTTPServer(context.Background(), h, limits)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), entered
}

// silentBody is the head of a webhook delivery that declares a body of the
// webhook's cap, signed so as to pass the checks made before the body is
// read; the body never comes.
var silentBody = "POST /hooks/github HTTP/1.1\r\nHost: operator\r\nContent-Type: application/json\r\n" +
	"X-GitHub-Event: push\r\nX-GitHub-Delivery: 72d3162e-cc78-11e3-81ab-4c9367dc0958\r\n" +
	"X-Hub-Signature-256: sha256=" + strings.Repeat("ab", 32) + "\r\n" +
	fmt.Sprintf("Content-Length: %d\r\n\r\n", gitsrc.DefaultWebhookMaxBody)

// closedWithin reads conn until the server closes it and says how long
// that took; it fails the test if the server has not closed it by limit.
func closedWithin(t *testing.T, conn net.Conn, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	conn.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, conn)
	took := time.Since(start)
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		t.Fatalf("the server still holds the connection after %v", took.Round(time.Millisecond))
	}
	return took
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestHTTPServerCutsOffSlowRequests(t *testing.T) {
	const limit = 300 * time.Millisecond
	tests := []struct {
		name   string
		limits Limits
		send   string
	}{
		{"a body declared and never sent", Limits{ReadTimeout: limit}, silentBody},
		{"a header never finished", Limits{ReadHeaderTimeout: limit, ReadTimeout: limit}, "GET / HTTP/1.1\r\nHost: operator\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, _ := serve(t, tt.limits)
			conn := dial(t, addr)
			if _, err := io.WriteString(conn, tt.send); err != nil {
				t.Fatal(err)
			}
			took := closedWithin(t, conn, 10*limit)
			if took < limit*8/10 {
				t.Errorf("closed after %v, before the %v timeout", took, limit)
			}
		})
	}
}

func TestHTTPServerCapsHeaders(t *testing.T) {
	addr, _ := serve(t, Limits{MaxHeaderBytes: 1 << 10})
	conn := dial(t, addr)
	// net/http allows 4 KiB over MaxHeaderBytes.
	io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: operator\r\nX-Big: "+strings.Repeat("x", 16<<10)+"\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a 16 KiB header: %s, want 431", resp.Status)
	}
}

func TestHTTPServerClosesIdleConnections(t *testing.T) {
	const idle = 300 * time.Millisecond
	addr, _ := serve(t, Limits{IdleTimeout: idle})
	conn := dial(t, addr)
	br := bufio.NewReader(conn)
	for range 2 { // the second request shows the connection was kept alive
		io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: operator\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Close {
			t.Fatalf("GET /healthz: %s, close %v", resp.Status, resp.Close)
		}
	}
	took := closedWithin(t, conn, 10*idle)
	if took < idle*8/10 {
		t.Errorf("an idle connection closed after %v, before the %v timeout", took, idle)
	}
}

// Forty clients that each declare a webhook body of the cap and send
// nothing hold next to no memory: the body's buffer grows with the bytes
// that arrive, not with what the sender declares.
//
// Run it with -v to see the figures.
func TestHTTPServerHeapUnderSilentBodies(t *testing.T) {
	const clients = 40
	addr, entered := serve(t, Limits{})
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	for range clients {
		conn := dial(t, addr)
		if _, err := io.WriteString(conn, silentBody); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for entered.Load() < clients {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d requests reached the webhook", entered.Load(), clients)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // each is in its read of the body
	during := heap()
	grew := int64(during) - int64(before)
	t.Logf("heap: %.1f MiB before, %.1f MiB with %d clients each declaring %d MiB and sending nothing (%+.1f MiB)\n",
		mib(before), mib(during), clients, gitsrc.DefaultWebhookMaxBody>>20, float64(grew)/(1<<20))
	if limit := int64(4 << 20); grew > limit {
		t.Errorf("the heap grew by %.1f MiB under %d silent bodies, want under %.0f MiB", float64(grew)/(1<<20), clients, float64(limit)/(1<<20))
	}
}

func mib(n uint64) float64 { return float64(n) / (1 << 20) }
