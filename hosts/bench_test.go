package hosts

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clusterops/operator/testbed"
)

// BenchmarkRunPooled is one command on the pool's open connection: a
// session open, the command, its exit status.
func BenchmarkRunPooled(b *testing.B) {
	bed := testbed.Start(b, "n1")
	p := newPool(b, bed, func(c *Config) { c.KeepAlive = 15 * time.Second })
	n1 := target(bed, "n1")
	if err := p.Run(b.Context(), n1, Cmd{Args: []string{"true"}}, Exec{}); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := p.Run(b.Context(), n1, Cmd{Args: []string{"true"}}, Exec{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRunFresh is one command on a connection of its own, as a tool
// that runs `ssh host cmd` per step does: TCP, key exchange, host key check
// and authentication every time.
func BenchmarkRunFresh(b *testing.B) {
	bed := testbed.Start(b, "n1")
	n1 := target(bed, "n1")
	for b.Loop() {
		p := newPool(b, bed, func(c *Config) { c.KeepAlive = 15 * time.Second })
		if err := p.Run(b.Context(), n1, Cmd{Args: []string{"true"}}, Exec{}); err != nil {
			b.Fatal(err)
		}
		p.Close()
	}
}

// BenchmarkFanOut200MB copies a 200 MiB artifact from the build host to 3
// nodes and reports the process's peak resident memory during the copy
// (target: under 80 MB): the bytes stream through, never whole in memory.
func BenchmarkFanOut200MB(b *testing.B) {
	bed := testbed.Start(b, "build", "n1", "n2", "n3")
	p := newPool(b, bed, func(c *Config) { c.KeepAlive = 15 * time.Second })
	build := target(bed, "build")
	nodes := []Target{target(bed, "n1"), target(bed, "n2"), target(bed, "n3")}
	const src, dst = "/root/chat.tar.gz", "/srv/chat/releases/abc.tar.gz"
	sum := makeArtifact(b, p, build, src, artifactSize)
	resetPeakRSS(b)
	for b.Loop() {
		b.StopTimer()
		for _, n := range nodes {
			os.Remove(bed.Host(n.Name).Path(dst))
		}
		b.StartTimer()
		results, err := p.FanOut(b.Context(), Copy{From: build, FromPath: src, SHA256: sum, To: nodes, ToPath: dst})
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range results {
			if r.Skipped || r.Bytes != artifactSize {
				b.Fatalf("%s: got %+v, want %d bytes sent", r.Target.Name, r, artifactSize)
			}
		}
	}
	b.SetBytes(artifactSize)
	b.ReportMetric(float64(peakRSS(b))/(1<<20), "peak-RSS-MiB")
}

// resetPeakRSS makes VmHWM start again from the current RSS (Linux 4.0+).
func resetPeakRSS(tb testing.TB) {
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		tb.Fatalf("reset peak RSS: %v", err)
	}
}

// peakRSS reads VmHWM, the peak resident set size, in bytes.
func peakRSS(tb testing.TB) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return kb << 10
		}
	}
	tb.Fatal("no VmHWM in /proc/self/status")
	return 0
}
