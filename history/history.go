// Package history keeps the record of every deploy in state_dir: what
// triggered it, which commit, its phases and their durations, each node's
// outcome, the result, and its full log (every remote command and its
// output), plus the environment locks set by `operator lock`.
//
// It is one SQLite database, <state_dir>/operator.db, in WAL mode, so the
// CLI (`operator history`, `operator logs`) reads it while the daemon
// writes. A running deploy's log lines and record changes are queued and
// committed in batches by one writer goroutine per Store, off the deploy's
// path; Finish and Close wait for them.
package history

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver, pure Go
)

// Result is how a deploy ended.
type Result string

// Results. Running is a deploy not yet ended; Interrupted one whose operator
// died before it ended (found so at the next start).
const (
	Running     Result = "running"
	Success     Result = "success"
	Failure     Result = "failure" // a build, migration or check failed
	Error       Result = "error"   // the operator could not act
	Noop        Result = "noop"    // nothing to do: every node was on the commit
	Interrupted Result = "interrupted"
)

// Deploy is the record of one deploy.
type Deploy struct {
	ID          int64        `json:"id"`
	Env         string       `json:"env"`
	Commit      string       `json:"commit"`
	Subject     string       `json:"subject,omitempty"`
	Trigger     string       `json:"trigger"` // "manual", "poll", "webhook <delivery>", …
	Started     time.Time    `json:"started"`
	Ended       time.Time    `json:"ended,omitzero"`
	Result      Result       `json:"result"`
	Description string       `json:"description,omitempty"` // one line: what happened, or what failed where
	Phases      []Phase      `json:"phases,omitempty"`
	Nodes       []NodeResult `json:"nodes,omitempty"`
	// Spent adds up where the time went, by kind: "build step" (the
	// manifest's build commands), "stop", "start", "ping wait",
	// "membership wait", "health wait", "drain wait", "migrate". What is left of the
	// deploy's duration is the operator's own overhead.
	Spent map[string]time.Duration `json:"spent,omitempty"`
	PID   int                      `json:"pid,omitempty"` // the operator process running it
}

// Phase is one step of a deploy and how long it took.
type Phase struct {
	Name     string        `json:"name"`
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration"`
	Outcome  string        `json:"outcome,omitempty"` // "ok", "skipped: …", or the error
}

// NodeResult is what the deploy did to one node.
type NodeResult struct {
	Host    string `json:"host"`
	From    string `json:"from,omitempty"` // commit before
	To      string `json:"to,omitempty"`   // commit after
	Outcome string `json:"outcome"`        // "updated", "unchanged", "rolled back: …", "untouched"
}

// LogLine is one line of a deploy's log.
type LogLine struct {
	// Seq numbers the deploy's lines 1, 2, … in the order they were
	// stored; pass the last one seen to LogLines to read on.
	Seq  int64     `json:"seq"`
	Time time.Time `json:"time"`
	// Host is the manifest's host name; "" for the operator's lines about
	// the deploy as a whole.
	Host string `json:"host"`
	// Stream is where the line came from: a command's output stream, or
	// "op" for the operator's own lines.
	Stream string `json:"stream"`
	// Text is the line without its line ending. Bytes from a host need not
	// be UTF-8.
	Text string `json:"text"`
}

// ErrNotFound is returned for a deploy ID the history does not hold.
var ErrNotFound = errors.New("no such deploy")

// ErrClosed is returned by a Store, and the Recorders it began, after its
// Close.
var ErrClosed = errors.New("history closed")

// fileName is the database in state_dir.
const fileName = "operator.db"

// busyTimeout is how long a statement waits for another connection's
// write lock (the daemon's writer, the CLI's lock) before failing.
const busyTimeout = 5 * time.Second

// Store is the deploy history of one state_dir. It is safe for concurrent
// use; several Stores, in one process or several, may share a state_dir.
type Store struct {
	db *sql.DB

	writes chan write    // to the writer goroutine; never closed
	quit   chan struct{} // closed by Close
	exited chan struct{} // closed when the writer has committed everything and returned
	// drainErr is the error of the writer's last commit at Close; read
	// after exited.
	drainErr  error
	closeOnce sync.Once
	closeErr  error

	mu sync.Mutex
	// live holds the deploys begun by this Store and not yet ended: the
	// ones Subscribe can follow.
	live      map[int64]bool
	followers map[int64]map[*follower]struct{}
}

