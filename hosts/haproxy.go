package hosts

import (
	"encoding/csv"
	"fmt"
	"strconv"
	"strings"

	"github.com/clusterops/operator/manifests"
)

// HAProxy builds the commands that drive HAProxy's runtime API through its
// stats socket on the load-balancer host (`stats socket … level admin`),
// with socat as the client.
type HAProxy struct {
	// Socket is the absolute path of the admin socket.
	Socket string
}

const haproxyScript = `printf "%s\n" "$2" | socat -t 5 stdio "unix-connect:$1"`

func (h HAProxy) command(line string) (Cmd, error) {
	if err := h.checkSocket(); err != nil {
		return Cmd{}, err
	}
	return script(haproxyScript, h.Socket, line), nil
}

func (h HAProxy) checkSocket() error {
	if !manifests.ValidHAProxySocket(h.Socket) {
		return fmt.Errorf("haproxy socket %q: want an absolute path without , : ! or spaces", h.Socket)
	}
	return nil
}

// SetState returns the command that sets server's admin state in backend:
// "drain" (no new sessions, current ones finish), "ready" or "maint".
func (h HAProxy) SetState(backend, server, state string) (Cmd, error) {
	if !manifests.HAProxyName.MatchString(backend) || !manifests.HAProxyName.MatchString(server) {
		return Cmd{}, fmt.Errorf("haproxy server %q/%q: names may hold letters, digits, _ . : -", backend, server)
	}
	switch state {
	case "drain", "ready", "maint":
	default:
		return Cmd{}, fmt.Errorf("haproxy state %q: want drain, ready or maint", state)
	}
	return h.command("set server " + backend + "/" + server + " state " + state)
}

// Ready returns the command that puts server back in backend: admin state
// ready, and its health forced up. The operator calls it once the node
// passed its own checks (ping, membership, the health URL); without the
// force, a server HAProxy's checks marked down while it restarted stays
// down until `rise` checks pass (2 s with `inter 1s rise 2`), and the next
// node's drain can leave the backend with no server up: requests fail with
// 503. HAProxy's checks go on and take it out again if it does not serve.
// On a server without checks `health up` answers nothing and does nothing
// (verified with HAProxy 2.6).
func (h HAProxy) Ready(backend, server string) (Cmd, error) {
	if !manifests.HAProxyName.MatchString(backend) || !manifests.HAProxyName.MatchString(server) {
		return Cmd{}, fmt.Errorf("haproxy server %q/%q: names may hold letters, digits, _ . : -", backend, server)
	}
	s := backend + "/" + server
	return h.command("set server " + s + " state ready; set server " + s + " health up")
}

// CheckSet reads what HAProxy answered a SetState or Ready command: nothing
// when it did it, else why not (such as "No such server."), as an error.
func CheckSet(out []byte) error {
	if reply := strings.TrimSpace(string(out)); reply != "" {
		return fmt.Errorf("haproxy refused: %s", firstLine(reply))
	}
	return nil
}

// ShowServersState returns the command that prints backend's servers as
// HAProxy keeps them (`show servers state`); ParseDrained reads it.
func (h HAProxy) ShowServersState(backend string) (Cmd, error) {
	if !manifests.HAProxyName.MatchString(backend) {
		return Cmd{}, fmt.Errorf("haproxy backend %q: names may hold letters, digits, _ . : -", backend)
	}
	return h.command("show servers state " + backend)
}

// adminDrain is the bit of srv_admin_state that `set server … state drain`
// sets (SRV_ADMF_FDRAIN); maintenance has bits of its own.
const adminDrain = 0x08

// ParseDrained reads ShowServersState's output for backend: the servers
// drained by `set server … state drain`. The format, as HAProxy 2.6 prints
// it: a version line ("1"), a "# be_id be_name srv_id srv_name srv_addr
// srv_op_state srv_admin_state …" header, then a line a server.
func ParseDrained(out []byte, backend string) (map[string]bool, error) {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 2 || strings.TrimSpace(lines[0]) != "1" || !strings.HasPrefix(lines[1], "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state") {
		return nil, fmt.Errorf("haproxy show servers state: unreadable output %q", firstLine(string(out)))
	}
	drained := map[string]bool{}
	for _, line := range lines[2:] {
		f := strings.Fields(line)
		if len(f) < 7 || f[1] != backend {
			continue
		}
		admin, err := strconv.Atoi(f[6])
		if err != nil {
			return nil, fmt.Errorf("haproxy %s/%s: srv_admin_state %q", backend, f[3], f[6])
		}
		drained[f[3]] = admin&adminDrain != 0
	}
	return drained, nil
}

