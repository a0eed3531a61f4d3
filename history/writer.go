package history

import (
	"database/sql"
	"fmt"
	"time"
)

// The writer commits what Recorders queue, in batches: a batch closes at
// batchLines log lines, batchWait after its first write, or at a Finish or
// flush, whichever comes first. One transaction per batch is what makes
// thousands of lines a second cheap; the wait bounds how far a follower
// lags the deploy.
const (
	queueLen   = 4096
	batchLines = 200
	batchWait  = 50 * time.Millisecond
)

// followBuffer is how many lines a Subscribe channel holds before its
// reader counts as fallen behind.
const followBuffer = 1024

// write is one change queued for the writer: a log line, a change to a
// deploy's record, or a flush.
type write struct {
	rec  *Recorder
	line LogLine             // a log line, when exec and done are nil; the writer numbers it
	exec func(*sql.Tx) error // a change to rec's record
	end  bool                // exec is rec's last change: Finish's
	done chan struct{}       // a flush: closed once every write queued before it is committed
}

func (w *write) isLine() bool { return w.exec == nil && w.done == nil }

// enqueue queues w for the writer, waiting while the queue is full. It
// reports false, dropping w, once the Store is closed.
func (s *Store) enqueue(w write) bool {
	select {
	case <-s.quit:
		return false
	default:
	}
	select {
	case s.writes <- w:
		return true
	case <-s.quit:
		return false
	}
}

// flush waits until every write queued before it is committed, or failed.
// It reports false when the Store closed before it could tell.
func (s *Store) flush() bool {
	done := make(chan struct{})
	if !s.enqueue(write{done: done}) {
		return false
	}
	select {
	case <-done:
		return true
	case <-s.exited:
		// The writer answers every flush it drained at Close.
		select {
		case <-done:
			return true
		default:
			return false
		}
	}
}

// run is the writer goroutine: it commits the queue batch by batch until
// Close, then commits what is left and ends every follower.
func (s *Store) run() {
	defer close(s.exited)
	timer := time.NewTimer(batchWait)
	timer.Stop()
	var batch []write
	for {
		select {
		case w := <-s.writes:
			batch = append(batch[:0], w)
		case <-s.quit:
			batch = batch[:0]
			for len(s.writes) > 0 {
				batch = append(batch, <-s.writes)
			}
			s.drainErr = s.commit(batch)
			s.endFollowers()
			return
		}
		timer.Reset(batchWait)
		batch = s.fill(batch, timer.C)
		timer.Stop()
		s.commit(batch)
	}
}

// fill adds queued writes to batch until the batch is full, a Finish or
// flush arrives, tick fires or the Store closes.
func (s *Store) fill(batch []write, tick <-chan time.Time) []write {
	lines := 0
	for {
		last := &batch[len(batch)-1]
		if last.isLine() {
			lines++
		}
		if lines >= batchLines || last.end || last.done != nil {
			return batch
		}
		select {
		case w := <-s.writes:
			batch = append(batch, w)
		case <-tick:
			return batch
		case <-s.quit:
			return batch
		}
	}
}

// commit writes batch in one transaction, hands its lines to followers and
// answers its flushes. A failure is kept by every deploy with a write in
// the batch, for its Finish to return.
func (s *Store) commit(batch []write) error {
	if len(batch) == 0 {
		return nil
	}
	err := s.apply(batch)
	if err != nil {
		for i := range batch {
			if batch[i].rec != nil {
				batch[i].rec.fail(err)
			}
		}
	}
	s.publish(batch, err == nil)
	for i := range batch {
		if batch[i].done != nil {
			close(batch[i].done)
		}
	}
	return err
}

// apply numbers the batch's lines and writes the batch. Writes of a deploy
// that has ended are dropped.
func (s *Store) apply(batch []write) error {
	tx, err := s.db.Begin()
	if err != nil {
		return fmt.Errorf("commit log batch: %w", err)
	}
	defer tx.Rollback()
	var insert *sql.Stmt
	for i := range batch {
		w := &batch[i]
		if w.rec == nil || w.rec.ended {
			continue
		}
		if w.exec != nil {
			if err := w.exec(tx); err != nil {
				return err
			}
			w.rec.ended = w.end
			continue
		}
		if insert == nil {
			if insert, err = tx.Prepare(`INSERT INTO log_lines (deploy_id, seq, time, host, stream, line) VALUES (?, ?, ?, ?, ?, ?)`); err != nil {
				return fmt.Errorf("commit log batch: %w", err)
			}
			defer insert.Close()
		}
		w.rec.seq++
		w.line.Seq = w.rec.seq
		if _, err := insert.Exec(w.rec.d.ID, w.line.Seq, w.line.Time.UnixNano(), w.line.Host, w.line.Stream, w.line.Text); err != nil {
			return fmt.Errorf("log line %d of deploy %d: %w", w.line.Seq, w.rec.d.ID, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit log batch: %w", err)
	}
	return nil
}

// follower is one Subscribe channel.
type follower struct {
	ch chan LogLine
}

// Subscribe follows deploy id's log in this process, without polling: the
// channel receives, in order, each line this Store commits after the call.
// It is closed after the deploy's last line, when cancel is called, when
// the Store closes, and when its reader falls more than 1024 lines behind
// (a slow reader is dropped rather than slowing the deploy). A deploy not
// running in this Store (ended, unknown, or run by another process such
// as the daemon, for the CLI) gets a closed channel: follow it by polling
// LogLines.
//
// To show a whole live log without a gap, subscribe first, then read
// LogLines from 0, then take from the channel the lines numbered above the
// last one read. When the channel closes with the deploy still running
// (Get), the reader fell behind: read on with LogLines and subscribe again.
func (s *Store) Subscribe(id int64) (lines <-chan LogLine, cancel func()) {
	f := &follower{ch: make(chan LogLine, followBuffer)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.live[id] {
		close(f.ch)
		return f.ch, func() {}
	}
	if s.followers[id] == nil {
		s.followers[id] = map[*follower]struct{}{}
	}
	s.followers[id][f] = struct{}{}
	return f.ch, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.unfollow(id, f)
	}
}

// unfollow ends f, unless already ended. s.mu is held.
func (s *Store) unfollow(id int64, f *follower) {
	if _, ok := s.followers[id][f]; !ok {
		return
	}
	delete(s.followers[id], f)
	if len(s.followers[id]) == 0 {
		delete(s.followers, id)
	}
	close(f.ch)
}

// publish hands the committed lines of batch to their deploys' followers,
// and ends the followers of deploys that ended in it.
func (s *Store) publish(batch []write, committed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range batch {
		w := &batch[i]
		if w.rec == nil {
			continue
		}
		id := w.rec.d.ID
		if w.end {
			delete(s.live, id)
			for f := range s.followers[id] {
				s.unfollow(id, f)
			}
			continue
		}
		if !committed || !w.isLine() || w.line.Seq == 0 {
			continue
		}
		for f := range s.followers[id] {
			select {
			case f.ch <- w.line:
			default:
				s.unfollow(id, f)
			}
		}
	}
}

// endFollowers closes every follower, at Close.
func (s *Store) endFollowers() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, fs := range s.followers {
		for f := range fs {
			s.unfollow(id, f)
		}
	}
	clear(s.live)
}