// Open opens the history in stateDir, creating the directory and the
// database when missing and bringing its schema up to date, and marks
// deploys left running by an operator process that is gone as interrupted,
// a predecessor that had this process's PID included.
// Close it when done: that commits the log lines still queued.
func Open(stateDir string) (*Store, error) {
	if err := os.MkdirAll(stateDir, 0o750); err != nil {
		return nil, fmt.Errorf("open history: %w", err)
	}
	path, err := filepath.Abs(filepath.Join(stateDir, fileName))
	if err != nil {
		return nil, fmt.Errorf("open history: %w", err)
	}
	// SQLite gives its -wal and -shm files the database's mode, so this
	// one mode keeps deploy logs from other users.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open history: %w", err)
	}
	f.Close()
	db, err := sql.Open("sqlite", dsn(path))
	if err != nil {
		return nil, fmt.Errorf("open history %s: %w", path, err)
	}
	// A connection costs a page cache; the writer, Begin and a few readers
	// (pages following live deploys) are all there is.
	db.SetMaxOpenConns(8)
	db.SetMaxIdleConns(4)
	if err := migrate(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open history %s: %w", path, err)
	}
	if err := markInterrupted(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open history %s: %w", path, err)
	}
	s := &Store{
		db:        db,
		writes:    make(chan write, queueLen),
		quit:      make(chan struct{}),
		exited:    make(chan struct{}),
		live:      map[int64]bool{},
		followers: map[int64]map[*follower]struct{}{},
	}
	go s.run()
	return s, nil
}

// dsn is the driver's name for the database at path: WAL so readers and
// the writer do not block each other; synchronous=NORMAL, which in WAL
// mode loses no commit when the process dies, only at a power cut, and
// saves an fsync per batch; transactions that take the write lock at
// BEGIN, so a read-then-write transaction cannot fail half-way on a lock.
func dsn(path string) string {
	q := url.Values{}
	q.Set("_busy_timeout", fmt.Sprint(busyTimeout.Milliseconds()))
	q.Set("_journal_mode", "WAL")
	q.Set("_synchronous", "NORMAL")
	q.Set("_foreign_keys", "1")
	q.Set("_txlock", "immediate")
	// A file: URI with the path escaped, so a '?' or '%' in state_dir is
	// part of the name.
	return (&url.URL{Scheme: "file", Path: path, RawQuery: q.Encode()}).String()
}

// interruptedDescription is the description of a deploy found running with
// its operator gone.
const interruptedDescription = "the operator stopped before this deploy ended; the next sync reconciles from the hosts"

// markInterrupted ends the deploys left running by an operator process
// that is gone. A deploy's end is its last stored log line, so its
// duration does not count the time the operator was down.
func markInterrupted(db *sql.DB) error {
	ids, err := deadRunning(db)
	if err != nil || len(ids) == 0 {
		return err
	}
	tx, err := db.Begin()
	if err != nil {
		return fmt.Errorf("mark interrupted deploys: %w", err)
	}
	defer tx.Rollback()
	for _, id := range ids {
		var started, last int64
		err := tx.QueryRow(`SELECT started, COALESCE((SELECT MAX(time) FROM log_lines WHERE deploy_id = deploys.id), 0) FROM deploys WHERE id = ? AND result = ?`, id, Running).Scan(&started, &last)
		if errors.Is(err, sql.ErrNoRows) {
			continue // another process got there first
		}
		if err != nil {
			return fmt.Errorf("mark deploy %d interrupted: %w", id, err)
		}
		ended := max(started, last)
		if _, err := tx.Exec(`UPDATE deploys SET result = ?, ended = ?, description = ? WHERE id = ?`, Interrupted, ended, interruptedDescription, id); err != nil {
			return fmt.Errorf("mark deploy %d interrupted: %w", id, err)
		}
		if _, err := tx.Exec(`INSERT INTO log_lines (deploy_id, seq, time, host, stream, line)
			SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, '', 'op', ? FROM log_lines WHERE deploy_id = ?`,
			id, time.Now().UnixNano(), fmt.Sprintf("result %s: %s", Interrupted, interruptedDescription), id); err != nil {
			return fmt.Errorf("mark deploy %d interrupted: %w", id, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("mark interrupted deploys: %w", err)
	}
	return nil
}

// deadRunning returns the running deploys whose operator process is gone:
// one whose PID no process has, or whose PID a later process has (see
// processIdentity).
// It only reads, so a CLI opening the history while the daemon deploys
// takes no write lock.
func deadRunning(db *sql.DB) ([]int64, error) {
	rows, err := db.Query(`SELECT id, pid, process FROM deploys WHERE result = ?`, Running)
	if err != nil {
		return nil, fmt.Errorf("find running deploys: %w", err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		var pid int
		var process string
		if err := rows.Scan(&id, &pid, &process); err != nil {
			return nil, fmt.Errorf("find running deploys: %w", err)
		}
		if !processAlive(pid, process) {
			ids = append(ids, id)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("find running deploys: %w", err)
	}
	return ids, nil
}

// Close commits the queued log lines and record changes, ends every
// Subscribe channel and closes the database. Deploys not finished stay
// running in the record; the next Open by another process marks them
// interrupted. Lines logged after Close are dropped and Finish returns
// ErrClosed.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.quit)
		<-s.exited
		err := s.drainErr
		if cerr := s.db.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close history: %w", cerr)
		}
		s.closeErr = err
	})
	return s.closeErr
}

