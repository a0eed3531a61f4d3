package hosts

import (
	"strings"
	"testing"

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
