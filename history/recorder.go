package history

import (
	"database/sql"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"
)

// Recorder writes one running deploy's record and log. It is safe for
// concurrent use: nodes of a batch log at once. Its changes are queued for
// the Store's writer and committed in batches; Finish waits for them and
// reports the first that failed.
type Recorder struct {
	store *Store

	mu  sync.Mutex
	d   *Deploy
	err error // the first failed write of this deploy

	// Owned by the store's writer goroutine.
	seq   int64 // the last log line's number
	ended bool  // Finish's record is written; later writes are dropped
}

// ID is the deploy's ID.
func (r *Recorder) ID() int64 { return r.d.ID }

// Snapshot returns a copy of the record as it stands.
func (r *Recorder) Snapshot() Deploy {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := *r.d
	d.Phases = append([]Phase(nil), r.d.Phases...)
	d.Nodes = append([]NodeResult(nil), r.d.Nodes...)
	d.Spent = maps.Clone(r.d.Spent)
	return d
}

// Line appends one line of output to the log, tagged with its host ("" for
// the operator's lines about the whole deploy) and stream ("stdout",
// "stderr", or "op" for the operator's own lines); a trailing line ending
// is dropped.
//
// Line does not wait for the disk: it queues the line, and the Store's
// writer commits queued lines in batches. The queue holds 4096 writes; when
// the disk is so slow that it fills, Line blocks until the writer makes
// room, slowing the command whose output it is rather than growing memory
// or losing lines. Lines after Finish or the Store's Close are dropped.
// Line is safe to call from many goroutines at once, which makes a
// Recorder a hosts.LogSink; each goroutine's lines keep their order.
func (r *Recorder) Line(host, stream, line string) {
	r.store.enqueue(write{rec: r, line: LogLine{
		Time:   time.Now(),
		Host:   host,
		Stream: stream,
		Text:   strings.TrimRight(line, "\r\n"),
	}})
}

// Logf appends one line of the operator's own.
func (r *Recorder) Logf(host, format string, args ...any) {
	r.Line(host, "op", fmt.Sprintf(format, args...))
}

// Phase records a finished phase, and logs it.
func (r *Recorder) Phase(name string, started time.Time, outcome string) {
	p := Phase{Name: name, Started: started, Duration: time.Since(started), Outcome: outcome}
	r.mu.Lock()
	seq := len(r.d.Phases)
	r.d.Phases = append(r.d.Phases, p)
	r.mu.Unlock()
	id := r.d.ID
	r.store.enqueue(write{rec: r, exec: func(tx *sql.Tx) error {
		_, err := tx.Exec(`INSERT INTO phases (deploy_id, seq, name, started, duration, outcome) VALUES (?, ?, ?, ?, ?, ?)`,
			id, seq, p.Name, p.Started.UnixNano(), int64(p.Duration), p.Outcome)
		if err != nil {
			return fmt.Errorf("record phase %s of deploy %d: %w", p.Name, id, err)
		}
		return nil
	}})
	r.Logf("", "phase %s: %s (%v)", name, outcome, p.Duration.Round(time.Millisecond))
}

// Spend adds d to the time spent on kind.
func (r *Recorder) Spend(kind string, d time.Duration) {
	r.mu.Lock()
	if r.d.Spent == nil {
		r.d.Spent = map[string]time.Duration{}
	}
	r.d.Spent[kind] += d
	total := r.d.Spent[kind]
	r.mu.Unlock()
	id := r.d.ID
	r.store.enqueue(write{rec: r, exec: func(tx *sql.Tx) error {
		_, err := tx.Exec(`INSERT INTO spent (deploy_id, kind, duration) VALUES (?, ?, ?)
			ON CONFLICT (deploy_id, kind) DO UPDATE SET duration = excluded.duration`, id, kind, int64(total))
		if err != nil {
			return fmt.Errorf("record time spent on %s in deploy %d: %w", kind, id, err)
		}
		return nil
	}})
}

// Node records what happened to one node, replacing an earlier entry for it.
func (r *Recorder) Node(n NodeResult) {
	r.mu.Lock()
	seq := len(r.d.Nodes)
	for i := range r.d.Nodes {
		if r.d.Nodes[i].Host == n.Host {
			seq = i
			break
		}
	}
	if seq == len(r.d.Nodes) {
		r.d.Nodes = append(r.d.Nodes, n)
	} else {
		r.d.Nodes[seq] = n
	}
	r.mu.Unlock()
	id := r.d.ID
	r.store.enqueue(write{rec: r, exec: func(tx *sql.Tx) error {
		_, err := tx.Exec(`INSERT INTO nodes (deploy_id, host, seq, from_commit, to_commit, outcome) VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT (deploy_id, host) DO UPDATE SET from_commit = excluded.from_commit, to_commit = excluded.to_commit, outcome = excluded.outcome`,
			id, n.Host, seq, n.From, n.To, n.Outcome)
		if err != nil {
			return fmt.Errorf("record node %s of deploy %d: %w", n.Host, id, err)
		}
		return nil
	}})
}

// Finish records the result, logs it, and waits until everything the
// deploy logged and recorded is committed. It returns the first write of
// the deploy that failed, if any; the lines of a failed batch are lost,
// not retried. A deploy finishes once.
func (r *Recorder) Finish(result Result, description string) error {
	r.mu.Lock()
	if r.d.Result != Running {
		r.mu.Unlock()
		return fmt.Errorf("finish deploy %d: already finished: %s", r.d.ID, r.d.Result)
	}
	ended := time.Now()
	r.d.Result, r.d.Description, r.d.Ended = result, description, ended
	r.mu.Unlock()
	r.Logf("", "result %s: %s", result, description)
	id := r.d.ID
	queued := r.store.enqueue(write{rec: r, end: true, exec: func(tx *sql.Tx) error {
		_, err := tx.Exec(`UPDATE deploys SET result = ?, description = ?, ended = ? WHERE id = ?`, result, description, ended.UnixNano(), id)
		if err != nil {
			return fmt.Errorf("record result of deploy %d: %w", id, err)
		}
		return nil
	}})
	if !queued || !r.store.flush() {
		return fmt.Errorf("finish deploy %d: %w", id, ErrClosed)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return fmt.Errorf("finish deploy %d: %w", id, r.err)
	}
	return nil
}

// fail keeps err as the deploy's failure unless it has one.
func (r *Recorder) fail(err error) {
	r.mu.Lock()
	if r.err == nil {
		r.err = err
	}
	r.mu.Unlock()
}
