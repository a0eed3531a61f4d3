// Command demo runs the operator's main job on a local demo: it brings up a
// build host, three nodes and an HAProxy host (network namespaces, each with
// its own sshd and host key), puts the example clustered app in a local git
// repository, and has bin/operator deploy it: a first deploy, then a
// one-line change with WebSocket and HTTP clients on through HAProxy (it
// prints how many reconnects they saw), a rollback, then `operator status`.
// Run it as root with `make demo`.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/clusterops/operator/testbed"
	"github.com/clusterops/operator/testbed/traffic"
)

func main() {
	keep := flag.Bool("keep", false, "leave the hosts running until interrupted")
	src := flag.String("app", "examples/cluster-app", "the example app's source tree")
	operator := flag.String("operator", "bin/operator", "the operator binary")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *src, *operator, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, src, operator string, keep bool) error {
	src, err := filepath.Abs(src)
	if err != nil {
		return err
	}
	if operator, err = filepath.Abs(operator); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "operator-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	step(fmt.Sprintf("bringing up %d hosts (%s): network namespaces, each with its own sshd and host key", len(testbed.ExampleHosts), strings.Join(testbed.ExampleHosts, ", ")))
	bed, err := testbed.New(ctx, testbed.Options{Dir: filepath.Join(dir, "bed"), Hosts: testbed.ExampleHosts})
	if err != nil {
		return err
	}
	defer func() {
		step("tearing the hosts down")
		bed.Close()
	}()
	for _, h := range bed.Hosts() {
		fmt.Printf("    %-6s %-15s %s…\n", h.Name, h.Addr, h.HostKey[:40])
	}

	step("preparing them as an administrator would once (the cluster's cookie in /srv/chat/shared, HAProxy in front of the nodes), and putting the example app in a local git repository")
	// The build host has no route to the npm registry here; its npm installs
	// from a cache this machine fills (see testbed.NPMCache).
	ex, err := testbed.NewExample(ctx, bed, src, filepath.Join(dir, "repo"))
	if err != nil {
		return err
	}
	repo, lb := ex.Repo, bed.Host("lb")
	cfgPath := filepath.Join(dir, "operator.yaml")
	cfg := fmt.Sprintf(`repo: %s
branch: main
environment: production
state_dir: %s
poll: ""
ssh:
  identity: %s
  known_hosts: %s
`, repo.Bare, filepath.Join(dir, "state"), bed.ClientKey, bed.KnownHosts)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	fmt.Printf("    %s:\n%s", cfgPath, indent(cfg))

	op := func(args ...string) error {
		fmt.Printf("    $ operator %s\n", strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, operator, append(args, "--config", cfgPath, "--log-level", "warn")...)
		cmd.Stdout, cmd.Stderr = prefixed(), prefixed()
		return cmd.Run()
	}

	step("first deploy: build on the build host, stage on 3 nodes, migrate, roll out node by node")
	start := time.Now()
	if err := op("sync", "--once"); err != nil {
		return fmt.Errorf("first deploy: %w", err)
	}
	fmt.Printf("    first deploy took %v\n", time.Since(start).Round(time.Millisecond))
	fmt.Printf("    through HAProxy: %s\n", httpGet(ctx, "http://"+lb.Addr.String()+"/health"))

	step("a one-line change, pushed, then deployed while users are on: 20 WebSocket clients (a broadcast every 200 ms) and 2 browsers through HAProxy; dependency steps skipped, nodes restarted one by one")
	if _, err := repo.Commit(ctx, "Say hello in the log", testbed.AppendLine("lib/chat.ex", "# hello from the demo")); err != nil {
		return err
	}
	users := &traffic.Load{BaseURL: "http://" + lb.Addr.String(), KeepAliveClients: 2, WSClients: 20, BroadcastInterval: 200 * time.Millisecond}
	if err := users.Start(ctx); err != nil {
		return err
	}
	defer users.Stop()
	if err := users.WaitConnected(ctx); err != nil {
		return fmt.Errorf("websocket clients: %w", err)
	}
	start = time.Now()
	if err := op("sync", "--once"); err != nil {
		return fmt.Errorf("second deploy: %w", err)
	}
	fmt.Printf("    one-line change deployed in %v\n", time.Since(start).Round(time.Millisecond))
	time.Sleep(time.Second) // the last node's clients reconnect
	seen := users.Stop()
	fmt.Printf("    WebSocket clients: %d reconnects after %d drops (%d with close 1001 from a stopping node); longest without a connection %v; %d still connected\n",
		seen.WS.Reconnects, seen.WS.Drops, seen.WS.DropsByCode[1001], seen.WS.LongestGap.Round(time.Millisecond), seen.WS.Open)
	fmt.Printf("    broadcasts: %d sent, %d of %d deliveries to connected clients missed; HTTP: %d requests, %d failed\n",
		seen.Broadcasts.Sent, seen.Broadcasts.Missed, seen.Broadcasts.Expected, seen.KeepAlive.Sent, seen.KeepAlive.Failed)

	step("a rollback to the first release: no build (its artifact is kept), the environment locked so nothing undoes it")
	start = time.Now()
	if err := op("rollback"); err != nil {
		return fmt.Errorf("rollback: %w", err)
	}
	fmt.Printf("    rolled back in %v\n", time.Since(start).Round(time.Millisecond))

	step("unlocked, and back to the branch head: its release is on the nodes already")
	if err := op("unlock"); err != nil {
		return err
	}
	if err := op("sync", "--once"); err != nil {
		return fmt.Errorf("back to the head: %w", err)
	}

	step("the status")
	if err := op("status"); err != nil {
		return err
	}
	if err := op("history"); err != nil {
		return err
	}
	fmt.Printf("    through HAProxy: %s\n", httpGet(ctx, "http://"+lb.Addr.String()+"/health"))
	if keep {
		fmt.Printf("    hosts stay up until Ctrl-C; try: %s plan --config %s\n", operator, cfgPath)
		<-ctx.Done()
	}
	return nil
}

func step(msg string) { fmt.Printf("==> %s\n", msg) }

func indent(s string) string {
	return "      " + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n      ") + "\n"
}

// prefixed indents a child's output under the demo's steps.
func prefixed() io.Writer { return &indenter{atStart: true} }

type indenter struct{ atStart bool }

func (w *indenter) Write(p []byte) (int, error) {
	for _, b := range p {
		if w.atStart {
			os.Stdout.WriteString("      ")
		}
		os.Stdout.Write([]byte{b})
		w.atStart = b == '\n'
	}
	return len(p), nil
}

func httpGet(ctx context.Context, url string) string {
	var last string
	for i := 0; i < 50; i++ {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return strings.TrimSpace(string(b))
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	return last
}
