package hosts

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clusterops/operator/testbed"
)

const artifactSize = 200 << 20

// makeArtifact writes size random bytes at path on the build host, where a
// build would leave its tarball, and returns their SHA-256.
func makeArtifact(t testing.TB, p *Pool, build Target, path string, size int) string {
	t.Helper()
	out, err := p.Output(context.Background(), build, Cmd{Args: []string{"sh", "-c", `head -c "$2" /dev/urandom >"$1" && sha256sum <"$1"`, "sh", path, strconv.Itoa(size)}})
	if err != nil {
		t.Fatal(err)
	}
	sum, _, _ := strings.Cut(string(out), " ")
	return sum
}

func TestFanOut(t *testing.T) {
	b := testbed.Start(t, "build", "n1", "n2", "n3")
	p := newPool(t, b, nil)
	ctx := t.Context()
	build := target(b, "build")
	nodes := []Target{target(b, "n1"), target(b, "n2"), target(b, "n3")}
	const src, dst = "/root/_build/prod/chat-0.1.0.tar.gz", "/srv/chat/releases/abc.tar.gz"
	if _, err := b.Host("build").Sh(ctx, "mkdir -p /root/_build/prod"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	sum := makeArtifact(t, p, build, src, artifactSize)
	t.Logf("made a %d MiB artifact in %v", artifactSize>>20, time.Since(start).Round(time.Millisecond))

	// n3 holds it already (copied by the harness, not by the operator).
	n3dst := b.Host("n3").Path(dst)
	if err := os.MkdirAll(strings.TrimSuffix(n3dst, "/abc.tar.gz"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", b.Host("build").Path(src), n3dst).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}

	start = time.Now()
	results, err := p.FanOut(ctx, Copy{From: build, FromPath: src, To: nodes, ToPath: dst})
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fan-out of %d MiB to 2 nodes (1 skipped) took %v", artifactSize>>20, took.Round(time.Millisecond))
	type res struct {
		host    string
		skipped bool
		bytes   int64
	}
	var got []res
	for _, r := range results {
		got = append(got, res{r.Target.Name, r.Skipped, r.Bytes})
	}
	want := []res{{"n1", false, artifactSize}, {"n2", false, artifactSize}, {"n3", true, 0}}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("result %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	for _, n := range nodes {
		out, err := p.Output(ctx, n, Sum(dst))
		if got := strings.TrimSpace(string(out)); err != nil || got != sum {
			t.Errorf("%s holds sha256 %q, %v; want %s", n.Name, got, err, sum)
		}
		entries, _ := os.ReadDir(b.Host(n.Name).Path("/srv/chat/releases"))
		if len(entries) != 1 {
			t.Errorf("%s: temporary files left beside the artifact: %v", n.Name, entries)
		}
		if fi, err := os.Stat(b.Host(n.Name).Path(dst)); err != nil || fi.Mode().Perm() != 0o644 {
			t.Errorf("%s: artifact mode %v, %v; want 0644", n.Name, fi.Mode(), err)
		}
	}

	// Again, with the sum known: nothing moves.
	results, err = p.FanOut(ctx, Copy{From: build, FromPath: src, SHA256: sum, To: nodes, ToPath: dst})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if !r.Skipped || r.Bytes != 0 {
			t.Errorf("second fan-out to %s: got %+v, want skipped", r.Target.Name, r)
		}
	}
}

func TestFanOutFailures(t *testing.T) {
	b := testbed.Start(t, "build", "n1", "n2", "n3")
	p := newPool(t, b, func(c *Config) { c.DialTimeout = time.Second })
	ctx := t.Context()
	build := target(b, "build")
	nodes := []Target{target(b, "n1"), target(b, "n2"), target(b, "n3")}
	sum := makeArtifact(t, p, build, "/root/a.tar.gz", 3<<20)
	// n2 cannot write there (a file stands where the directory should be);
	// n3 is cut off.
	if _, err := b.Host("n2").Sh(ctx, "touch /srv/x"); err != nil {
		t.Fatal(err)
	}
	if err := b.Host("n3").Cut(ctx); err != nil {
		t.Fatal(err)
	}

	results, err := p.FanOut(ctx, Copy{From: build, FromPath: "/root/a.tar.gz", SHA256: sum, To: nodes, ToPath: "/srv/x/a.tar.gz"})
	if err == nil {
		t.Fatal("fan-out with failing hosts returned no error")
	}
	t.Log(err)
	got := []string{outcome(results[0].Err), outcome(results[1].Err), outcome(results[2].Err)}
	want := []string{"ok", "exit 1", "conn dial"}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("%s: got %s (%v), want %s", nodes[i].Name, got[i], results[i].Err, want[i])
		}
	}
	out, _ := p.Output(ctx, nodes[0], Sum("/srv/x/a.tar.gz"))
	if strings.TrimSpace(string(out)) != sum {
		t.Errorf("n1 holds %q, want %s", out, sum)
	}

	t.Run("wrong sum", func(t *testing.T) {
		// The bytes arrive but do not match: nothing takes the name.
		results, err := p.FanOut(ctx, Copy{From: build, FromPath: "/root/a.tar.gz", SHA256: emptySum, To: nodes[:1], ToPath: "/srv/y/a.tar.gz"})
		if err == nil || outcome(results[0].Err) != "exit 1" || !strings.Contains(results[0].Err.Error(), "want "+emptySum) {
			t.Errorf("got %v, want exit 1 naming the wanted sum", err)
		}
		if _, err := os.Stat(b.Host("n1").Path("/srv/y/a.tar.gz")); err == nil {
			t.Error("an artifact with the wrong sum took the name")
		}
	})
	t.Run("missing source", func(t *testing.T) {
		results, err := p.FanOut(ctx, Copy{From: build, FromPath: "/root/nope.tar.gz", To: nodes[:1], ToPath: "/srv/z"})
		if err == nil || results[0].Err == nil || !strings.Contains(err.Error(), "no such file") {
			t.Errorf("got %v, want no such file", err)
		}
	})
	t.Run("source fails mid-stream", func(t *testing.T) {
		// The source path is a directory: cat fails after the
		// destinations opened; they throw away what they got.
		if _, err := b.Host("build").Sh(ctx, "mkdir -p /root/dir"); err != nil {
			t.Fatal(err)
		}
		results, err := p.FanOut(ctx, Copy{From: build, FromPath: "/root/dir", SHA256: sum, To: nodes[:1], ToPath: "/srv/w/a.tar.gz"})
		t.Log(err)
		if err == nil || !strings.Contains(results[0].Err.Error(), "source: ") {
			t.Errorf("got %v, want the source's failure", err)
		}
		entries, _ := os.ReadDir(b.Host("n1").Path("/srv/w"))
		if len(entries) != 0 {
			t.Errorf("left on n1: %v", entries)
		}
	})
}
