package hosts

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Config configures a Pool.
type Config struct {
	// Identity is the path of a private key, offered first. A key with a
	// passphrase is used through the agent when the agent holds it.
	Identity string
	// AgentSocket is the path of an ssh-agent socket, usually
	// $SSH_AUTH_SOCK (the wiring layer reads the environment, not this
	// package). Its keys are offered after Identity.
	AgentSocket string
	// KnownHosts is the path of the known_hosts file every host key is
	// verified against. It is read at every dial, so keys added later count.
	KnownHosts string
	// Jump is a bastion every other target is reached through; its own key
	// is verified too. An empty Jump.User means the target's user.
	Jump *Target
	// Logger receives connection events and command output (debug level);
	// nil discards them.
	Logger *slog.Logger
	// DialTimeout bounds the TCP connect and the SSH handshake together;
	// 0 means 15s.
	DialTimeout time.Duration
	// KeepAlive is how often an idle connection is probed, and how long a
	// probe may take before the connection is declared dead; 0 means 15s.
	KeepAlive time.Duration
	// MaxSessions bounds the sessions open at once on one connection;
	// OpenSSH allows 10 by default (MaxSessions). 0 means 8.
	MaxSessions int
	// StopGrace is how long a cancelled command has between SIGTERM and
	// SIGKILL; 0 means 2s.
	StopGrace time.Duration
}

// Pool runs commands on hosts over one SSH connection per user@host:port,
// dialled at first use, probed by keepalives and dialled again when it dies.
// It is safe for concurrent use.
type Pool struct {
	cfg Config
	log *slog.Logger

	signer      ssh.Signer    // parsed Identity, nil when absent or encrypted
	identityPub ssh.PublicKey // public half of an encrypted Identity

	mu      sync.Mutex
	clients map[string]*client
	closed  bool
}

// NewPool checks cfg (the identity parses, known_hosts parses, some key is
// available) and returns a pool that has not dialled anything yet.
func NewPool(cfg Config) (*Pool, error) {
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 15 * time.Second
	}
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = 15 * time.Second
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = 8
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 2 * time.Second
	}
	p := &Pool{cfg: cfg, log: cfg.Logger, clients: map[string]*client{}}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if cfg.KnownHosts == "" {
		return nil, errors.New("ssh: known_hosts is required: host keys are always verified")
	}
	if _, err := knownhosts.New(cfg.KnownHosts); err != nil {
		return nil, fmt.Errorf("read known_hosts %s: %w", cfg.KnownHosts, err)
	}
	if cfg.Identity != "" {
		pem, err := os.ReadFile(cfg.Identity)
		if err != nil {
			return nil, fmt.Errorf("read identity %s: %w", cfg.Identity, err)
		}
		signer, err := ssh.ParsePrivateKey(pem)
		var missing *ssh.PassphraseMissingError
		switch {
		case errors.As(err, &missing) && missing.PublicKey != nil && cfg.AgentSocket != "":
			p.identityPub = missing.PublicKey
		case err != nil:
			return nil, fmt.Errorf("parse identity %s: %w", cfg.Identity, err)
		default:
			p.signer = signer
		}
	}
	if p.signer == nil && cfg.AgentSocket == "" {
		return nil, errors.New("ssh: no identity and no agent socket: nothing to authenticate with")
	}
	return p, nil
}

// Close closes every connection. Commands running on them fail with a
// *ConnError; later calls fail at once.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	clients := p.clients
	p.clients = map[string]*client{}
	p.mu.Unlock()
	for _, c := range clients {
		c.close()
	}
	return nil
}

var errPoolClosed = errors.New("pool is closed")

// client returns the pool's client for t, making it on first use.
func (p *Pool) client(t Target) (*client, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errPoolClosed
	}
	c := p.clients[t.key()]
	if c == nil {
		c = &client{
			p:      p,
			target: t,
			sem:    make(chan struct{}, p.cfg.MaxSessions),
			dialMu: make(chan struct{}, 1),
		}
		p.clients[t.key()] = c
	}
	return c, nil
}

