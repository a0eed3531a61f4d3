package testbed

import (
	"context"
	"errors"
	"testing"
	"time"
)

// Start makes a bed of the named hosts for a test and removes it in
// t.Cleanup, also when the test fails. A test that cannot have real hosts
// fails, loudly, with the reason (not root, a tool missing): it never skips.
func Start(t testing.TB, hosts ...string) *Bed {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	b, err := New(ctx, Options{Dir: t.TempDir(), Hosts: hosts, Logf: t.Logf})
	if errors.Is(err, ErrNotRoot) {
		t.Fatal(err)
	}
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	t.Logf("testbed: %d hosts up in %v", len(hosts), time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		start := time.Now()
		if err := b.Close(); err != nil {
			t.Errorf("testbed teardown: %v", err)
		}
		t.Logf("testbed: torn down in %v", time.Since(start).Round(time.Millisecond))
	})
	return b
}
