package hosts

import (
	"net"
	"strconv"
)

// Target is a host the operator reaches over SSH. It is this package's own
// small value so that hosts does not depend on the manifest's API; the
// wiring layer converts manifest hosts into it.
type Target struct {
	// Name is the host's key in the manifest (build, nyc, ...): how errors,
	// logs and results name it.
	Name string
	// Address is a host name or IP address.
	Address string
	// Port is sshd's port; 0 means 22.
	Port int
	// User is the remote user.
	User string
}

// Addr returns host:port as dialled and as looked up in known_hosts.
func (t Target) Addr() string {
	port := t.Port
	if port == 0 {
		port = 22
	}
	return net.JoinHostPort(t.Address, strconv.Itoa(port))
}

// String returns the name when there is one, else user@host:port.
func (t Target) String() string {
	if t.Name != "" {
		return t.Name
	}
	return t.key()
}

// key identifies the connection a Pool keeps for t: two names for the same
// user@host:port share it.
func (t Target) key() string { return t.User + "@" + t.Addr() }
