package pages

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterops/operator/history"
)

// bigDeploy records a finished deploy with n lines of build output, the
// kind a long build prints: colour codes and markup to clean and escape.
func bigDeploy(t testing.TB, s *history.Store, n int) int64 {
	t.Helper()
	rec, err := s.Begin("production", shaA, "A long build", "manual")
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		rec.Line("build", "stdout", fmt.Sprintf("\x1b[32m==> chat\x1b[0m Compiling lib/chat_web/live/<room_%06d>.ex (%d of %d) & generated Chat.Room%d.beam", i, i, n, i))
	}
	if err := rec.Finish(history.Success, "built"); err != nil {
		t.Fatal(err)
	}
	return rec.ID()
}

// memPeak samples the heap in use and the resident memory of the process
// until stop is called, and returns their peaks in bytes.
func memPeak() (stop func() (heap, rss uint64)) {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	done := make(chan struct{})
	var heap, rss uint64
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			metrics.Read(sample)
			heap = max(heap, sample[0].Value.Uint64())
			rss = max(rss, residentBytes())
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	})
	return func() (uint64, uint64) {
		close(done)
		wg.Wait()
		return heap, rss
	}
}

// residentBytes is the process's resident set size, from
// /proc/self/statm; 0 where there is none.
func residentBytes() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseUint(f[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}

// BenchmarkDeployPage serves the page of a deploy with a 50,000-line log
// to 8 clients at once, over HTTP, and reports the peak heap and peak
// resident memory of the process while they read it:
//
//	go test -count=1 -run '^$' -bench DeployPage -benchtime 3x ./pages/
func BenchmarkDeployPage(b *testing.B) {
	const lines, clients = 50_000, 8
	s := openStore(b)
	id := bigDeploy(b, s, lines)
	srv := httptest.NewServer(New(Options{History: s, Env: "production", Log: quiet()}))
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	url := srv.URL + "/deploys/" + itoa(id)

	runtime.GC()
	stop := memPeak()
	var pageBytes atomic.Int64
	for b.Loop() {
		var wg sync.WaitGroup
		for range clients {
			wg.Go(func() {
				resp, err := client.Get(url)
				if err != nil {
					b.Error(err)
					return
				}
				defer resp.Body.Close()
				n, err := io.Copy(io.Discard, resp.Body)
				if err != nil || resp.StatusCode != http.StatusOK {
					b.Errorf("GET %s: %s, %v", url, resp.Status, err)
				}
				pageBytes.Store(n)
			})
		}
		wg.Wait()
	}
	heap, rss := stop()
	b.ReportMetric(float64(heap)/1e6, "peak-heap-MB")
	b.ReportMetric(float64(rss)/1e6, "peak-rss-MB")
	b.ReportMetric(float64(pageBytes.Load())/1e3, "page-kB")
}
