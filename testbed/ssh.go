package testbed

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Dial opens an SSH connection to the host as root with the bed's client key,
// verifying the host key against the bed's known_hosts. It is the harness's
// plain client (the operator has its own); tests use it to prove the bed and
// to set hosts up as an administrator would.
func (h *Host) Dial(ctx context.Context) (*ssh.Client, error) {
	keyPEM, err := os.ReadFile(h.bed.ClientKey)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, err
	}
	check, err := knownhosts.New(h.bed.KnownHosts)
	if err != nil {
		return nil, err
	}
	cfg := &ssh.ClientConfig{
		User:            "root",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: check,
		// The bed's hosts have only ed25519 keys, and x/crypto would offer
		// ECDSA first (golang/go#29286).
		HostKeyAlgorithms: []string{ssh.KeyAlgoED25519},
		Timeout:           5 * time.Second,
	}
	addr := netip.AddrPortFrom(h.Addr, 22).String()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return ssh.NewClient(c, chans, reqs), nil
}

// Run runs script through the remote user's shell on client, with stdin (may
// be nil), and returns stdout and stderr. A non-zero exit is an error that
// carries the tail of stderr.
func Run(ctx context.Context, client *ssh.Client, script string, stdin io.Reader) (stdout, stderr string, err error) {
	var out bytes.Buffer
	stderr, err = session(ctx, client, script, stdin, &out)
	return out.String(), stderr, err
}

// session runs script on client with stdin (may be nil), writing its stdout
// to w as it comes, and returns its stderr. Cancelling ctx kills it.
func session(ctx context.Context, client *ssh.Client, script string, stdin io.Reader, w io.Writer) (string, error) {
	sess, err := client.NewSession()
	if err != nil {
		return "", err
	}
	defer sess.Close()
	var errb bytes.Buffer
	sess.Stdout, sess.Stderr, sess.Stdin = w, &errb, stdin
	done := make(chan error, 1)
	go func() { done <- sess.Run(script) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		sess.Signal(ssh.SIGKILL)
		sess.Close()
		err = ctx.Err()
	}
	if err != nil {
		return errb.String(), fmt.Errorf("%q: %w: %s", script, err, tail(errb.String(), 2000))
	}
	return errb.String(), nil
}
