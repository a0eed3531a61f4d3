package testbed

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// HAProxySocket is where StartHAProxy puts the runtime API socket on the
// load-balancer host: the path PRODUCT.md's example uses.
const HAProxySocket = "/run/haproxy/admin.sock"

// Backend is one server of an HAProxy backend.
type Backend struct {
	Name string // server name in HAProxy: the host's name in the manifest
	Addr string // host:port it forwards to
}

// StartHAProxy runs Debian's HAProxy on h with one HTTP frontend on port 80
// and one backend named backend whose servers are health-checked on
// /health, with the admin socket at HAProxySocket. HAProxy daemonizes inside
// the host; the bed's teardown stops it with everything else there.
//
// It is configured as a team running Phoenix behind HAProxy would: a
// WebSocket, once upgraded, is a tunnel that lives by `timeout tunnel` (an
// hour) rather than the client and server timeouts, and maxconn leaves
// room for thousands of them: 9,000, as each takes two descriptors and the
// machines here cap a process (root too) at 20,000. Deliberately not set: `option redispatch` and `retries`, which
// would resend a request a stopping node refused and so hide a drain that
// let one through.
func (h *Host) StartHAProxy(ctx context.Context, backend string, servers []Backend) error {
	var sb strings.Builder
	fmt.Fprintf(&sb, `global
    stats socket %s mode 600 level admin
    pidfile /run/haproxy.pid
    maxconn 9000
    daemon

defaults
    mode http
    maxconn 9000
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h

frontend www
    bind %s:80
    default_backend %s

backend %s
    option httpchk GET /health
`, HAProxySocket, h.Addr, backend, backend)
	for _, s := range servers {
		fmt.Fprintf(&sb, "    server %s %s check inter 1s fall 2 rise 2\n", s.Name, s.Addr)
	}
	cfg := filepath.Join(h.Dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(sb.String()), 0o600); err != nil {
		return err
	}
	_, err := h.Sh(ctx, "mkdir -p /run/haproxy && haproxy -c -q -f "+shellQuote(cfg)+" && haproxy -f "+shellQuote(cfg))
	return err
}

// HAProxy sends one command to the runtime API of the HAProxy that
// StartHAProxy started on h, without SSH, and returns its answer: for tests
// that read back what the operator did through the socket.
func (h *Host) HAProxy(ctx context.Context, command string) (string, error) {
	return h.Sh(ctx, "echo "+shellQuote(command)+" | socat stdio unix-connect:"+HAProxySocket)
}
