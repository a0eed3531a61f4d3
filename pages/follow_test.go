package pages

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/clusterops/operator/history"
)

// The daemon's server has a WriteTimeout; a deploy's stream lasts as long
// as the deploy, and outlives it.
func TestEventsOutliveTheServersWriteTimeout(t *testing.T) {
	s := openStore(t)
	rec := runningDeploy(t, s, 1)
	srv := httptest.NewUnstartedServer(New(Options{History: s, Log: quiet()}))
	srv.Config.WriteTimeout = 200 * time.Millisecond
	srv.Start()
	defer srv.Close()

	ch := readEvents(t, srv.URL+"/deploys/"+itoa(rec.ID())+"/events")
	wantLine(t, ch, 1, "before 1")
	time.Sleep(2 * srv.Config.WriteTimeout)
	rec.Line("nyc", "stdout", "after the timeout")
	wantLine(t, ch, 2, "after the timeout")
	time.Sleep(2 * srv.Config.WriteTimeout)
	if err := rec.Finish(history.Success, "done"); err != nil {
		t.Fatal(err)
	}
	wantLine(t, ch, 3, "result success: done")
	if e, ok := next(t, ch); !ok || e.name != "end" {
		t.Fatalf("got %q %s; want the end event", e.name, e.data)
	}
}

// smallBuffers gives each connection it accepts a small send buffer, so
// that a reader that stops reading stops the writes soon.
type smallBuffers struct{ net.Listener }

func (l smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(4 << 10)
	}
	return c, err
}

// A reader that stops reading the stream, and does not hang up, is let
// go after writeWait, not held for the rest of the deploy.
func TestEventsLetGoOfAReaderThatStopsReading(t *testing.T) {
	defer func(d time.Duration) { writeWait = d }(writeWait)
	writeWait = 300 * time.Millisecond
	s := openStore(t)
	rec := runningDeploy(t, s, 1)
	pages := New(Options{History: s, Log: quiet()})
	ended := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pages.ServeHTTP(w, r)
		close(ended)
	}))
	srv.Listener = smallBuffers{srv.Listener}
	srv.Start()
	defer srv.Close()
	defer srv.CloseClientConnections() // before Close, which waits for the handler

	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4 << 10)
	fmt.Fprintf(c, "GET /deploys/%d/events HTTP/1.1\r\nHost: operator\r\n\r\n", rec.ID())

	// The deploy goes on logging; the reader reads nothing.
	long := strings.Repeat("x", 8<<10)
	deadline := time.After(10 * time.Second)
	var logged int
	for {
		select {
		case <-ended:
			t.Logf("let go after %d lines of %d kB", logged, len(long)>>10)
			return
		case <-deadline:
			t.Fatalf("the stream to a reader that reads nothing still runs after 10s and %d lines of %d kB", logged, len(long)>>10)
		case <-time.After(10 * time.Millisecond):
			for range 10 {
				rec.Line("build", "stdout", long)
				logged++
			}
		}
	}
}
