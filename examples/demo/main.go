// Command demo brings up a local demo of what the operator deploys to: a
// build host, three nodes and an HAProxy host, each a network namespace with
// its own sshd; it builds the example clustered app on the build host, runs
// it on the three nodes behind HAProxy and shows the cluster. Run it as root
// through `make demo`.
//
// Until the operator's deploy path lands, the build and install here are the
// by-hand steps of the test bed (the edeliver way); the demo says so.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/clusterops/operator/manifests"
	"github.com/clusterops/operator/testbed"
	"golang.org/x/crypto/ssh"
)

func main() {
	keep := flag.Bool("keep", false, "leave the hosts running until interrupted")
	src := flag.String("app", "examples/cluster-app", "the example app's source tree")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *src, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, src string, keep bool) error {
	src, err := filepath.Abs(src)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "operator-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	step("bringing up 5 hosts (build, n1, n2, n3, lb): network namespaces, each with its own sshd")
	bed, err := testbed.New(ctx, testbed.Options{Dir: dir, Hosts: []string{"build", "n1", "n2", "n3", "lb"}})
	if err != nil {
		return err
	}
	defer func() {
		step("tearing the hosts down")
		bed.Close()
	}()
	for _, h := range bed.Hosts() {
		fmt.Printf("    %-6s %-15s host key %s…\n", h.Name, h.Addr, h.HostKey[:40])
	}
	fmt.Printf("    ssh -F %s n1   reaches a host (while the demo runs)\n", filepath.Join(bed.Dir, "ssh_config"))

	if err := testbed.PrimeNPMCache(ctx, filepath.Join(src, "assets"), testbed.NPMCache); err != nil {
		return err
	}
	if err := bed.Host("build").UseNPMCache(testbed.NPMCache); err != nil {
		return err
	}
	nodes := []string{"n1", "n2", "n3"}
	nodeName := func(h string) string { return "chat@" + bed.Host(h).Addr.String() }
	clients := map[string]*ssh.Client{}
	for _, h := range append([]string{"build"}, nodes...) {
		c, err := bed.Host(h).Dial(ctx)
		if err != nil {
			return fmt.Errorf("ssh %s: %w", h, err)
		}
		defer c.Close()
		clients[h] = c
	}

	m := &testbed.ByHand{App: "chat", Src: src, BuildDir: "/root/build/chat", DeployTo: "/srv/chat", Cookie: "demo-cookie-not-a-secret"}
	commit := "0000000000000000000000000000000000demo01"
	step("building the example app on the build host (mix release, npm bundle) over SSH")
	start := time.Now()
	if err := m.UploadSource(ctx, clients["build"]); err != nil {
		return err
	}
	tarball, err := m.BuildRelease(ctx, clients["build"], commit)
	if err != nil {
		return err
	}
	fmt.Printf("    built %s in %v\n", tarball, time.Since(start).Round(time.Millisecond))

	step("installing the release on n1, n2, n3 and starting the nodes")
	for _, h := range nodes {
		if err := m.Install(ctx, clients["build"], clients[h], tarball, commit); err != nil {
			return fmt.Errorf("install on %s: %w", h, err)
		}
		var peers []string
		for _, p := range nodes {
			if p != h {
				peers = append(peers, nodeName(p))
			}
		}
		data := manifests.TemplateData{App: "chat", Env: "production", Commit: commit, Node: nodeName(h), Peers: peers,
			Host: manifests.TemplateHost{Name: h, Address: bed.Host(h).Addr.String()}, DeployTo: m.DeployTo, ReleaseDir: m.ReleaseDir(commit)}
		if err := m.Start(ctx, clients[h], data); err != nil {
			return fmt.Errorf("start %s: %w", h, err)
		}
	}
	lb := bed.Host("lb")
	var servers []testbed.Backend
	for _, h := range nodes {
		servers = append(servers, testbed.Backend{Name: h, Addr: bed.Host(h).Addr.String() + ":4000"})
	}
	if err := lb.StartHAProxy(ctx, "chat", servers); err != nil {
		return err
	}

	step("waiting for the cluster: each node must list the two others")
	start = time.Now()
	for {
		whole := true
		for _, h := range nodes {
			got, err := m.Members(ctx, clients[h], nodeName(h))
			if err != nil || len(got) != len(nodes)-1 || slices.Contains(got, nodeName(h)) {
				whole = false
			}
		}
		if whole {
			break
		}
		if time.Since(start) > time.Minute {
			return fmt.Errorf("the cluster did not form within a minute")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	fmt.Printf("    full mesh %v after start\n", time.Since(start).Round(time.Millisecond))
	for _, h := range nodes {
		fmt.Printf("    %s /health: %s\n", h, httpGet(ctx, "http://"+bed.Host(h).Addr.String()+":4000/health"))
	}
	fmt.Printf("    through HAProxy on lb: %s\n", httpGet(ctx, "http://"+lb.Addr.String()+"/health"))

	step("done: the hosts, the example app and its cluster are real")
	fmt.Println("    The operator's own deploy (incremental build, staged fan-out, node-by-node")
	fmt.Println("    rollout with membership checks) replaces the by-hand steps above as it lands.")
	if keep {
		fmt.Println("    hosts stay up until Ctrl-C")
		<-ctx.Done()
	}
	return nil
}

func step(msg string) { fmt.Printf("==> %s\n", msg) }

func httpGet(ctx context.Context, url string) string {
	var body string
	for i := 0; i < 50; i++ {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return strings.TrimSpace(string(b))
			}
			body = resp.Status
		} else {
			body = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	return body
}
