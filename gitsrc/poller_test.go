package gitsrc

import (
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestPollerSeesAPushToARealBareRepository(t *testing.T) {
	u := newUpstream(t)
	first := u.commit("main", "one", map[string]string{"a": "1"})
	m, err := Open(Options{URL: u.bare, Branch: "main", Dir: filepath.Join(t.TempDir(), "mirror")})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var heads []string
	p := &Poller{Mirror: m, Spec: "@every 100ms", OnHead: func(h string) {
		mu.Lock()
		heads = append(heads, h)
		mu.Unlock()
	}}
	got := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), heads...)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	waitUntil(t, func() bool { return len(got()) == 1 })
	time.Sleep(350 * time.Millisecond) // several idle ticks
	if h := got(); len(h) != 1 || h[0] != first {
		t.Fatalf("after idle ticks: %v, want only %s", h, first)
	}
	second := u.commit("main", "two", map[string]string{"a": "2"})
	waitUntil(t, func() bool { return len(got()) == 2 })
	if h := got(); h[1] != second {
		t.Fatalf("after a push: %v, want %s last", h, second)
	}
	if m.LocalHead() != "" {
		t.Fatal("polling fetched: the mirror should move only when a deploy fetches")
	}
}

func TestPollerReportsErrors(t *testing.T) {
	m, err := Open(Options{URL: filepath.Join(t.TempDir(), "missing.git"), Branch: "main", Dir: filepath.Join(t.TempDir(), "mirror")})
	if err != nil {
		t.Fatal(err)
	}
	var errs int
	p := &Poller{Mirror: m, Spec: "@every 1h", Retries: 1, OnError: func(error) { errs++ }, OnHead: func(string) { t.Error("OnHead on a failing remote") }}
	p.Tick(t.Context())
	if errs != 1 {
		t.Fatalf("OnError calls: got %d, want 1", errs)
	}
	if err := (&Poller{Mirror: m, Spec: "every minute"}).Start(); err == nil {
		t.Fatal("a bad spec: no error")
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BenchmarkIdlePollTick is the cost of a tick that finds the head where it
// was: one ls-remote of a local repository, nothing fetched.
func BenchmarkIdlePollTick(b *testing.B) {
	u := newUpstream(b)
	u.commit("main", "one", map[string]string{"a": "1"})
	m, err := Open(Options{URL: u.bare, Branch: "main", Dir: filepath.Join(b.TempDir(), "mirror")})
	if err != nil {
		b.Fatal(err)
	}
	heads := 0
	p := &Poller{Mirror: m, Spec: "@every 1h", OnHead: func(string) { heads++ }}
	p.Tick(b.Context())
	b.ResetTimer()
	for b.Loop() {
		p.Tick(b.Context())
	}
	if heads != 1 {
		b.Fatalf("idle ticks reported the head %d times, want once", heads)
	}
}