// client is the pool's state for one user@host:port.
type client struct {
	p      *Pool
	target Target
	sem    chan struct{} // one token per open session
	dialMu chan struct{} // held while dialling; a channel so waiting honours ctx

	mu  sync.Mutex
	cur *conn // nil until dialled and after it died

	dials  atomic.Int32 // connections made, for tests
	active atomic.Int32 // sessions open now
	peak   atomic.Int32 // most sessions open at once, for tests
}

// conn is one live SSH connection.
type conn struct {
	*ssh.Client
	key  ssh.PublicKey // the host key it presented, verified
	done chan struct{} // closed when the connection has ended
}

func (cn *conn) dead() bool {
	select {
	case <-cn.done:
		return true
	default:
		return false
	}
}

// ping sends one keepalive@openssh.com request and waits for any answer (a
// refusal is an answer): a half-open TCP connection never answers, and the
// send alone would not notice.
func (cn *conn) ping(timeout time.Duration) error {
	errc := make(chan error, 1)
	go func() {
		_, _, err := cn.SendRequest("keepalive@openssh.com", true, nil)
		errc <- err
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-errc:
		return err
	case <-cn.done:
		return errors.New("connection closed")
	case <-t.C:
		return fmt.Errorf("no answer to keepalive within %v", timeout)
	}
}

// get returns the live connection, dialling when there is none.
func (c *client) get(ctx context.Context) (*conn, error) {
	c.mu.Lock()
	cur := c.cur
	c.mu.Unlock()
	if cur != nil && !cur.dead() {
		return cur, nil
	}
	select {
	case c.dialMu <- struct{}{}:
	case <-ctx.Done():
		return nil, c.connErr("dial", ctx.Err())
	}
	defer func() { <-c.dialMu }()
	c.mu.Lock()
	cur = c.cur
	c.mu.Unlock()
	if cur != nil && !cur.dead() {
		return cur, nil // another caller dialled while we waited
	}
	cn, err := c.p.dial(ctx, c.target)
	if err != nil {
		return nil, err
	}
	c.p.mu.Lock()
	closed := c.p.closed
	c.p.mu.Unlock()
	if closed { // Close ran while we dialled: nothing would close this one
		cn.Close()
		return nil, c.connErr("dial", errPoolClosed)
	}
	c.mu.Lock()
	c.cur = cn
	c.mu.Unlock()
	c.dials.Add(1)
	go c.watch(cn)
	return cn, nil
}

// watch forgets cn when it ends, and ends it when a keepalive goes
// unanswered, so the next use dials again instead of hanging on a dead peer.
func (c *client) watch(cn *conn) {
	go func() {
		err := cn.Wait()
		close(cn.done)
		c.forget(cn)
		c.p.log.Debug("connection closed", "host", c.target.String(), "err", err)
	}()
	tick := time.NewTicker(c.p.cfg.KeepAlive)
	defer tick.Stop()
	for {
		select {
		case <-cn.done:
			return
		case <-tick.C:
		}
		if err := cn.ping(c.p.cfg.KeepAlive); err != nil {
			if !cn.dead() {
				c.p.log.Warn("connection lost, will dial again at next use", "host", c.target.String(), "err", err)
			}
			c.forget(cn)
			cn.Close()
			return
		}
	}
}

// forget drops cn if it is still the current connection.
func (c *client) forget(cn *conn) {
	c.mu.Lock()
	if c.cur == cn {
		c.cur = nil
	}
	c.mu.Unlock()
}

func (c *client) close() {
	c.mu.Lock()
	cur := c.cur
	c.cur = nil
	c.mu.Unlock()
	if cur != nil {
		cur.Close()
	}
}

func (c *client) connErr(op string, err error) *ConnError {
	return &ConnError{Host: c.target.String(), Addr: c.target.Addr(), Op: op, Err: err}
}

