package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clusterops/operator/history"
	"github.com/clusterops/operator/statuses/githubtest"
	"github.com/clusterops/operator/testbed"
)

// daemonBed is a test bed with the example app in a repository and an
// operator.yaml for it.
type daemonBed struct {
	t      *testing.T
	github *githubtest.Server
	bed    *testbed.Bed
	repo   *testbed.AppRepo
	config string
	listen string
	state  string
}

const (
	testAPIToken = "api-token-for-tests"
	testSecret   = "webhook-secret-for-tests"
	// testGitHubToken is what the GitHub stand-in accepts.
	testGitHubToken = "ghp_testtokenfortheoperator0123456789"
)

func newDaemonBed(t *testing.T) *daemonBed {
	t.Helper()
	ctx := t.Context()
	bed := testbed.Start(t, testbed.ExampleHosts...)
	src, _ := filepath.Abs("../../examples/cluster-app")
	ex, err := testbed.NewExample(ctx, bed, src, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	repo := ex.Repo
	d := &daemonBed{t: t, bed: bed, repo: repo, listen: freePort(t), state: t.TempDir()}
	d.config = filepath.Join(t.TempDir(), "operator.yaml")
	d.github = githubtest.New(t, githubtest.Config{Token: testGitHubToken, Repository: "acme/chat"})
	cfg := fmt.Sprintf("repo: %s\nstate_dir: %s\nlisten: %s\npoll: \"\"\nssh:\n  identity: %s\n  known_hosts: %s\ngithub:\n  repository: acme/chat\n  api_url: %s\n",
		repo.Bare, d.state, d.listen, bed.ClientKey, bed.KnownHosts, d.github.URL())
	if err = os.WriteFile(d.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("OPERATOR_API_TOKEN", testAPIToken)
	t.Setenv("OPERATOR_WEBHOOK_SECRET", testSecret)
	t.Setenv("GITHUB_TOKEN", testGitHubToken)
	return d
}

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// daemon is an `operator run` in this process.
type daemon struct {
	cancel context.CancelFunc
	done   chan int
	out    *syncBuffer
	once   sync.Once
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (d *daemonBed) start() *daemon {
	d.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	dm := &daemon{cancel: cancel, done: make(chan int, 1), out: &syncBuffer{}}
	go func() {
		dm.done <- run(ctx, []string{"run", "--config", d.config, "--log-format", "json", "--shutdown-grace", "2m"}, dm.out, dm.out)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if resp, err := http.Get("http://" + d.listen + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("the daemon did not come up:\n%s", dm.out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.t.Cleanup(func() { dm.stop(d.t) })
	return dm
}

// stop stops the daemon as SIGTERM would and waits for it.
func (dm *daemon) stop(t *testing.T) {
	dm.once.Do(func() {
		dm.cancel()
		select {
		case code := <-dm.done:
			if code != 0 {
				t.Errorf("the daemon exited %d:\n%s", code, dm.out)
			}
		case <-time.After(3 * time.Minute):
			t.Errorf("the daemon did not stop")
		}
	})
}

// cli runs an operator command in this process.
func (d *daemonBed) cli(args ...string) (int, string) {
	var out bytes.Buffer
	code := run(d.t.Context(), append(args, "--config", d.config), &out, &out)
	d.t.Logf("$ operator %s → %d\n%s", strings.Join(args, " "), code, out.String())
	return code, out.String()
}

func (d *daemonBed) api(method, path string, out any) int {
	d.t.Helper()
	req, _ := http.NewRequest(method, "http://"+d.listen+path, nil)
	req.Header.Set("Authorization", "Bearer "+testAPIToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

// deploys returns the history, oldest first.
func (d *daemonBed) deploys() []history.Deploy {
	var list []history.Deploy
	d.api("GET", "/api/deploys?limit=1000", &list)
	for i, j := 0, len(list)-1; i < j; i, j = i+1, j-1 {
		list[i], list[j] = list[j], list[i]
	}
	return list
}

// idle waits until the worker runs nothing and has nothing pending.
func (d *daemonBed) idle() {
	d.t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	quiet := 0
	for quiet < 3 {
		var st workerStatus
		d.api("GET", "/api/status", &st)
		if st.Running == nil && st.Pending == 0 && !st.Busy {
			quiet++
		} else {
			quiet = 0
		}
		if time.Now().After(deadline) {
			d.t.Fatal("the worker did not go idle within 3 minutes")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func sign(body []byte) string {
	m := hmac.New(sha256.New, []byte(testSecret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// deliver sends one signed push webhook for commit.
func (d *daemonBed) deliver(client *http.Client, delivery, commit string) int {
	body := []byte(fmt.Sprintf(`{"ref":"refs/heads/main","before":"%s","after":"%s","created":false,"deleted":false,"forced":false,"repository":{"full_name":"acme/chat"},"head_commit":{"id":"%s","message":"x"},"pusher":{"name":"dev"}}`,
		strings.Repeat("0", 40), commit, commit))
	req, _ := http.NewRequest("POST", "http://"+d.listen+"/hooks/github", bytes.NewReader(body))
	req.Header.Set("X-GitHub-Event", "push")
	req.Header.Set("X-GitHub-Delivery", delivery)
	req.Header.Set("X-Hub-Signature-256", sign(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		d.t.Error(err)
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func TestDaemon(t *testing.T) {
	d := newDaemonBed(t)
	dm := d.start()

	// At start the daemon reconciles what the hosts say: a first deploy.
	d.idle()
	list := d.deploys()
	if len(list) != 1 || list[0].Result != history.Success || list[0].Trigger != "start" {
		t.Fatalf("after start: %+v\n%s", list, dm.out)
	}

	t.Run("plan and hosts check", func(t *testing.T) {
		if code, out := d.cli("plan"); code != 0 || !strings.Contains(out, "nothing to do") {
			t.Errorf("plan: exit %d: %s", code, out)
		}
		code, out := d.cli("hosts", "check")
		if code != 0 {
			t.Errorf("hosts check: exit %d", code)
		}
		for _, h := range testbed.ExampleHosts {
			if !strings.Contains(out, h+" ") {
				t.Errorf("hosts check does not list %s", h)
			}
		}
		if strings.Count(out, " known ") != len(testbed.ExampleHosts) {
			t.Errorf("hosts check: want %d hosts with known keys:\n%s", len(testbed.ExampleHosts), out)
		}
		n2 := "chat@" + d.bed.Host("n2").Addr.String()
		n3 := "chat@" + d.bed.Host("n3").Addr.String()
		if !strings.Contains(out, n2+" "+n3) {
			t.Errorf("hosts check does not show n1's members %s %s:\n%s", n2, n3, out)
		}
	})

	t.Run("sync --wait with nothing to do", func(t *testing.T) {
		if code, out := d.cli("sync", "--wait"); code != 0 || !strings.Contains(out, "nothing to do") {
			t.Fatalf("exit %d: %s", code, out)
		}
	})

	t.Run("lock holds a webhook's deploy until unlock", func(t *testing.T) {
		if code, _ := d.cli("lock", "--reason", "incident 42"); code != 0 {
			t.Fatal("lock failed")
		}
		c1, err := d.repo.Commit(t.Context(), "held", testbed.AppendLine("lib/chat.ex", "# held"))
		if err != nil {
			t.Fatal(err)
		}
		if code := d.deliver(http.DefaultClient, "held-1", c1); code != http.StatusAccepted {
			t.Fatalf("webhook: %d", code)
		}
		time.Sleep(time.Second)
		var st workerStatus
		d.api("GET", "/api/status", &st)
		if st.Lock == nil || st.Lock.Reason != "incident 42" || st.Pending != 1 || st.Running != nil {
			t.Fatalf("while locked: %+v", st)
		}
		if code, out := d.cli("status"); code != 0 || !strings.Contains(out, "incident 42") {
			t.Errorf("status does not show the lock: %s", out)
		}
		if code, out := d.cli("sync"); code == 0 || !strings.Contains(out, "incident 42") {
			t.Errorf("a manual sync while locked: exit %d: %s", code, out)
		}
		if n := len(d.deploys()); n != 1 {
			t.Fatalf("%d deploys while locked, want 1", n)
		}
		if code, _ := d.cli("unlock"); code != 0 {
			t.Fatal("unlock failed")
		}
		d.idle()
		list := d.deploys()
		if len(list) != 2 || list[1].Commit != c1 || list[1].Result != history.Success || list[1].Trigger != "webhook held-1" {
			t.Fatalf("after unlock: %+v\n%s", list, dm.out)
		}
	})

	t.Run("a flood of deliveries during a deploy coalesces", func(t *testing.T) {
		before := len(d.deploys())
		first, err := d.repo.Commit(t.Context(), "flood 0", testbed.AppendLine("lib/chat.ex", "# flood 0"))
		if err != nil {
			t.Fatal(err)
		}
		if code := d.deliver(http.DefaultClient, "flood-start", first); code != http.StatusAccepted {
			t.Fatalf("webhook: %d", code)
		}
		waitRunning(t, d)
		var commits []string
		for i := 1; i <= 10; i++ {
			c, err := d.repo.Commit(t.Context(), fmt.Sprintf("flood %d", i), testbed.AppendLine("lib/chat.ex", fmt.Sprintf("# flood %d", i)))
			if err != nil {
				t.Fatal(err)
			}
			commits = append(commits, c)
		}
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
		var wg sync.WaitGroup
		var mu sync.Mutex
		codes := map[int]int{}
		for g := 0; g < 10; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 100; i++ {
					code := d.deliver(client, fmt.Sprintf("flood-%d-%d", g, i), commits[(g+i)%10])
					mu.Lock()
					codes[code]++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if codes[http.StatusAccepted] != 1000 {
			t.Fatalf("answers to 1,000 deliveries: %v", codes)
		}
		d.idle()
		list := d.deploys()[before:]
		if len(list) != 2 || list[0].Commit != first || list[1].Commit != commits[9] {
			var got []string
			for _, l := range list {
				got = append(got, fmt.Sprintf("%d %s %s", l.ID, l.Commit[:12], l.Result))
			}
			t.Fatalf("deploys after the flood: %v, want 2: %s then the newest head %s", got, first[:12], commits[9][:12])
		}
		for _, l := range list {
			if l.Result != history.Success {
				t.Errorf("deploy %d: %s", l.ID, l.Result)
			}
		}
	})

	t.Run("a signed push ends with a success status linking to its page", func(t *testing.T) {
		c, err := d.repo.Commit(t.Context(), "status", testbed.AppendLine("lib/chat.ex", "# status"))
		if err != nil {
			t.Fatal(err)
		}
		if code := d.deliver(http.DefaultClient, "status-1", c); code != http.StatusAccepted {
			t.Fatalf("webhook: %d", code)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		defer cancel()
		final, err := d.github.Await(ctx, c, "success")
		if err != nil {
			t.Fatalf("no success status for %s: %v; got %+v", c[:12], err, d.github.Statuses(c))
		}
		// Pendings still queued behind the flood's statuses when a newer
		// state arrives are replaced by it (the last state wins), so how
		// many reach GitHub depends on its pace; the success is last.
		got := d.github.Statuses(c)
		if got[len(got)-1].State != "success" || len(got) > 20 {
			t.Errorf("statuses of %s: %+v", c[:12], got)
		}
		for _, st := range got[:len(got)-1] {
			if st.State != "pending" {
				t.Errorf("statuses of %s: %+v: want pendings before the success", c[:12], got)
			}
		}
		for _, st := range got {
			if st.Context != "deploy/production" || st.TargetURL != final.TargetURL && st.Description != "queued" {
				t.Errorf("status %+v: want context deploy/production and the deploy's link", st)
			}
		}
		if !strings.HasPrefix(final.TargetURL, "http://"+d.listen+"/deploys/") {
			t.Fatalf("target_url %q", final.TargetURL)
		}
		resp, err := http.Get(final.TargetURL)
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(page), c[:12]) || !strings.Contains(string(page), "success") {
			t.Fatalf("the status link %s answers %d:\n%.500s", final.TargetURL, resp.StatusCode, page)
		}
		if strings.Contains(string(page), testGitHubToken) || strings.Contains(string(page), testSecret) {
			t.Fatal("the deploy page shows a secret")
		}
		// Commits passed over by the flood were resolved, naming the head
		// that superseded them.
		superseded := 0
		for _, sts := range d.github.All() {
			if l := sts[len(sts)-1]; l.State == "error" && strings.HasPrefix(l.Description, "not deployed: superseded by") {
				superseded++
			}
		}
		if superseded != 9 {
			t.Errorf("%d commits resolved as superseded, want the flood's 9", superseded)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		resp, err := http.Get("http://" + d.listen + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{
			`operator_deploys_total{env="production",result="success"} 5`,
			`operator_webhook_deliveries_total{outcome="accepted"} 1003`,
			`operator_queue_depth 0`,
			`operator_deploy_phase_duration_seconds_count{env="production",phase="rollout"} 5`,
		} {
			if !strings.Contains(string(body), want) {
				t.Errorf("/metrics lacks %q", want)
			}
		}
		if strings.Contains(string(body), testSecret) || strings.Contains(string(body), testAPIToken) {
			t.Error("/metrics shows a secret")
		}
	})

	t.Run("sync --wait exits 1 on a failed deploy", func(t *testing.T) {
		if _, err := d.repo.Commit(t.Context(), "migration fails", func(work string) error {
			os.MkdirAll(work+"/priv", 0o755)
			return os.WriteFile(work+"/priv/MIGRATE_FAIL", []byte("x"), 0o644)
		}); err != nil {
			t.Fatal(err)
		}
		code, out := d.cli("sync", "--wait")
		if code != 1 || !strings.Contains(out, "migrate") || !strings.Contains(out, "failure") {
			t.Fatalf("exit %d: %s", code, out)
		}
		head, _ := d.repo.Head(t.Context())
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		if st, err := d.github.Await(ctx, head, "failure"); err != nil || !strings.Contains(st.Description, "migrate on n1") {
			t.Errorf("the failed commit's status: %+v, %v", st, err)
		}
		// Fixed by the next commit: exit 0.
		if _, err := d.repo.Commit(t.Context(), "migration fixed", func(work string) error { return os.Remove(work + "/priv/MIGRATE_FAIL") }); err != nil {
			t.Fatal(err)
		}
		if code, out := d.cli("sync", "--wait"); code != 0 || !strings.Contains(out, "success") {
			t.Fatalf("exit %d: %s", code, out)
		}
	})

	t.Run("rollback locks, and unlock goes back to the head", func(t *testing.T) {
		head, err := d.repo.Head(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		prev, err := d.bed.Host("n1").Sh(t.Context(), "cat /srv/chat/.operator/previous")
		if err != nil {
			t.Fatal(err)
		}
		prev = strings.TrimSpace(prev)
		code, out := d.cli("rollback")
		if code != 0 || !strings.Contains(out, "production locked: rolled back to "+prev[:12]) || !strings.Contains(out, "success") {
			t.Fatalf("rollback: exit %d: %s", code, out)
		}
		list := d.deploys()
		last := list[len(list)-1]
		if last.Commit != prev || last.Result != history.Success || !strings.HasPrefix(last.Trigger, "rollback by ") {
			t.Fatalf("the rollback's deploy: %+v", last)
		}
		for _, n := range []string{"n1", "n2", "n3"} {
			if cur, _ := d.bed.Host(n).Sh(t.Context(), "readlink /srv/chat/current"); filepath.Base(strings.TrimSpace(cur)) != prev {
				t.Errorf("%s after the rollback: current %s, want %s", n, cur, prev)
			}
		}
		// The lock keeps automatic deploys from undoing it.
		var st workerStatus
		if d.api("GET", "/api/status", &st); st.Lock == nil || !strings.HasPrefix(st.Lock.Reason, "rolled back to "+prev[:12]) {
			t.Fatalf("after the rollback: %+v", st)
		}
		if code, out := d.cli("rollback", "--to", "0000000"); code == 0 || !strings.Contains(out, "no commit 0000000") {
			t.Errorf("rollback to an unknown commit: exit %d: %s", code, out)
		}
		if code, _ := d.cli("unlock"); code != 0 {
			t.Fatal("unlock failed")
		}
		d.idle()
		list = d.deploys()
		last = list[len(list)-1]
		if last.Commit != head || last.Result != history.Success || !strings.HasPrefix(last.Trigger, "unlock by ") {
			t.Fatalf("after unlock: %+v", last)
		}
	})

	t.Run("a restart mid-deploy", func(t *testing.T) {
		next, err := d.repo.Commit(t.Context(), "restart", testbed.AppendLine("lib/chat.ex", "# restart"))
		if err != nil {
			t.Fatal(err)
		}
		var res struct {
			Deploy int64 `json:"deploy"`
		}
		if code := d.api("POST", "/api/sync", &res); code != http.StatusAccepted || res.Deploy == 0 {
			t.Fatalf("sync: %d %+v", code, res)
		}
		// A person follows it: the stream lasts until the deploy's end.
		type result struct {
			code int
			out  string
		}
		followed := make(chan result, 1)
		go func() {
			code, out := d.cli("sync", "--wait")
			followed <- result{code, out}
		}()
		waitProgress(t, d, res.Deploy, "rollout 2/3")
		dm.stop(t) // as SIGTERM: n2 finishes, n3 is not touched
		if f := <-followed; f.code != 1 || !strings.Contains(f.out, "interrupted") {
			t.Errorf("sync --wait following the stopped deploy: exit %d, want 1 and its end:\n%s", f.code, f.out)
		}
		got, err := openHistory(d.state).Get(res.Deploy)
		if err != nil || got.Result != history.Interrupted {
			t.Fatalf("the stopped deploy: %+v, %v", got, err)
		}
		for _, n := range []string{"n1", "n2", "n3"} {
			if out, err := d.bed.Host(n).Sh(t.Context(), "cd /srv/chat/current && RELEASE_NODE=chat@"+d.bed.Host(n).Addr.String()+" RELEASE_DISTRIBUTION=name bin/chat pid"); err != nil {
				t.Errorf("%s is not running after the stop: %v %s", n, err, out)
			}
		}
		dm = d.start()
		d.idle()
		list := d.deploys()
		last := list[len(list)-1]
		if last.Commit != next || last.Result != history.Success || last.Trigger != "start" {
			t.Fatalf("after the restart: %+v", last)
		}
	})
}

func openHistory(state string) *history.Store {
	h, err := history.Open(state)
	if err != nil {
		panic(err)
	}
	return h
}

func waitRunning(t *testing.T, d *daemonBed) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var st workerStatus
		d.api("GET", "/api/status", &st)
		if st.Running != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no deploy started")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitProgress(t *testing.T, d *daemonBed, id int64, prefix string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var page struct {
			Lines []history.LogLine `json:"lines"`
		}
		d.api("GET", fmt.Sprintf("/api/deploys/%d/log", id), &page)
		for _, l := range page.Lines {
			if l.Stream == "progress" && strings.HasPrefix(l.Text, prefix) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("deploy %d never reached %q", id, prefix)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
