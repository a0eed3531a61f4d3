package hosts

import (
	"encoding/csv"
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"
)

// HAProxy builds the commands that drive HAProxy's runtime API through its
// stats socket on the load-balancer host (`stats socket … level admin`),
// with socat as the client.
type HAProxy struct {
	// Socket is the absolute path of the admin socket.
	Socket string
}

// haproxyName is what a backend or server name may hold: HAProxy's own
// identifier characters, so no name can smuggle a second runtime command.
var haproxyName = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,64}$`)

const haproxyScript = `printf "%s\n" "$2" | socat -t 5 stdio "unix-connect:$1"`

func (h HAProxy) command(line string) (Cmd, error) {
	if !path.IsAbs(h.Socket) || strings.ContainsAny(h.Socket, ",:!\n\x00 ") {
		return Cmd{}, fmt.Errorf("haproxy socket %q: want an absolute path without , : ! or spaces", h.Socket)
	}
	return script(haproxyScript, h.Socket, line), nil
}

// SetState returns the command that sets server's admin state in backend:
// "drain" (no new sessions, current ones finish), "ready" or "maint".
func (h HAProxy) SetState(backend, server, state string) (Cmd, error) {
	if !haproxyName.MatchString(backend) || !haproxyName.MatchString(server) {
		return Cmd{}, fmt.Errorf("haproxy server %q/%q: names may hold letters, digits, _ . : -", backend, server)
	}
	switch state {
	case "drain", "ready", "maint":
	default:
		return Cmd{}, fmt.Errorf("haproxy state %q: want drain, ready or maint", state)
	}
	return h.command("set server " + backend + "/" + server + " state " + state)
}

// CheckSet reads what HAProxy answered a SetState command: nothing when it
// did it, else why not (such as "No such server."), as an error.
func CheckSet(out []byte) error {
	if reply := strings.TrimSpace(string(out)); reply != "" {
		return fmt.Errorf("haproxy refused: %s", firstLine(reply))
	}
	return nil
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