// session opens a session on the live connection, waiting for one of the
// MaxSessions slots. A connection that fails to open a session for any
// reason but the server's refusal is dead, even if nothing noticed yet: it
// is dropped and dialled once more. release must be called when the session
// is closed.
func (c *client) session(ctx context.Context) (_ *ssh.Session, _ *conn, release func(), _ error) {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, nil, nil, c.connErr("open session", ctx.Err())
	}
	n := c.active.Add(1)
	for {
		p := c.peak.Load()
		if n <= p || c.peak.CompareAndSwap(p, n) {
			break
		}
	}
	release = func() {
		c.active.Add(-1)
		<-c.sem
	}
	for attempt := 1; ; attempt++ {
		cn, err := c.get(ctx)
		if err != nil {
			release()
			return nil, nil, nil, err
		}
		sess, err := newSession(ctx, cn)
		if err == nil {
			return sess, cn, release, nil
		}
		var refused *ssh.OpenChannelError
		if errors.As(err, &refused) || ctx.Err() != nil || attempt == 2 {
			release()
			return nil, nil, nil, c.connErr("open session", err)
		}
		c.p.log.Info("connection dead at session open, dialling again", "host", c.target.String(), "attempt", attempt, "err", err)
		c.forget(cn)
		cn.Close()
	}
}

// newSession is cn.NewSession bounded by ctx: opening a channel on a dead
// peer waits for an answer that never comes.
func newSession(ctx context.Context, cn *conn) (*ssh.Session, error) {
	type result struct {
		s   *ssh.Session
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := cn.NewSession()
		ch <- result{s, err}
	}()
	select {
	case r := <-ch:
		return r.s, r.err
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.s != nil {
				r.s.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// dial connects to t, directly or through the jump host, verifies its host
// key and authenticates, all within DialTimeout and ctx.
func (p *Pool) dial(ctx context.Context, t Target) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
	defer cancel()
	addr := t.Addr()
	fail := func(op string, err error) error {
		return &ConnError{Host: t.String(), Addr: addr, Op: op, Err: err}
	}

	var nc net.Conn
	if j := p.jumpFor(t); j != nil {
		bastion, err := p.client(*j)
		if err != nil {
			return nil, fail("dial", err)
		}
		bc, err := bastion.get(ctx)
		if err != nil {
			return nil, fail("dial", fmt.Errorf("through jump host: %w", err))
		}
		nc, err = bc.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, fail("dial", fmt.Errorf("through jump host %s: %w", j, err))
		}
	} else {
		var d net.Dialer
		var err error
		nc, err = d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, fail("dial", err)
		}
	}

	hostKeys, err := knownhosts.New(p.cfg.KnownHosts)
	if err != nil {
		nc.Close()
		return nil, fail("handshake", fmt.Errorf("read known_hosts %s: %w", p.cfg.KnownHosts, err))
	}
	var presented ssh.PublicKey
	auth, closeAgent := p.auth()
	defer closeAgent()
	cfg := &ssh.ClientConfig{
		User: t.User,
		Auth: auth,
		HostKeyCallback: func(hostname string, remote net.Addr, key ssh.PublicKey) error {
			err := hostKeys(hostname, remote, key)
			var ke *knownhosts.KeyError
			if errors.As(err, &ke) {
				if len(ke.Want) == 0 {
					return &UnknownHostKeyError{Host: t.String(), Addr: hostname, Key: key}
				}
				return &HostKeyChangedError{Host: t.String(), Addr: hostname, Key: key, Want: ke.Want}
			}
			if err == nil {
				presented = key
			}
			return err
		},
		HostKeyAlgorithms: knownAlgorithms(hostKeys, addr),
		ClientVersion:     "SSH-2.0-operator",
	}

	// ClientConfig.Timeout covers only the TCP connect (golang/go#51926):
	// the deadline bounds a handshake that stalls, and closing the conn
	// aborts it when ctx ends. A channel through a jump host takes no
	// deadline, so only the close applies there.
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	sc, chans, reqs, err := ssh.NewClientConn(nc, addr, cfg)
	if !stop() {
		if err == nil {
			sc.Close()
		}
		return nil, fail("handshake", errors.Join(ctx.Err(), err))
	}
	if err != nil {
		nc.Close()
		return nil, fail("handshake", err)
	}
	_ = nc.SetDeadline(time.Time{})
	p.log.Debug("connected", "host", t.String())
	return &conn{Client: ssh.NewClient(sc, chans, reqs), key: presented, done: make(chan struct{})}, nil
}

