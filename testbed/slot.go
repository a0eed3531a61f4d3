package testbed

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockDir holds one lock file per slot. /run is a tmpfs, so a reboot frees
// every slot along with the namespaces that used them.
const lockDir = "/run/operator-testbed"

// slot is a claimed /24 and name prefix, held by an exclusive flock on its
// lock file. The kernel drops the lock when the process dies, however it
// dies: a free lock with namespaces of that slot still present means a
// crashed run, and its leftovers may be removed.
type slot struct {
	n    int
	file *os.File
}

func (s *slot) release() {
	if s.file != nil {
		s.file.Close()
		s.file = nil
	}
}

// tryLock takes slot n's lock without waiting.
func tryLock(n int) (*slot, error) {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(lockDir, fmt.Sprintf("slot-%d.lock", n)), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, err
	}
	return &slot{n: n, file: f}, nil
}

// claimSlot takes a free slot at random among 1..250 whose subnet is not
// already routed on this machine.
func claimSlot(ctx context.Context, logf func(string, ...any)) (*slot, error) {
	routes, _ := os.ReadFile("/proc/net/route")
	for _, n := range rand.Perm(250) {
		n++
		s, err := tryLock(n)
		if err != nil {
			continue
		}
		if subnetInUse(string(routes), n) {
			s.release()
			continue
		}
		cleanSlot(ctx, n, logf) // a crashed run may have left this slot dirty
		return s, nil
	}
	return nil, fmt.Errorf("testbed: no free slot in 10.213.0.0/16")
}

// subnetInUse reports whether 10.213.n.0/24 appears as a route destination in
// /proc/net/route (little-endian hex).
func subnetInUse(routes string, n int) bool {
	want := fmt.Sprintf("%02X%02X%02X%02X", 0, n, 213, 10)
	for _, line := range strings.Split(routes, "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && f[1] == want {
			return true
		}
	}
	return false
}

// Sweep removes the namespaces and bridges of every slot whose lock no live
// process holds: what crashed or killed runs left behind. New calls it.
func Sweep(ctx context.Context, logf func(string, ...any)) {
	slots := map[int]bool{}
	for _, ns := range listNamespaces(ctx) {
		if n, ok := slotOf(ns); ok {
			slots[n] = true
		}
	}
	links, _ := os.ReadDir("/sys/class/net")
	for _, l := range links {
		if n, ok := slotOf(l.Name()); ok {
			slots[n] = true
		}
	}
	for n := range slots {
		s, err := tryLock(n)
		if err != nil {
			continue // a live run owns it
		}
		cleanSlot(ctx, n, logf)
		s.release()
	}
}

// slotOf parses the slot number out of otb<n>-<host>, otb<n> or otb<n>v<i>.
func slotOf(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, "otb")
	if !ok {
		return 0, false
	}
	end := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
	if end == 0 {
		return 0, false
	}
	if end < 0 {
		end = len(rest)
	}
	n, err := strconv.Atoi(rest[:end])
	return n, err == nil && n >= 1 && n <= 250
}

func cleanSlot(ctx context.Context, n int, logf func(string, ...any)) {
	prefix := fmt.Sprintf("otb%d-", n)
	for _, ns := range listNamespaces(ctx) {
		if strings.HasPrefix(ns, prefix) {
			logf("testbed: removing namespace %s left by an earlier run", ns)
			if err := removeNamespace(ctx, ns); err != nil {
				logf("testbed: %v", err)
			}
		}
	}
	links, _ := os.ReadDir("/sys/class/net")
	for _, l := range links {
		if m, ok := slotOf(l.Name()); ok && m == n {
			logf("testbed: removing link %s left by an earlier run", l.Name())
			removeLink(ctx, l.Name())
		}
	}
}