// Begin records a new running deploy and returns its Recorder. The record
// is committed before Begin returns, so the deploy has its ID and is seen
// by every reader at once.
func (s *Store) Begin(env, commit, subject, trigger string) (*Recorder, error) {
	select {
	case <-s.quit:
		return nil, fmt.Errorf("begin deploy of %s: %w", commit, ErrClosed)
	default:
	}
	d := &Deploy{Env: env, Commit: commit, Subject: subject, Trigger: trigger, Started: time.Now(), Result: Running, PID: os.Getpid()}
	res, err := s.db.Exec(`INSERT INTO deploys (env, commit_sha, subject, trigger, started, result, pid, process) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		d.Env, d.Commit, d.Subject, d.Trigger, d.Started.UnixNano(), d.Result, d.PID, thisProcess())
	if err != nil {
		return nil, fmt.Errorf("begin deploy of %s: %w", commit, err)
	}
	if d.ID, err = res.LastInsertId(); err != nil {
		return nil, fmt.Errorf("begin deploy of %s: %w", commit, err)
	}
	s.mu.Lock()
	s.live[d.ID] = true
	s.mu.Unlock()
	return &Recorder{store: s, d: d}, nil
}

// Get returns deploy id. An unknown id is an error wrapping ErrNotFound.
// A deploy running in this process may lag its Recorder's Snapshot by one
// batch (about 50 ms).
func (s *Store) Get(id int64) (*Deploy, error) {
	ds, err := s.load(`SELECT id FROM deploys WHERE id = ?`, id)
	if err != nil {
		return nil, fmt.Errorf("get deploy %d: %w", id, err)
	}
	if len(ds) == 0 {
		return nil, fmt.Errorf("get deploy %d: %w", id, ErrNotFound)
	}
	return ds[0], nil
}

// List returns the newest deploys first, at most limit of them (all when
// limit <= 0).
func (s *Store) List(limit int) ([]*Deploy, error) {
	if limit <= 0 {
		limit = -1 // SQLite: no limit
	}
	ds, err := s.load(`SELECT id FROM deploys ORDER BY id DESC LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("list deploys: %w", err)
	}
	return ds, nil
}

