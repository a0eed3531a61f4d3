package hosts

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// LogSink receives a command's output line by line as it runs, such as a
// deploy's live log page. stream is "stdout" or "stderr". Lines are bytes
// from the host and need not be UTF-8. Calls for one command's two streams
// come from two goroutines.
type LogSink interface {
	Line(host, stream, line string)
}

// Exec says where a command's bytes come from and where they go.
type Exec struct {
	// Step names what the command is for (build, migrate, stage) in logs.
	Step string
	// Stdin, when set, is copied to the command's standard input, then
	// closed. A command with no Stdin reads nothing (/dev/null).
	Stdin io.Reader
	// Stdout, when set, receives standard output as raw bytes instead of
	// the sink and log: for data such as an artifact or a listing.
	Stdout io.Writer
	// Sink, when set, receives output lines (stdout unless Stdout is set,
	// and stderr always).
	Sink LogSink
}

const (
	// maxLine bounds one output line; a longer one is cut into pieces so a
	// command printing without newlines cannot grow memory without limit.
	maxLine = 64 << 10
	// stderrTail is how much of stderr a CommandError keeps.
	stderrTail = 4 << 10
	// maxOutput bounds what Output collects.
	maxOutput = 16 << 20
)

// watchdog runs before a command that gets no stdin. It keeps the session's
// stdin on fd 3, gives the command /dev/null, and leaves a background shell
// that waits for stdin to end. The operator writes nothing to that stdin
// but the environment line, which envReader has read before the watchdog
// starts, and closes it only to cancel; sshd closes it too when the
// connection dies. If the command is still running then, the watchdog
// sends TERM, then KILL after the grace period, to the session's process
// group (the login shell, which becomes the command, leads it). Its
// command line is the whole session's for as long as it lives, which is
// why no value of the command's environment is on it (Cmd.String).
// Signal requests alone do not do: OpenSSH does not kill a session's
// processes when the client goes away, and refuses signal requests in
// some set-ups (OpenSSH 9.2 logged in as root: "session signalling
// requires privilege separation"). A command that ended on its own is
// never touched, nor what it left running.
const watchdog = `exec 3<&0 </dev/null; { trap "" TERM INT HUP; while read -r _ <&3; do :; done; if kill -0 $$; then kill -s TERM 0; sleep %d; kill -s KILL 0; fi; } >/dev/null 2>&1 & exec 3<&-; `

// pgidMarker starts the first stderr line of a command that reads stdin:
// the login shell's PID, which is the session's process group. Such a
// command's stdin is data, so its end cannot mean "cancel"; to cancel it
// the operator kills the group from a second session (killScript).
const pgidMarker = "operator-pgid "

const pgidReport = `printf "%s%s\n" "` + pgidMarker + `" $$ >&2; `

const killScript = `kill -"$1" -"$2" 2>/dev/null; exit 0`

