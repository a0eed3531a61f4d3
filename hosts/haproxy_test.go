package hosts

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/clusterops/operator/testbed"
)

func TestHAProxyBuilders(t *testing.T) {
	h := HAProxy{Socket: "/run/haproxy/admin.sock"}
	c, err := h.SetState("www-backend", "nyc", "drain")
	if err != nil {
		t.Fatal(err)
	}
	want := `exec 'sh' '-c' 'printf "%s\n" "$2" | socat -t 5 stdio "unix-connect:$1"' 'sh' '/run/haproxy/admin.sock' 'set server www-backend/nyc state drain'`
	if got := c.String(); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	for _, bad := range []struct{ backend, server, state string }{
		{"www", "nyc; shutdown sessions", "drain"},
		{"www", "nyc\nset server www/lon state maint", "drain"},
		{"www", "nyc", "up"},
		{"", "nyc", "drain"},
	} {
		if _, err := h.SetState(bad.backend, bad.server, bad.state); err == nil {
			t.Errorf("SetState(%q, %q, %q): no error", bad.backend, bad.server, bad.state)
		}
	}
	if _, err := (HAProxy{Socket: "relative.sock"}).ShowStat(); err == nil {
		t.Error("relative socket: no error")
	}
	if _, err := (HAProxy{Socket: "relative.sock"}).ShowStreams("www", "nyc"); err == nil {
		t.Error("streams on a relative socket: no error")
	}
	if _, err := h.ShowStreams("www", "nyc$(reboot)"); err == nil {
		t.Error("streams of a hostile server name: no error")
	}
	c, err = h.Ready("www-backend", "nyc")
	if err != nil {
		t.Fatal(err)
	}
	if want := "'set server www-backend/nyc state ready; set server www-backend/nyc health up'"; !strings.HasSuffix(c.String(), want) {
		t.Errorf("ready: %s, want it to end in %s", c, want)
	}
	if _, err := h.Ready("www", "nyc; shutdown sessions"); err == nil {
		t.Error("ready of a hostile server name: no error")
	}
}

func TestParseStreams(t *testing.T) {
	tests := []struct {
		name string
		out  string
		want Streams
	}{
		{"none", "", Streams{}},
		{"tunnels by their listing", "upgraded 0x1\nupgraded 0x2\n", Streams{Upgraded: 2}},
		{"a slow request", "stream 0x3 txn=0x9 flags=0x3000 meth=1 status=-1 req.st=MSG_DONE rsp.st=MSG_RPBEFORE req.f=0x4c rsp.f=0x00\n", Streams{InFlight: 1}},
		{"a request still uploading", "stream 0x3 txn=0x9 flags=0x3000 meth=3 status=-1 req.st=MSG_DATA rsp.st=MSG_RPBEFORE req.f=0x4c rsp.f=0x00\n", Streams{InFlight: 1}},
		{"a streaming response", "stream 0x4 txn=0x9 flags=0x3000 meth=1 status=200 req.st=MSG_DONE rsp.st=MSG_DATA req.f=0x4c rsp.f=0x0e\n", Streams{Answering: 1}},
		{"a tunnel seen in details", "stream 0x5 txn=0x9 flags=0x8000 meth=1 status=101 req.st=MSG_TUNNEL rsp.st=MSG_TUNNEL req.f=0xcc rsp.f=0xcc\n", Streams{Upgraded: 1}},
		{"past the details cap", "stream 0x6\n", Streams{InFlight: 1}},
		{"a state not known: wait", "stream 0x7 txn=0x9 status=200 rsp.st=MSG_SOMETHING_NEW\n", Streams{InFlight: 1}},
		{"all kinds", "upgraded 0x1\nstream 0x3 txn=0x9 status=-1 rsp.st=MSG_RPBEFORE\nstream 0x4 txn=0x9 status=200 rsp.st=MSG_DONE\n", Streams{InFlight: 1, Answering: 1, Upgraded: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStreams([]byte(tt.out))
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	if _, err := ParseStreams([]byte("No such file or directory\n")); err == nil {
		t.Error("an error message parsed as streams")
	}
}

// TestHAProxyStreamsOnAHost loads a real HAProxy with one stream of each
// kind (a WebSocket after its 101, a request the server answers only after
// a while, a response that streams) and reads them back with ShowStreams.
func TestHAProxyStreamsOnAHost(t *testing.T) {
	b := testbed.Start(t, "lb")
	ctx := t.Context()
	lb := b.Host("lb")
	// The backend server runs in this process, on the bridge's own address
	// (the hosts reach it; nothing else does).
	ln, err := net.Listen("tcp", b.Gateway.String()+":0")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ws":
			conn, rw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
				"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
			rw.Flush()
		case "/stream":
			w.WriteHeader(200)
			http.NewResponseController(w).Flush()
		case "/slow":
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { close(release); srv.Close() })
	if err := lb.StartHAProxy(ctx, "chat", []testbed.Backend{{Name: "n1", Addr: ln.Addr().String()}}); err != nil {
		t.Fatal(err)
	}
	front := lb.Addr.String() + ":80"
	for _, req := range []string{
		"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
		"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		conn, err := net.DialTimeout("tcp", front, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		fmt.Fprint(conn, req)
		if !strings.Contains(req, "/slow") { // the others answer at once
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := bufio.NewReader(conn).ReadString('\n'); err != nil {
				t.Fatalf("%s: %v", strings.Fields(req)[1], err)
			}
		}
	}
	p := newPool(t, b, nil)
	show, err := HAProxy{Socket: testbed.HAProxySocket}.ShowStreams("chat", "n1")
	if err != nil {
		t.Fatal(err)
	}
	want := Streams{InFlight: 1, Answering: 1, Upgraded: 1}
	var got Streams
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		out, err := p.Output(ctx, target(b, "lb"), show)
		if err != nil {
			t.Fatal(err)
		}
		if got, err = ParseStreams(out); err != nil {
			t.Fatal(err)
		}
		if got == want {
			break
		}
	}
	if got != want {
		t.Fatalf("streams of n1: %+v, want %+v", got, want)
	}
	// Of another server, or with the socket gone: nothing, or an error.
	other, _ := HAProxy{Socket: testbed.HAProxySocket}.ShowStreams("chat", "n2")
	if out, err := p.Output(ctx, target(b, "lb"), other); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("streams of n2: %q, %v", out, err)
	}
	gone, _ := HAProxy{Socket: "/run/haproxy/gone.sock"}.ShowStreams("chat", "n1")
	if _, err := p.Output(ctx, target(b, "lb"), gone); err == nil {
		t.Error("streams through a missing socket: no error")
	}
}