// load returns the deploys whose IDs the query ids selects, newest first,
// with their phases, nodes and spent times, read in one snapshot.
func (s *Store) load(ids string, args ...any) ([]*Deploy, error) {
	tx, err := s.db.BeginTx(context.Background(), &sql.TxOptions{ReadOnly: true}) // a deferred BEGIN: no write lock
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	var out []*Deploy
	byID := map[int64]*Deploy{}
	err = query(tx, `SELECT id, env, commit_sha, subject, trigger, started, ended, result, description, pid
		FROM deploys WHERE id IN (`+ids+`) ORDER BY id DESC`, args, func(rows *sql.Rows) error {
		var d Deploy
		var started int64
		var ended sql.NullInt64
		if err := rows.Scan(&d.ID, &d.Env, &d.Commit, &d.Subject, &d.Trigger, &started, &ended, &d.Result, &d.Description, &d.PID); err != nil {
			return err
		}
		d.Started = time.Unix(0, started)
		if ended.Valid {
			d.Ended = time.Unix(0, ended.Int64)
		}
		out = append(out, &d)
		byID[d.ID] = &d
		return nil
	})
	if err != nil || len(out) == 0 {
		return out, err
	}
	err = query(tx, `SELECT deploy_id, name, started, duration, outcome FROM phases
		WHERE deploy_id IN (`+ids+`) ORDER BY deploy_id, seq`, args, func(rows *sql.Rows) error {
		var id, started, duration int64
		var p Phase
		if err := rows.Scan(&id, &p.Name, &started, &duration, &p.Outcome); err != nil {
			return err
		}
		p.Started, p.Duration = time.Unix(0, started), time.Duration(duration)
		if d := byID[id]; d != nil {
			d.Phases = append(d.Phases, p)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = query(tx, `SELECT deploy_id, host, from_commit, to_commit, outcome FROM nodes
		WHERE deploy_id IN (`+ids+`) ORDER BY deploy_id, seq`, args, func(rows *sql.Rows) error {
		var id int64
		var n NodeResult
		if err := rows.Scan(&id, &n.Host, &n.From, &n.To, &n.Outcome); err != nil {
			return err
		}
		if d := byID[id]; d != nil {
			d.Nodes = append(d.Nodes, n)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = query(tx, `SELECT deploy_id, kind, duration FROM spent WHERE deploy_id IN (`+ids+`)`, args, func(rows *sql.Rows) error {
		var id, duration int64
		var kind string
		if err := rows.Scan(&id, &kind, &duration); err != nil {
			return err
		}
		if d := byID[id]; d != nil {
			if d.Spent == nil {
				d.Spent = map[string]time.Duration{}
			}
			d.Spent[kind] = time.Duration(duration)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// query runs q and calls row for each row.
func query(tx *sql.Tx, q string, args []any, row func(*sql.Rows) error) error {
	rows, err := tx.Query(q, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := row(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// LogLines returns deploy id's log lines numbered above after, in order,
// at most limit of them (all when limit <= 0). A page following a live
// deploy calls it again with the last Seq it got; it sees the lines
// committed so far, at most about 50 ms behind the deploy. An unknown id
// is an error wrapping ErrNotFound.
func (s *Store) LogLines(id int64, after int64, limit int) ([]LogLine, error) {
	if limit <= 0 {
		limit = -1
	}
	rows, err := s.db.Query(`SELECT seq, time, host, stream, line FROM log_lines
		WHERE deploy_id = ? AND seq > ? ORDER BY seq LIMIT ?`, id, after, limit)
	if err != nil {
		return nil, fmt.Errorf("read log of deploy %d: %w", id, err)
	}
	defer rows.Close()
	var out []LogLine
	for rows.Next() {
		var l LogLine
		var t int64
		if err := rows.Scan(&l.Seq, &t, &l.Host, &l.Stream, &l.Text); err != nil {
			return nil, fmt.Errorf("read log of deploy %d: %w", id, err)
		}
		l.Time = time.Unix(0, t)
		out = append(out, l)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read log of deploy %d: %w", id, err)
	}
	if len(out) == 0 {
		if err := s.exists(id); err != nil {
			return nil, fmt.Errorf("read log of deploy %d: %w", id, err)
		}
	}
	return out, nil
}

// LogSpan is where a page of a deploy's log lies: the numbers of its first
// and last lines (both 0 for a page without any), and whether the log has
// lines before and after them.
type LogSpan struct {
	First, Last    int64
	Earlier, Later bool
}

// LogTail returns the span of the last n lines of deploy id's log numbered
// below before, or of the whole log when before <= 0 (all of them when
// n <= 0): a page that shows the end of a log, or the lines before those
// a reader has. Read its lines with LogLines from First-1 up to Last. It
// reads line numbers only, not lines, in one snapshot. An unknown id is an
// error wrapping ErrNotFound.
func (s *Store) LogTail(id, before int64, n int) (LogSpan, error) {
	span, err := s.logTail(id, before, n)
	if err != nil {
		return LogSpan{}, fmt.Errorf("read log of deploy %d: %w", id, err)
	}
	return span, nil
}

func (s *Store) logTail(id, before int64, n int) (LogSpan, error) {
	if before <= 0 {
		before = math.MaxInt64
	}
	tx, err := s.db.BeginTx(context.Background(), &sql.TxOptions{ReadOnly: true}) // a deferred BEGIN: no write lock
	if err != nil {
		return LogSpan{}, err
	}
	defer tx.Rollback()
	var span LogSpan
	var last sql.NullInt64
	if err := tx.QueryRow(`SELECT MAX(seq) FROM log_lines WHERE deploy_id = ? AND seq < ?`, id, before).Scan(&last); err != nil {
		return LogSpan{}, err
	}
	if !last.Valid {
		var one int
		err := tx.QueryRow(`SELECT 1 FROM deploys WHERE id = ?`, id).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return LogSpan{}, ErrNotFound
		}
		if err != nil {
			return LogSpan{}, err
		}
		err = tx.QueryRow(`SELECT EXISTS (SELECT 1 FROM log_lines WHERE deploy_id = ? AND seq >= ?)`, id, before).Scan(&span.Later)
		return span, err
	}
	span.Last = last.Int64
	// The nth line counting back from the last is the first; a line after
	// it in that order is an earlier one. With fewer than n lines, the
	// first is the log's.
	var seqs []int64
	if n > 0 {
		err = query(tx, `SELECT seq FROM log_lines WHERE deploy_id = ? AND seq <= ? ORDER BY seq DESC LIMIT 2 OFFSET ?`,
			[]any{id, span.Last, n - 1}, func(rows *sql.Rows) error {
				var seq int64
				err := rows.Scan(&seq)
				seqs = append(seqs, seq)
				return err
			})
		if err != nil {
			return LogSpan{}, err
		}
	}
	if len(seqs) > 0 {
		span.First, span.Earlier = seqs[0], len(seqs) > 1
	} else if err := tx.QueryRow(`SELECT MIN(seq) FROM log_lines WHERE deploy_id = ?`, id).Scan(&span.First); err != nil {
		return LogSpan{}, err
	}
	err = tx.QueryRow(`SELECT EXISTS (SELECT 1 FROM log_lines WHERE deploy_id = ? AND seq > ?)`, id, span.Last).Scan(&span.Later)
	return span, err
}

// exists returns nil when the history holds deploy id, or ErrNotFound.
func (s *Store) exists(id int64) error {
	var one int
	err := s.db.QueryRow(`SELECT 1 FROM deploys WHERE id = ?`, id).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound
	}
	return err
}

// Log returns deploy id's log as text, one line per log line:
// "15:04:05.000 host stream text" with the time in UTC and "-" for the
// host of the operator's lines about the whole deploy. It reads the lines
// committed when each page is read, a thousand at a time. An unknown id is
// an error wrapping ErrNotFound.
func (s *Store) Log(id int64) (io.ReadCloser, error) {
	if err := s.exists(id); err != nil {
		return nil, fmt.Errorf("read log of deploy %d: %w", id, err)
	}
	return &logReader{s: s, id: id}, nil
}

// logPage is how many lines a logReader reads at a time.
const logPage = 1000

// logReader renders a deploy's log lines as text, a page at a time.
type logReader struct {
	s     *Store
	id    int64
	after int64
	buf   bytes.Buffer
	done  bool
}

func (r *logReader) Read(p []byte) (int, error) {
	for r.buf.Len() == 0 {
		if r.done {
			return 0, io.EOF
		}
		lines, err := r.s.LogLines(r.id, r.after, logPage)
		if err != nil {
			return 0, err
		}
		r.done = len(lines) < logPage
		for _, l := range lines {
			appendText(&r.buf, l)
			r.after = l.Seq
		}
	}
	return r.buf.Read(p)
}

func (r *logReader) Close() error { return nil }

// appendText writes l as a line of text, in the format of `operator logs`.
func appendText(b *bytes.Buffer, l LogLine) {
	host := l.Host
	if host == "" {
		host = "-"
	}
	b.WriteString(l.Time.UTC().Format("15:04:05.000"))
	b.WriteByte(' ')
	b.WriteString(host)
	b.WriteByte(' ')
	b.WriteString(l.Stream)
	b.WriteByte(' ')
	b.WriteString(l.Text)
	b.WriteByte('\n')
}