// Run runs c on t and waits for it. Output streams line by line to e.Sink
// and to the logger (debug level, keys host, step, stream) as it comes.
//
// It returns nil when c exits 0; a *CommandError when c ran and failed; a
// *ConnError when t could not be reached or the connection dropped; and the
// context's error (wrapped) when ctx ended first. On cancellation the
// command gets SIGTERM, then SIGKILL after StopGrace, its session is
// closed and its whole process group is gone when Run returns, as far as
// the host can still be reached.
func (p *Pool) Run(ctx context.Context, t Target, c Cmd, e Exec) error {
	host := t.String()
	if err := c.Validate(); err != nil {
		return fmt.Errorf("run %s on %s: %w", c.Redacted(), host, err)
	}
	cl, err := p.client(t)
	if err != nil {
		return &ConnError{Host: host, Addr: t.Addr(), Op: "open session", Err: err}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sess, cn, release, err := cl.session(ctx)
	if err != nil {
		return err
	}
	defer release()
	defer sess.Close()

	log := p.log.With("host", host, "step", e.Step)
	emit := func(stream string) func(string) {
		return func(line string) {
			if e.Sink != nil {
				e.Sink.Line(host, stream, line)
			}
			if log.Enabled(ctx, slog.LevelDebug) {
				log.LogAttrs(ctx, slog.LevelDebug, line, slog.String("stream", stream))
			}
		}
	}
	errLines := &lineWriter{emit: emit("stderr")}
	tail := &tailBuffer{max: stderrTail}
	stderr := newPgidSniffer(io.MultiWriter(errLines, tail), e.Stdin == nil)
	sess.Stderr = stderr
	var outLines *lineWriter
	if e.Stdout != nil {
		// A writer that fails stops x/crypto from draining the channel, and
		// the remote command would block for ever: cancel it instead.
		sess.Stdout = &cancelOnError{w: e.Stdout, cancel: cancel}
	} else {
		outLines = &lineWriter{emit: emit("stdout")}
		sess.Stdout = outLines
	}
	pipe, err := sess.StdinPipe()
	if err != nil {
		return cl.connErr("open session", err)
	}
	stdin := &sessionInput{w: pipe}

	// The environment travels on stdin, read first (envReader): on the
	// command line it would show in ps for as long as the watchdog, a fork
	// of the shell sshd starts with that line, lives.
	env := c.envLine()
	reader := ""
	if env != "" {
		reader = envReader
	}
	var line string
	if e.Stdin == nil {
		line = reader + fmt.Sprintf(watchdog, int(math.Ceil(p.cfg.StopGrace.Seconds()))) + c.String()
	} else {
		line = pgidReport + reader + c.String()
	}
	start := time.Now()
	log.Debug("run", "cmd", c.Redacted())
	if err := sess.Start(line); err != nil {
		return cl.connErr("run", err)
	}
	src := &readErr{r: e.Stdin}
	stdinDone := make(chan struct{})
	if e.Stdin != nil || env != "" {
		go func() {
			defer close(stdinDone)
			if env != "" {
				if _, err := io.WriteString(stdin, env); err != nil {
					return // the session ended: its status tells why
				}
			}
			if e.Stdin == nil {
				return // kept open: its end is the watchdog's cue
			}
			io.Copy(stdin, src) // a write error means the command stopped reading: its status tells why
			stdin.Close()       // EOF: the input is complete (or the command's checks will see it is not)
		}()
	}
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		p.stop(cl, cn, sess, stdin, done, stderr, e.Stdin != nil)
		log.Debug("stopped", "duration", time.Since(start), "err", context.Cause(ctx))
		return fmt.Errorf("run %s on %s: %w", c.Redacted(), host, context.Cause(ctx))
	}
	stdin.Close()
	stderr.flush()
	errLines.flush()
	if outLines != nil {
		outLines.flush()
	}
	log.Debug("ran", "duration", time.Since(start), "err", err)

	if cause := context.Cause(ctx); err != nil && cause != nil {
		return fmt.Errorf("run %s on %s: %w", c.Redacted(), host, cause) // the output writer failed
	}
	var exitErr *ssh.ExitError
	var missing *ssh.ExitMissingError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		ce := &CommandError{Host: host, Cmd: c.Redacted(), ExitCode: exitErr.ExitStatus(), Signal: exitErr.Signal(), Stderr: tail.String(), Err: err}
		if ce.Signal != "" {
			ce.ExitCode = -1
		}
		err = ce
	case errors.As(err, &missing):
		// x/crypto reports a missing status also when the connection
		// dropped (the channel's requests end either way); a dying
		// connection is noticed within moments.
		select {
		case <-cn.done:
			err = cl.connErr("run", fmt.Errorf("connection lost while %s ran: %w", c.Redacted(), err))
		case <-time.After(250 * time.Millisecond):
			err = &CommandError{Host: host, Cmd: c.Redacted(), ExitCode: -1, Stderr: tail.String(), Err: err}
		}
	default:
		err = cl.connErr("run", err)
	}
	select {
	case <-stdinDone:
		if src.err != nil {
			err = errors.Join(err, fmt.Errorf("read stdin for %s on %s: %w", c.Redacted(), host, src.err))
		}
	default:
	}
	return err
}

// stop ends a session whose context ended: SIGTERM, then SIGKILL when the
// command outlives the grace period, then close. Each signal goes as a
// signal request (killpg on OpenSSH that honours it) and, for a command that
// reads stdin, as a kill of its process group from a second session; the
// end of stdin is the watchdog's cue for a command that does not. It waits
// a moment after SIGKILL so that the command is gone when Run returns, but
// never long: a dead connection delivers nothing (keepalives deal with it).
func (p *Pool) stop(cl *client, cn *conn, sess *ssh.Session, stdin io.Closer, done <-chan error, stderr *pgidSniffer, readsStdin bool) {
	var pgid string
	if readsStdin {
		pgid = stderr.group(time.Second)
	}
	signal := func(sig ssh.Signal) {
		_ = sess.Signal(sig)
		if pgid != "" {
			go p.killGroup(cl, cn, pgid, sig)
		}
	}
	signal(ssh.SIGTERM)
	stdin.Close()
	grace := time.NewTimer(p.cfg.StopGrace)
	defer grace.Stop()
	select {
	case <-done:
		return
	case <-grace.C:
	}
	signal(ssh.SIGKILL)
	select {
	case <-done:
	case <-time.After(time.Second):
	}
}

// killGroup sends sig to process group pgid on cn's host from a session of
// its own. It takes no session slot: it runs while the command it stops
// still holds one, and the server allows a few more than the pool uses.
func (p *Pool) killGroup(cl *client, cn *conn, pgid string, sig ssh.Signal) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	sess, err := newSession(ctx, cn)
	if err != nil {
		p.log.Warn("kill a cancelled command", "host", cl.target.String(), "err", err)
		return
	}
	defer sess.Close()
	kill := script(killScript, string(sig), pgid).String()
	done := make(chan error, 1)
	go func() { done <- sess.Run(kill) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		p.log.Warn("kill a cancelled command", "host", cl.target.String(), "err", err)
	}
}