func TestHAProxyOnAHost(t *testing.T) {
	b := testbed.Start(t, "lb")
	ctx := t.Context()
	lb := b.Host("lb")
	if err := lb.StartHAProxy(ctx, "chat", []testbed.Backend{{Name: "n1", Addr: lb.Addr.String() + ":4000"}, {Name: "n2", Addr: lb.Addr.String() + ":4001"}}); err != nil {
		t.Fatal(err)
	}
	p := newPool(t, b, nil)
	h := HAProxy{Socket: testbed.HAProxySocket}
	set, _ := h.SetState("chat", "n1", "drain")
	if out, err := p.Output(ctx, target(b, "lb"), set); err != nil || CheckSet(out) != nil {
		t.Fatalf("drain n1: %v, %v", err, CheckSet(out))
	}
	// HAProxy answers a command it refuses on stdout, and socat exits 0.
	unknown, _ := h.SetState("chat", "n9", "drain")
	if out, err := p.Output(ctx, target(b, "lb"), unknown); err != nil || CheckSet(out) == nil || !strings.Contains(CheckSet(out).Error(), "No such server") {
		t.Errorf("drain of an unknown server: %v, %v", err, CheckSet(out))
	}
	show, _ := h.ShowStat()
	out, err := p.Output(ctx, target(b, "lb"), show)
	if err != nil {
		t.Fatal(err)
	}
	st, err := ParseStat(out, "chat", "n1")
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != "DRAIN" && st.Status != "DOWN (drain)" && st.Status != "DOWN" {
		t.Errorf("n1 status after drain: %q", st.Status)
	}
	if st.Sessions != 0 {
		t.Errorf("n1 sessions: %d", st.Sessions)
	}
	// Read back through the socket directly, not through our own parser.
	raw, _ := lb.HAProxy(ctx, "show servers state chat")
	if !containsField(raw, "n1", 6, "8") {
		t.Errorf("srv_admin_state of n1 is not 8 (drain):\n%s", raw)
	}
	if _, err := ParseStat(out, "chat", "n9"); err == nil {
		t.Error("ParseStat of an unknown server: no error")
	}
}

// containsField reports whether a line of whitespace-separated fields whose
// fourth field is name has want at index i.
func containsField(out, name string, i int, want string) bool {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > i && f[3] == name {
			return f[i] == want
		}
	}
	return false
}

func TestParseDrained(t *testing.T) {
	const head = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n"
	got, err := ParseDrained([]byte(head+
		"3 chat 1 n1 10.0.0.11 2 0 1 1 5 6 3 4 6 0 0 0 - 4000 - 0 0 - - 0\n"+
		"3 chat 2 n2 10.0.0.12 2 8 1 1 5 6 3 4 6 0 0 0 - 4000 - 0 0 - - 0\n"+
		"3 chat 3 n3 10.0.0.13 0 9 1 1 5 6 3 4 6 0 0 0 - 4000 - 0 0 - - 0\n"+
		"4 other 1 n4 10.0.0.14 2 8 1 1 5 6 3 4 6 0 0 0 - 4000 - 0 0 - - 0\n"+
		"3 chat 4 n5 10.0.0.15 2 1 1 1 5 6 3 4 6 0 0 0 - 4000 - 0 0 - - 0\n"), "chat")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"n1": false, "n2": true, "n3": true, "n5": false}
	if len(got) != len(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s drained: %v, want %v", k, got[k], v)
		}
	}
	for _, bad := range []string{"", "No such backend.\n"} {
		if _, err := ParseDrained([]byte(bad), "chat"); err == nil {
			t.Errorf("ParseDrained(%q): no error", bad)
		}
	}
	if _, err := ParseDrained([]byte(head+"3 chat 1 n1 10.0.0.11 2 x 1 1\n"), "chat"); err == nil {
		t.Error("an admin state that is not a number: no error")
	}
}
