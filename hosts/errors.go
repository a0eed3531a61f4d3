package hosts

import (
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// CommandError is a command that ran on its host and did not succeed: it
// exited non-zero, was killed by a signal, or ended without an exit status.
// A deploy treats it as the command's own failure (a failed build or
// migration), not as a fault of the connection, which is a *ConnError.
type CommandError struct {
	// Host names the target.
	Host string
	// Cmd is the command line, with environment values redacted.
	Cmd string
	// ExitCode is the exit status, or -1 when the command was killed by a
	// signal or no exit status came back.
	ExitCode int
	// Signal names the signal that killed the command ("KILL", "TERM"), or
	// is empty.
	Signal string
	// Stderr is the last few KiB of the command's standard error.
	Stderr string
	// Err is the *ssh.ExitError or *ssh.ExitMissingError behind it.
	Err error
}

// Error says what ran where and how it ended, with the last lines of stderr.
func (e *CommandError) Error() string {
	var what string
	switch {
	case e.Signal != "":
		what = "killed by signal " + e.Signal
	case e.ExitCode >= 0:
		what = fmt.Sprintf("exit status %d", e.ExitCode)
	default:
		what = "ended without an exit status"
	}
	msg := fmt.Sprintf("run %s on %s: %s", e.Cmd, e.Host, what)
	if s := lastLines(e.Stderr, 3); s != "" {
		msg += ": " + s
	}
	return msg
}

// Unwrap returns the ssh error behind e.
func (e *CommandError) Unwrap() error { return e.Err }

// ConnError is a failure to reach a host or to keep talking to it: the
// dial, the handshake (host key and authentication included), opening a
// session, or the connection dropping while a command ran. Whether the
// command ran is unknown in the last case. Host key errors inside it
// (*UnknownHostKeyError, *HostKeyChangedError) are found with errors.As.
type ConnError struct {
	// Host names the target.
	Host string
	// Addr is the address dialled (host:port).
	Addr string
	// Op is what was being done: "dial", "handshake", "open session",
	// "run".
	Op string
	// Err is the cause.
	Err error
}

// Error names the operation, the host and the cause.
func (e *ConnError) Error() string {
	return fmt.Sprintf("%s %s (%s): %v", e.Op, e.Host, e.Addr, e.Err)
}

// Unwrap returns the cause.
func (e *ConnError) Unwrap() error { return e.Err }

// UnknownHostKeyError is a host whose address known_hosts does not list. The
// operator never trusts on first use: an administrator adds the key after
// checking Fingerprint out of band.
type UnknownHostKeyError struct {
	// Host names the target (or the jump host) that presented the key.
	Host string
	// Addr is the address looked up in known_hosts.
	Addr string
	// Key is the key the host presented.
	Key ssh.PublicKey
}

// Error gives the presented key's fingerprint, for checking out of band.
func (e *UnknownHostKeyError) Error() string {
	return fmt.Sprintf("host key of %s (%s) is unknown: known_hosts has no entry for it; it presented %s %s",
		e.Host, e.Addr, e.Key.Type(), ssh.FingerprintSHA256(e.Key))
}

// HostKeyChangedError is a host that presented a key other than the one
// known_hosts lists for it: a reinstalled server, or someone in the middle.
// The connection is refused until an administrator updates known_hosts.
type HostKeyChangedError struct {
	// Host names the target (or the jump host) that presented the key.
	Host string
	// Addr is the address looked up in known_hosts.
	Addr string
	// Key is the key the host presented.
	Key ssh.PublicKey
	// Want are the keys known_hosts lists for it, with file and line.
	Want []knownhosts.KnownKey
}

// Error gives both fingerprints and where known_hosts holds the old key.
func (e *HostKeyChangedError) Error() string {
	var known []string
	for _, k := range e.Want {
		known = append(known, fmt.Sprintf("%s %s (%s:%d)", k.Key.Type(), ssh.FingerprintSHA256(k.Key), k.Filename, k.Line))
	}
	return fmt.Sprintf("host key of %s (%s) has changed, possibly an attack: it presented %s %s, known_hosts has %s",
		e.Host, e.Addr, e.Key.Type(), ssh.FingerprintSHA256(e.Key), strings.Join(known, ", "))
}

// lastLines returns the last n non-empty lines of s, joined by " | ", for
// one-line error messages.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	var out []string
	for i := len(lines) - 1; i >= 0 && len(out) < n; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			out = append(out, l)
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return strings.Join(out, " | ")
}