// Output runs c on t and returns its standard output (at most 16 MiB);
// stderr goes to the log and into a *CommandError.
func (p *Pool) Output(ctx context.Context, t Target, c Cmd) ([]byte, error) {
	var out limitBuffer
	err := p.Run(ctx, t, c, Exec{Stdout: &out})
	return out.Bytes(), err
}

// pgidSniffer takes the pgidMarker line off the start of stderr and passes
// the rest on to w. With skip it passes everything.
type pgidSniffer struct {
	w    io.Writer
	skip bool

	mu       sync.Mutex
	head     []byte // stderr until the first newline, while looking
	pgid     string
	resolved chan struct{} // closed once the first line is read
	once     sync.Once
}

func newPgidSniffer(w io.Writer, skip bool) *pgidSniffer {
	return &pgidSniffer{w: w, skip: skip, resolved: make(chan struct{})}
}

func (s *pgidSniffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.skip {
		return s.w.Write(p)
	}
	s.head = append(s.head, p...)
	i := bytes.IndexByte(s.head, '\n')
	if i < 0 && len(s.head) < 64 {
		return len(p), nil
	}
	rest := s.head
	if i >= 0 {
		if id, ok := strings.CutPrefix(string(s.head[:i]), pgidMarker); ok && isDigits(id) {
			s.pgid, rest = id, s.head[i+1:]
		}
	}
	s.skip, s.head = true, nil
	s.once.Do(func() { close(s.resolved) })
	if len(rest) > 0 {
		s.w.Write(rest)
	}
	return len(p), nil
}

// flush passes on what was held back, for a command that ended first.
func (s *pgidSniffer) flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.head) > 0 {
		s.w.Write(s.head)
	}
	s.skip, s.head = true, nil
	s.once.Do(func() { close(s.resolved) })
}

// group returns the process group the command reported, waiting up to wait
// for the report of a command that has just started; "" without one.
func (s *pgidSniffer) group(wait time.Duration) string {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-s.resolved:
	case <-t.C:
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pgid
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// lineWriter cuts a stream into lines for emit, without the newline (and
// without a carriage return before it).
type lineWriter struct {
	emit func(string)
	buf  []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.buf = append(w.buf, p...)
			if len(w.buf) >= maxLine {
				w.emit(string(w.buf))
				w.buf = w.buf[:0]
			}
			break
		}
		w.buf = append(w.buf, p[:i]...)
		w.emit(strings.TrimSuffix(string(w.buf), "\r"))
		w.buf = w.buf[:0]
		p = p[i+1:]
	}
	return n, nil
}

// flush emits a last line that had no newline.
func (w *lineWriter) flush() {
	if len(w.buf) > 0 {
		w.emit(strings.TrimSuffix(string(w.buf), "\r"))
		w.buf = w.buf[:0]
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// limitBuffer is a bytes.Buffer that refuses to grow beyond maxOutput.
type limitBuffer struct{ bytes.Buffer }

func (b *limitBuffer) Write(p []byte) (int, error) {
	if b.Len()+len(p) > maxOutput {
		return 0, errors.New("output exceeds " + strconv.Itoa(maxOutput>>20) + " MiB")
	}
	return b.Buffer.Write(p)
}

// readErr keeps the error of a reader other than io.EOF, to tell a source
// that failed from a command that stopped reading.
type readErr struct {
	r   io.Reader
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

// cancelOnError passes writes to w and cancels the command at w's first
// error, with that error as the cause.
type cancelOnError struct {
	w      io.Writer
	cancel context.CancelCauseFunc
}

func (c *cancelOnError) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if err != nil {
		c.cancel(fmt.Errorf("write output: %w", err))
	}
	return n, err
}

// sessionInput is a session's stdin for its one writer (the copy of a
// command's input) and for Run and stop, which end it: x/crypto's channel
// is safe neither for two CloseWrites nor for one beside a Write (each
// touches its sentEOF unlocked; go test -race reported both). It closes
// once, and never during a write: a Close that comes while a write is in
// flight leaves the close to that write, when it returns, so Close never
// waits on a peer that does not read; every later write fails.
type sessionInput struct {
	w io.WriteCloser

	mu      sync.Mutex
	writing bool
	closing bool // Close was called
	closed  bool // w was closed
}

func (s *sessionInput) Write(p []byte) (int, error) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return 0, io.ErrClosedPipe
	}
	s.writing = true
	s.mu.Unlock()
	n, err := s.w.Write(p)
	s.mu.Lock()
	s.writing = false
	late := s.closing && !s.closed
	s.closed = s.closed || late
	s.mu.Unlock()
	if late {
		s.w.Close()
	}
	return n, err
}

func (s *sessionInput) Close() error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil
	}
	s.closing = true
	if s.writing {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	return s.w.Close()
}
