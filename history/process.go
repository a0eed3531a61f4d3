package history

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
)

// thisProcess is this operator's identity as processIdentity gives it, ""
// where the system cannot tell (no /proc). Begin records it with the PID.
var thisProcess = sync.OnceValue(func() string {
	id, _ := processIdentity(os.Getpid())
	return id
})

// processIdentity returns the identity of process pid, unique across
// restarts and reboots, which a PID is not: an operator in a container is
// PID 1 every time. It is "<boot ID>/<start time>": the kernel's boot ID
// and the process's start in clock ticks after boot, both read from /proc,
// so another process (the CLI beside the daemon) can check it too. A
// process that is gone has none.
func processIdentity(pid int) (string, error) {
	boot, err := bootID()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	start, err := startTime(b)
	if err != nil {
		return "", fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return boot + "/" + start, nil
}

// startTime returns the start time field of a /proc/<pid>/stat.
func startTime(stat []byte) (string, error) {
	// The second field is the command's name in parentheses, which may
	// hold spaces and parentheses itself: the third starts after the last
	// ')'. The start time is the 22nd.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return "", errors.New("no command name")
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 20 {
		return "", fmt.Errorf("%d fields, want 22 or more", len(f)+2)
	}
	return f[19], nil
}

// bootID is the kernel's boot ID, which changes at every boot: start
// times count from the boot.
var bootID = sync.OnceValues(func() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", err
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return "", errors.New("empty boot ID")
	}
	return id, nil
})

// processAlive reports whether the operator process that a deploy's
// record names by pid and identity still runs.
//
// A record from before identities ("") is judged by its PID, as then,
// except that it cannot be this process's own: this process records its
// identity with every deploy it begins, so a deploy of its PID without one
// was begun by an earlier process that had the same PID.
func processAlive(pid int, identity string) bool {
	if pid <= 0 {
		return false
	}
	if identity == "" {
		if pid == os.Getpid() {
			return thisProcess() == ""
		}
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		return err == nil
	}
	id, err := processIdentity(pid)
	return err == nil && id == identity
}