// jumpFor returns the jump host to reach t through, nil for a direct dial
// (no jump host, or t is the jump host).
func (p *Pool) jumpFor(t Target) *Target {
	if p.cfg.Jump == nil {
		return nil
	}
	j := *p.cfg.Jump
	if j.User == "" {
		j.User = t.User
	}
	if j.key() == t.key() {
		return nil
	}
	if j.Name == "" {
		j.Name = "jump host " + j.Addr()
	}
	return &j
}

// auth offers Identity first and then the agent's keys (an agent holding
// many keys would otherwise exhaust the server's MaxAuthTries before the
// right one). The agent connection lives for one handshake.
func (p *Pool) auth() ([]ssh.AuthMethod, func()) {
	var signers []ssh.Signer
	if p.signer != nil {
		signers = append(signers, p.signer)
	}
	closeAgent := func() {}
	if p.cfg.AgentSocket != "" {
		ac, err := net.Dial("unix", p.cfg.AgentSocket)
		if err != nil {
			p.log.Warn("ssh-agent unreachable, using the identity file only", "err", err)
		} else {
			closeAgent = func() { ac.Close() }
			agentSigners, err := agent.NewClient(ac).Signers()
			if err != nil {
				p.log.Warn("ssh-agent keys unreadable, using the identity file only", "err", err)
			}
			var first, rest []ssh.Signer
			for _, s := range agentSigners {
				blob := s.PublicKey().Marshal()
				switch {
				case p.signer != nil && bytes.Equal(blob, p.signer.PublicKey().Marshal()):
					// the identity file's key, already offered
				case p.identityPub != nil && bytes.Equal(blob, p.identityPub.Marshal()):
					first = append(first, s)
				default:
					rest = append(rest, s)
				}
			}
			signers = append(append(signers, first...), rest...)
		}
	}
	return []ssh.AuthMethod{ssh.PublicKeys(signers...)}, closeAgent
}

// knownAlgorithms lists the host key algorithms of the keys known_hosts has
// for addr, so the server is asked for a key we can verify: x/crypto would
// otherwise ask for ECDSA or RSA first and fail against a stored ed25519 key
// (golang/go#29286). It asks the callback with a key no entry can match and
// reads the known keys from the error. With no known key it returns nil (the
// defaults), so the handshake reaches the callback and reports an unknown
// host with the key the host presents.
func knownAlgorithms(hostKeys ssh.HostKeyCallback, addr string) []string {
	err := hostKeys(addr, &net.TCPAddr{}, probeKey{})
	var ke *knownhosts.KeyError
	if !errors.As(err, &ke) {
		return nil
	}
	var algos []string
	add := func(names ...string) {
		for _, n := range names {
			if !slices.Contains(algos, n) {
				algos = append(algos, n)
			}
		}
	}
	for _, k := range ke.Want {
		switch t := k.Key.Type(); t {
		case ssh.KeyAlgoRSA:
			add(ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		default:
			add(t)
		}
	}
	return algos
}

// probeKey is a public key no known_hosts line holds.
type probeKey struct{}

func (probeKey) Type() string                        { return "operator-probe" }
func (probeKey) Marshal() []byte                     { return []byte("\x00\x00\x00\x0eoperator-probe") }
func (probeKey) Verify([]byte, *ssh.Signature) error { return errors.New("probe key verifies nothing") }
