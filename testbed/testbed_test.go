package testbed

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh/knownhosts"
)

func TestHostsReachableWithVerifiedKeys(t *testing.T) {
	b := Start(t, "n1", "n2", "n3")
	ctx := t.Context()
	for _, h := range b.Hosts() {
		c, err := h.Dial(ctx)
		if err != nil {
			t.Fatalf("dial %s: %v", h.Name, err)
		}
		out, _, err := Run(ctx, c, "echo $(id -u) $HOME; ip -4 -o addr show dev eth0 | awk '{print $4}'; touch /srv/mark-"+h.Name+"; ls /srv", nil)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		want := "0 /root\n" + h.Addr.String() + "/24\nmark-" + h.Name + "\n"
		if out != want {
			t.Errorf("%s: got %q, want %q (own address, own /srv)", h.Name, out, want)
		}
	}
}

func TestChangedHostKeyRefused(t *testing.T) {
	b := Start(t, "n1")
	ctx := t.Context()
	h := b.Host("n1")
	if err := h.StopSSHD(); err != nil {
		t.Fatal(err)
	}
	if err := h.RotateHostKey(); err != nil {
		t.Fatal(err)
	}
	if err := h.StartSSHD(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := h.Dial(ctx)
	if err == nil {
		c.Close()
		t.Fatal("dial with a changed host key succeeded")
	}
	var keyErr *knownhosts.KeyError
	if !errors.As(err, &keyErr) || len(keyErr.Want) == 0 {
		t.Fatalf("got %v, want a knownhosts.KeyError naming the known key", err)
	}
}

func TestCutAndRestore(t *testing.T) {
	b := Start(t, "n1", "n2")
	ctx := t.Context()
	n1, n2 := b.Host("n1"), b.Host("n2")
	if _, err := n1.Sh(ctx, "bash -c 'exec 3<>/dev/tcp/"+n2.Addr.String()+"/22'"); err != nil {
		t.Fatalf("n1 cannot reach n2 before the cut: %v", err)
	}
	if err := n2.Cut(ctx); err != nil {
		t.Fatal(err)
	}
	if out, err := n1.Sh(ctx, "timeout 2 bash -c 'exec 3<>/dev/tcp/"+n2.Addr.String()+"/22'"); err == nil {
		t.Fatalf("n1 reached n2 while it was cut off: %s", out)
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := n2.Dial(cctx); err == nil {
		t.Fatal("the operator reached a cut-off host")
	}
	if err := n2.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := n1.Sh(ctx, "timeout 5 bash -c 'until exec 3<>/dev/tcp/"+n2.Addr.String()+"/22; do sleep 0.1; done'"); err != nil {
		t.Fatalf("n1 cannot reach n2 after restore: %v", err)
	}
}

func TestSweepRemovesLeftovers(t *testing.T) {
	b := Start(t, "n1")
	// A bed whose lock is held is never swept.
	Sweep(t.Context(), t.Logf)
	if !namespaceExists(t.Context(), b.Host("n1").Namespace) {
		t.Fatal("Sweep removed a live bed's namespace")
	}
	// Simulate a crashed run: drop the lock without tearing down.
	ns := b.Host("n1").Namespace
	b.slot.release()
	Sweep(t.Context(), t.Logf)
	if namespaceExists(t.Context(), ns) {
		t.Fatalf("Sweep left namespace %s of a dead run", ns)
	}
	if out, _ := runCmd(t.Context(), execCommand("ip", "link", "show", b.Bridge)); !strings.Contains(out, "does not exist") {
		t.Fatalf("Sweep left bridge %s: %s", b.Bridge, out)
	}
}

func TestHAProxyRuntimeSocket(t *testing.T) {
	b := Start(t, "lb")
	ctx := t.Context()
	lb := b.Host("lb")
	if err := lb.StartHAProxy(ctx, "chat", []Backend{
		// Only our own addresses: nothing listens there, so both are DOWN.
		{Name: "n1", Addr: lb.Addr.String() + ":4000"},
		{Name: "n2", Addr: lb.Addr.String() + ":4001"},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := lb.HAProxy(ctx, "set server chat/n1 state drain"); err != nil {
		t.Fatal(err)
	}
	out, err := lb.HAProxy(ctx, "show servers state chat")
	if err != nil {
		t.Fatal(err)
	}
	// Columns: be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ...
	admin := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 6 && f[1] == "chat" {
			admin[f[3]] = f[6]
		}
	}
	if admin["n1"] != "8" || admin["n2"] != "0" {
		t.Fatalf("srv_admin_state: got n1=%q n2=%q, want 8 (drain) and 0:\n%s", admin["n1"], admin["n2"], out)
	}
}