// ShowStat returns the command that prints HAProxy's statistics as CSV;
// ParseStat reads a server's line from it.
func (h HAProxy) ShowStat() (Cmd, error) { return h.command("show stat") }

// ServerStat is what the operator reads of one server in `show stat`.
type ServerStat struct {
	Sessions int    // scur: sessions open now
	Status   string // status: UP, DOWN, DRAIN, MAINT, no check, …
}

// ParseStat finds backend/server in the CSV of `show stat`. HAProxy's CSV
// starts with a "# " header naming the columns.
func ParseStat(out []byte, backend, server string) (ServerStat, error) {
	text := strings.TrimPrefix(strings.TrimSpace(string(out)), "# ")
	r := csv.NewReader(strings.NewReader(text))
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil || len(rows) == 0 {
		return ServerStat{}, fmt.Errorf("haproxy show stat: unreadable output %q", firstLine(string(out)))
	}
	col := map[string]int{}
	for i, name := range rows[0] {
		col[name] = i
	}
	px, sv, scur, status := col["pxname"], col["svname"], col["scur"], col["status"]
	if _, ok := col["scur"]; !ok {
		return ServerStat{}, fmt.Errorf("haproxy show stat: no scur column in %q", firstLine(string(out)))
	}
	for _, row := range rows[1:] {
		if len(row) > max(px, sv, scur, status) && row[px] == backend && row[sv] == server {
			n, err := strconv.Atoi(row[scur])
			if err != nil {
				return ServerStat{}, fmt.Errorf("haproxy %s/%s: scur %q", backend, server, row[scur])
			}
			return ServerStat{Sessions: n, Status: row[status]}, nil
		}
	}
	return ServerStat{}, fmt.Errorf("haproxy has no server %s/%s", backend, server)
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// showStreamsScript prints one line for each stream HAProxy runs for
// server $3 of backend $2: "upgraded <id>" for a tunnel, else "stream <id>
// <its txn line>".
//
// What it reads, as verified with HAProxy 2.6's runtime API:
//   - `show sess` lists every stream, one a line: "0x55d0…: proto=tcpv4
//     src=… fe=www be=chat srv=n1 … rq[f=…,i=0,an=8000h,…]
//     rp[f=…,i=0,an=1400000h,…] …". A stream is one request and its
//     response (a keep-alive client between requests has none), or one
//     tunnel: a WebSocket after its 101 (or a CONNECT) leaves HTTP and has
//     no analyser left on either side (both an=00h), as in every version
//     that has HTX.
//   - `show sess <id>` details one stream; its "txn=" line names the HTTP
//     states: "status=-1 req.st=MSG_DONE rsp.st=MSG_RPBEFORE" while the
//     app has not answered (a slow request), "status=200 … rsp.st=MSG_DATA"
//     while a response body flows (a download, server-sent events),
//     "status=101 … rsp.st=MSG_TUNNEL" for a WebSocket. A stream that ended
//     meanwhile answers "Session not found.".
//   - `show stat`'s scur counts all of these alike, which is why a drain
//     that waited for scur to reach 0 never ended while a WebSocket was
//     open. `show servers conn` counts server-side connections, idle or
//     not, and tells nothing of their state either. `shutdown sessions
//     server` would cut every stream, requests in flight too.
//
// The ids of non-tunnel streams go to `show sess <id>; …` calls of 100,
// so a backend with thousands of WebSockets costs one listing and the few
// streams that may be requests; past 1,000 of those, the rest are listed
// without details (and count as in flight). A stream that ended between
// the listing and its details is left out.
const showStreamsScript = `set -e
sock=$1
tmp=$(mktemp)
trap 'rm -f "$tmp" "$tmp.ids"' EXIT
printf "show sess\n" | socat -t 5 stdio "unix-connect:$sock" >"$tmp"
awk -v be="be=$2" -v srv="srv=$3" '
  { mine = 0; an = 0 }
  { for (i = 2; i <= NF; i++) {
      if ($i == be) mine++
      if ($i == srv) mine++
      if ($i ~ /^r[qp]\[/ && $i !~ /,an=0+h,/) an = 1
  } }
  mine == 2 { id = $1; sub(/:$/, "", id); print (an ? "stream " : "upgraded ") id }
' "$tmp" >"$tmp.ids"
grep "^upgraded " "$tmp.ids" || true
grep "^stream " "$tmp.ids" | tail -n +1001 || true
grep "^stream " "$tmp.ids" | head -n 1000 | cut -d" " -f2 |
xargs -r -n 100 sh -c 'for id; do printf "show sess %s; " "$id"; done; printf "\n"' sh |
while IFS= read -r line; do
  printf "%s\n" "$line" | socat -t 5 stdio "unix-connect:$sock"
done |
awk '/^0x[0-9a-f]+: / { id = $1; sub(/:$/, "", id) } /^  txn=/ { sub(/^  /, ""); print "stream " id " " $0 }'`

// ShowStreams returns the command that lists server's streams in backend
// for ParseStreams: tunnels by id, other streams with their HTTP states.
func (h HAProxy) ShowStreams(backend, server string) (Cmd, error) {
	if !manifests.HAProxyName.MatchString(backend) || !manifests.HAProxyName.MatchString(server) {
		return Cmd{}, fmt.Errorf("haproxy server %q/%q: names may hold letters, digits, _ . : -", backend, server)
	}
	if err := h.checkSocket(); err != nil {
		return Cmd{}, err
	}
	return named("haproxy-streams", showStreamsScript, h.Socket, backend, server), nil
}

// Streams counts one server's streams in HAProxy by what they wait for.
type Streams struct {
	// InFlight are requests the app has not answered yet (HAProxy waits
	// for the response to begin): a drain waits for these.
	InFlight int
	// Answering are responses being sent: a body in transfer or a stream
	// such as server-sent events. The app's own stop lets a response it
	// began finish or ends a stream; a drain does not wait for them.
	Answering int
	// Upgraded are tunnels: WebSockets and other upgraded connections,
	// which end only when a side closes them (the app does, as it stops).
	Upgraded int
}

// ParseStreams reads ShowStreams' output. A detail line whose response
// state is not one HAProxy names for an answered or tunnelled response
// counts as in flight: when in doubt, wait.
func ParseStreams(out []byte) (Streams, error) {
	var s Streams
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		kind, rest, _ := strings.Cut(line, " ")
		switch kind {
		case "":
		case "upgraded":
			s.Upgraded++
		case "stream":
			_, txn, _ := strings.Cut(rest, " ")
			switch state := txnField(txn, "rsp.st"); {
			case state == "MSG_TUNNEL":
				s.Upgraded++
			case answered[state] && txnField(txn, "status") != "-1":
				s.Answering++
			default:
				s.InFlight++
			}
		default:
			return Streams{}, fmt.Errorf("haproxy streams: unreadable line %q", line)
		}
	}
	return s, nil
}

// answered are the response states of HAProxy's HTTP messages (its
// h1_msg_state names) once the response's headers went out.
var answered = map[string]bool{
	"MSG_BODY": true, "MSG_DATA": true, "MSG_CHUNK_SIZE": true, "MSG_CHUNK_CRLF": true,
	"MSG_TRAILERS": true, "MSG_ENDING": true, "MSG_DONE": true, "MSG_CLOSING": true, "MSG_CLOSED": true,
}

// txnField returns the value of "name=value" among txn's space-separated
// fields, "" when absent.
func txnField(txn, name string) string {
	for f := range strings.FieldsSeq(txn) {
		if v, ok := strings.CutPrefix(f, name+"="); ok {
			return v
		}
	}
	return ""
}
