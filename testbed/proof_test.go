package testbed

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/clusterops/operator/manifests"
	"golang.org/x/crypto/ssh"
)

// TestExampleClusterByHand proves the bed is real: the example release is
// built on the build host through plain SSH commands, copied to three nodes
// and started there; the nodes form a full mesh; a node cut off the network
// drops out of the others' lists. The figures it logs (go test -v -run
// TestExampleClusterByHand ./testbed/) set the budgets of the deploy code.
func TestExampleClusterByHand(t *testing.T) {
	src, err := filepath.Abs("../examples/cluster-app")
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	start := time.Now()
	bed := Start(t, "build", "n1", "n2", "n3")
	t.Logf("figure: test bed of 4 hosts up: %v", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	if err := PrimeNPMCache(ctx, filepath.Join(src, "assets"), NPMCache); err != nil {
		t.Fatal(err)
	}
	t.Logf("figure: npm cache primed: %v", time.Since(start).Round(time.Millisecond))
	build := bed.Host("build")
	if err := build.UseNPMCache(NPMCache); err != nil {
		t.Fatal(err)
	}

	m := &ByHand{App: "chat", Src: src, BuildDir: "/root/build/chat", DeployTo: "/srv/chat", Cookie: "proof-cookie-0123456789", Logf: t.Logf}
	bc := dial(t, build)
	if err := m.UploadSource(ctx, bc); err != nil {
		t.Fatal(err)
	}
	commit := "1111111111111111111111111111111111111111"
	start = time.Now()
	tarball, err := m.BuildRelease(ctx, bc, commit)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("figure: clean build of the example app on the build host: %v", time.Since(start).Round(time.Millisecond))

	// A one-line change, then the same steps again: Mix recompiles one file.
	if _, _, err := Run(ctx, bc, "cd /root/build/chat && echo '# one-line change' >> lib/chat.ex", nil); err != nil {
		t.Fatal(err)
	}
	commit = "2222222222222222222222222222222222222222"
	start = time.Now()
	if tarball, err = m.BuildRelease(ctx, bc, commit); err != nil {
		t.Fatal(err)
	}
	t.Logf("figure: incremental build after a one-line change: %v", time.Since(start).Round(time.Millisecond))

	names := []string{"n1", "n2", "n3"}
	clients := map[string]*ssh.Client{}
	nodeName := func(h string) string { return "chat@" + bed.Host(h).Addr.String() }
	start = time.Now()
	for _, h := range names {
		clients[h] = dial(t, bed.Host(h))
		if err := m.Install(ctx, bc, clients[h], tarball, commit); err != nil {
			t.Fatalf("install on %s: %v", h, err)
		}
	}
	t.Logf("figure: tarball copied through this machine to 3 nodes, one after another: %v", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	for _, h := range names {
		var peers []string
		for _, p := range names {
			if p != h {
				peers = append(peers, nodeName(p))
			}
		}
		data := manifests.TemplateData{
			App: "chat", Env: "production", Commit: commit, Node: nodeName(h), Peers: peers,
			Host:     manifests.TemplateHost{Name: h, Address: bed.Host(h).Addr.String()},
			DeployTo: m.DeployTo, ReleaseDir: m.ReleaseDir(commit),
		}
		if err := m.Start(ctx, clients[h], data); err != nil {
			t.Fatalf("start %s: %v", h, err)
		}
	}
	t.Logf("figure: 3 nodes started (daemon commands returned): %v", time.Since(start).Round(time.Millisecond))

	// Full mesh: every node lists the two others.
	wantMesh := func(h string) []string {
		var want []string
		for _, p := range names {
			if p != h {
				want = append(want, nodeName(p))
			}
		}
		return want
	}
	meshStart := time.Now()
	waitFor(t, 60*time.Second, "full mesh", func() (bool, string) {
		var state string
		ok := true
		for _, h := range names {
			got, err := m.Members(ctx, clients[h], nodeName(h))
			state += fmt.Sprintf("%s: %v %v; ", h, got, err)
			ok = ok && err == nil && slices.Equal(got, wantMesh(h))
		}
		return ok, state
	})
	t.Logf("figure: full mesh of 3 nodes %v after the start commands returned", time.Since(meshStart).Round(time.Millisecond))

	// The release runs the commit it was built from.
	out, err := bed.Host("n1").Sh(ctx, "cat /srv/chat/current/lib/chat-*/priv/REVISION")
	if err != nil || out != commit+"\n" {
		t.Fatalf("n1 runs REVISION %q (%v), want %s", out, err, commit)
	}

	// Cut n3 off: n1 and n2 must drop it (net_ticktime 10 in vm.args).
	if err := bed.Host("n3").Cut(ctx); err != nil {
		t.Fatal(err)
	}
	cutStart := time.Now()
	waitFor(t, 90*time.Second, "n3 dropping out", func() (bool, string) {
		var state string
		ok := true
		for _, h := range []string{"n1", "n2"} {
			got, err := m.Members(ctx, clients[h], nodeName(h))
			state += fmt.Sprintf("%s: %v %v; ", h, got, err)
			ok = ok && err == nil && !slices.Contains(got, nodeName("n3"))
		}
		return ok, state
	})
	t.Logf("figure: cut-off node gone from its peers' lists after %v", time.Since(cutStart).Round(time.Millisecond))

	// Back on the network, it rejoins by itself (Chat.Cluster reconnects).
	if err := bed.Host("n3").Restore(ctx); err != nil {
		t.Fatal(err)
	}
	healStart := time.Now()
	waitFor(t, 60*time.Second, "n3 rejoining", func() (bool, string) {
		got, err := m.Members(ctx, clients["n1"], nodeName("n1"))
		return err == nil && slices.Equal(got, wantMesh("n1")), fmt.Sprintf("n1: %v %v", got, err)
	})
	t.Logf("figure: restored node back in the mesh after %v", time.Since(healStart).Round(time.Millisecond))
}

func dial(t *testing.T, h *Host) *ssh.Client {
	t.Helper()
	c, err := h.Dial(t.Context())
	if err != nil {
		t.Fatalf("dial %s: %v", h.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitFor polls cond until it holds or timeout passes; the timeout is a
// bound on a hung cluster, not a performance assertion.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	var last string
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not reached within %v; last: %s", what, timeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
