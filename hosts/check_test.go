package hosts

import (
	"strings"
	"testing"
	"time"

	"github.com/clusterops/operator/testbed"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"
)

func TestCheck(t *testing.T) {
	b := testbed.Start(t, "n1", "n2", "n3", "n4")
	ctx := t.Context()
	// n2's key changes; n3 is missing from known_hosts; n4 is cut off.
	var lines []string
	for _, name := range []string{"n1", "n2", "n4"} {
		lines = append(lines, b.Host(name).Addr.String()+" "+b.Host(name).HostKey)
	}
	n2 := b.Host("n2")
	if err := n2.StopSSHD(); err != nil {
		t.Fatal(err)
	}
	if err := n2.RotateHostKey(); err != nil {
		t.Fatal(err)
	}
	if err := n2.StartSSHD(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Host("n4").Cut(ctx); err != nil {
		t.Fatal(err)
	}
	p := newPool(t, b, func(c *Config) {
		c.KnownHosts = writeKnownHosts(t, lines...)
		c.DialTimeout = time.Second
	})
	members := ShellCmd("", `printf "chat@n1\nchat@n2\n"`, nil)
	failing := ShellCmd("", "echo nodedown >&2; exit 1", nil)
	targets := []CheckTarget{
		{Target: target(b, "n1"), Members: &members},
		{Target: target(b, "n2"), Members: &members},
		{Target: target(b, "n3")},
		{Target: target(b, "n4")},
		{Target: Target{Name: "n1-down", Address: b.Host("n1").Addr.String(), User: "root"}, Members: &failing},
	}
	results := p.Check(ctx, targets)

	fingerprint := func(name string) string {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(b.Host(name).HostKey))
		if err != nil {
			t.Fatal(err)
		}
		return ssh.FingerprintSHA256(k)
	}
	type summary struct {
		Host        string
		Reachable   bool
		HostKey     HostKeyStatus
		Fingerprint string
		Members     []string
		Err         string
		MembersErr  string
	}
	var got []summary
	for _, r := range results {
		s := summary{Host: r.Target.Name, Reachable: r.Reachable, HostKey: r.HostKey, Fingerprint: r.Fingerprint, Members: r.Members}
		if r.Err != nil {
			s.Err = outcome(r.Err)
		}
		if r.MembersErr != nil {
			s.MembersErr = outcome(r.MembersErr)
		}
		if r.Reachable && (r.RTT <= 0 || r.RTT > time.Second) {
			t.Errorf("%s: RTT %v, want a small positive duration", r.Target.Name, r.RTT)
		}
		got = append(got, s)
	}
	want := []summary{
		{Host: "n1", Reachable: true, HostKey: HostKeyKnown, Fingerprint: fingerprint("n1"), Members: []string{"chat@n1", "chat@n2"}},
		{Host: "n2", HostKey: HostKeyChanged, Fingerprint: fingerprint("n2"), Err: "changed host key"},
		{Host: "n3", HostKey: HostKeyUnknown, Fingerprint: fingerprint("n3"), Err: "unknown host key"},
		{Host: "n4", HostKey: HostKeyUnchecked, Err: "conn dial"},
		{Host: "n1-down", Reachable: true, HostKey: HostKeyKnown, Fingerprint: fingerprint("n1"), MembersErr: "exit 1"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("check results (-want +got):\n%s", diff)
	}
	if err := results[4].MembersErr; err == nil || !strings.Contains(err.Error(), "nodedown") {
		t.Errorf("membership error %v, want the command's stderr", err)
	}
}
