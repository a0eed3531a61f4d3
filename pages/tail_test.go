package pages

import (
	"net/http"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// lineIDs returns the numbers of the log lines a page shows, in order.
func lineIDs(body string) []int64 {
	var seqs []int64
	for _, m := range regexp.MustCompile(`<div id="L(\d+)"`).FindAllStringSubmatch(body, -1) {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		seqs = append(seqs, n)
	}
	return seqs
}

// wantRange checks that a page shows lines first to last, each once, in
// order.
func wantRange(t *testing.T, body string, first, last int64) {
	t.Helper()
	seqs := lineIDs(body)
	if len(seqs) != int(last-first+1) || seqs[0] != first || seqs[len(seqs)-1] != last {
		t.Fatalf("the page shows %d lines, %v…; want lines %d to %d", len(seqs), seqs[:min(3, len(seqs))], first, last)
	}
	for i, seq := range seqs {
		if seq != first+int64(i) {
			t.Fatalf("line %d of the page is line %d of the log; want %d", i+1, seq, first+int64(i))
		}
	}
}

// A deploy's page shows the end of its log, tailLines lines, and links
// to the lines before, a page at a time.
func TestDeployPageShowsTheEndOfTheLog(t *testing.T) {
	s := openStore(t)
	const total = 2*tailLines + 201 // with the result's line
	id := bigDeploy(t, s, total-1)
	h := New(Options{History: s, PublicURL: "https://deploy.acme.test/ops", Log: quiet()})
	page := "/ops/deploys/" + itoa(id)

	first := int64(total - tailLines + 1)
	code, _, body := get(t, h, "/deploys/"+itoa(id))
	if code != http.StatusOK {
		t.Fatalf("GET: %d\n%s", code, body)
	}
	wantRange(t, body, first, total)
	wantIn(t, body, "result success: built", `data-seq="`+itoa(total)+`"`,
		"Lines "+itoa(first)+" to "+itoa(total)+", the end of the log.",
		`<a href="`+page+`?before=`+itoa(first)+`">Earlier lines</a>`,
		// cleaned and escaped as ever
		"==&gt; chat Compiling lib/chat_web/live/&lt;room_001200&gt;.ex")
	wantNotIn(t, body, "\x1b", "<room_", "Later lines", "The end of the log</a>")

	// The page before: tailLines lines, and the way back to the end.
	_, _, body = get(t, h, "/deploys/"+itoa(id)+"?before="+itoa(first))
	wantRange(t, body, first-tailLines, first-1)
	second := first - tailLines
	wantIn(t, body, "Lines "+itoa(second)+" to "+itoa(first-1)+". "+
		`<a href="`+page+`?before=`+itoa(second)+`">Earlier lines</a> · `+
		`<a href="`+page+`?before=`+itoa(first+tailLines)+`">Later lines</a> · `+
		`<a href="`+page+`">The end of the log</a>`)
	// Later lines are the next tailLines.
	_, _, later := get(t, h, "/deploys/"+itoa(id)+"?before="+itoa(first+tailLines))
	wantRange(t, later, first, total)

	// The first page: no earlier lines.
	_, _, body = get(t, h, "/deploys/"+itoa(id)+"?before="+itoa(second))
	wantRange(t, body, 1, second-1)
	wantIn(t, body, "Lines 1 to "+itoa(second-1)+".", "Later lines")
	wantNotIn(t, body, "Earlier lines")

	_, _, body = get(t, h, "/deploys/"+itoa(id)+"?before=1")
	if seqs := lineIDs(body); len(seqs) != 0 {
		t.Errorf("before=1 shows lines %v", seqs)
	}
	wantIn(t, body, `No lines before line 1. <a href="`+page+`?before=`+itoa(1+tailLines)+`">Later lines</a> · <a href="`+page+`">The end of the log</a>`)

	// A log that fits on a page is shown whole, without links.
	short := finishedDeploy(t, s)
	_, _, body = get(t, h, "/deploys/"+itoa(short))
	wantNotIn(t, body, "Earlier lines", "lognav")
}

// A running deploy's page shows the end of its log, and follows it from
// there; a page of earlier lines does not.
func TestRunningDeployPageFollowsOnlyTheEnd(t *testing.T) {
	s := openStore(t)
	rec := runningDeploy(t, s, tailLines+10)
	h := New(Options{History: s, Log: quiet()})
	_, _, body := get(t, h, "/deploys/"+itoa(rec.ID()))
	wantRange(t, body, 11, tailLines+10)
	wantIn(t, body, `data-running="true"`, `data-seq="`+itoa(tailLines+10)+`"`, "<script>", `http-equiv="refresh"`, "Earlier lines")

	_, _, body = get(t, h, "/deploys/"+itoa(rec.ID())+"?before=11")
	wantRange(t, body, 1, 10)
	wantIn(t, body, `data-running="false"`, "badge r-running", "The end of the log")
	wantNotIn(t, body, "<script", "http-equiv")
}

// discard is a ResponseWriter that keeps only how the page was written.
type discard struct {
	header         http.Header
	bytes          int
	writes, widest int
}

func (d *discard) Header() http.Header { return d.header }
func (d *discard) WriteHeader(int)     {}
func (d *discard) Write(b []byte) (int, error) {
	d.bytes += len(b)
	d.writes++
	d.widest = max(d.widest, len(b))
	return len(b), nil
}

// The page of a deploy with a long log costs what one with a short log
// costs, and is written out as it is read, not held whole.
func TestDeployPageMemoryDoesNotGrowWithTheLog(t *testing.T) {
	s := openStore(t)
	short := bigDeploy(t, s, 2*tailLines)
	long := bigDeploy(t, s, 20*tailLines)
	h := New(Options{History: s, Log: quiet()})
	serve := func(id int64) (allocated uint64, w *discard) {
		w = &discard{header: http.Header{}}
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "/deploys/"+itoa(id), nil)
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		h.ServeHTTP(w, req)
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc, w
	}
	serve(short) // the first page parses nothing more, but warms the store
	shortAlloc, _ := serve(short)
	longAlloc, w := serve(long)
	t.Logf("a page of a %d-line log allocates %d kB, of a %d-line log %d kB", 2*tailLines, shortAlloc>>10, 20*tailLines, longAlloc>>10)
	if longAlloc > shortAlloc*3/2 {
		t.Errorf("a page of a log 10 times longer allocates %.1f times as much; want about the same", float64(longAlloc)/float64(shortAlloc))
	}
	if w.writes < 2 || w.widest > 32<<10 {
		t.Errorf("the %d kB page was written in %d writes, the widest %d kB; want writes of 32 kB at most, as it is read", w.bytes>>10, w.writes, w.widest>>10)
	}
	if !strings.Contains(w.header.Get("Content-Type"), "text/html") {
		t.Errorf("Content-Type %q", w.header.Get("Content-Type"))
	}
}
