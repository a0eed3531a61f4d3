// Package history keeps the record of every deploy in state_dir: what
// triggered it, which commit, its phases and their durations, each node's
// outcome, the result, and its full log (every remote command and its
// output). One directory per deploy: deploys/<id>/deploy.json (the record,
// rewritten atomically on every change) and deploys/<id>/log (appended).
package history

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
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
	// "membership wait", "health wait", "drain wait". What is left of the
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

// Store is the deploy history in one directory.
type Store struct {
	dir string
	mu  sync.Mutex
}

// Open opens the history under stateDir, creating it when missing, and
// marks deploys left running by a dead operator as interrupted.
func Open(stateDir string) (*Store, error) {
	s := &Store{dir: filepath.Join(stateDir, "deploys")}
	if err := os.MkdirAll(s.dir, 0o750); err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	ids, err := s.ids()
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		d, err := s.Get(id)
		if err != nil || d.Result != Running || processAlive(d.PID) {
			continue
		}
		d.Result, d.Ended = Interrupted, time.Now()
		d.Description = "the operator stopped before this deploy ended; the next sync reconciles from the hosts"
		s.save(d)
	}
	return s, nil
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if pid == os.Getpid() {
		return true
	}
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

func (s *Store) ids() ([]int64, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	var ids []int64
	for _, e := range entries {
		if id, err := strconv.ParseInt(e.Name(), 10, 64); err == nil && e.IsDir() {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids, nil
}

// Begin records a new running deploy and returns it with its log open.
func (s *Store) Begin(env, commit, subject, trigger string) (*Recorder, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids, err := s.ids()
	if err != nil {
		return nil, err
	}
	id := int64(1)
	if len(ids) > 0 {
		id = ids[len(ids)-1] + 1
	}
	dir := filepath.Join(s.dir, strconv.FormatInt(id, 10))
	if err := os.Mkdir(dir, 0o750); err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	d := &Deploy{ID: id, Env: env, Commit: commit, Subject: subject, Trigger: trigger, Started: time.Now(), Result: Running, PID: os.Getpid()}
	if err := s.save(d); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, "log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	return &Recorder{store: s, d: d, log: f, w: bufio.NewWriter(f)}, nil
}

func (s *Store) save(d *Deploy) error {
	data, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Join(s.dir, strconv.FormatInt(d.ID, 10))
	tmp := filepath.Join(dir, ".deploy.json.tmp")
	if err := os.WriteFile(tmp, data, 0o640); err != nil {
		return fmt.Errorf("history: %w", err)
	}
	return os.Rename(tmp, filepath.Join(dir, "deploy.json"))
}

// ErrNotFound is returned for a deploy ID the history does not hold.
var ErrNotFound = errors.New("no such deploy")

// Get returns deploy id.
func (s *Store) Get(id int64) (*Deploy, error) {
	data, err := os.ReadFile(filepath.Join(s.dir, strconv.FormatInt(id, 10), "deploy.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("history: deploy %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	var d Deploy
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("history: deploy %d: %w", id, err)
	}
	return &d, nil
}

// List returns the newest deploys first, at most limit of them (all when
// limit <= 0).
func (s *Store) List(limit int) ([]*Deploy, error) {
	ids, err := s.ids()
	if err != nil {
		return nil, err
	}
	var out []*Deploy
	for i := len(ids) - 1; i >= 0 && (limit <= 0 || len(out) < limit); i-- {
		if d, err := s.Get(ids[i]); err == nil {
			out = append(out, d)
		}
	}
	return out, nil
}

// Log returns a reader of deploy id's log.
func (s *Store) Log(id int64) (io.ReadCloser, error) {
	f, err := os.Open(filepath.Join(s.dir, strconv.FormatInt(id, 10), "log"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("history: deploy %d: %w", id, ErrNotFound)
	}
	return f, err
}

// Recorder writes one running deploy's record and log. It is safe for
// concurrent use: nodes of a batch log at once.
type Recorder struct {
	store *Store
	mu    sync.Mutex
	d     *Deploy
	log   *os.File
	w     *bufio.Writer
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
	d.Spent = make(map[string]time.Duration, len(r.d.Spent))
	for k, v := range r.d.Spent {
		d.Spent[k] = v
	}
	return d
}

// Line appends one line of output to the log, tagged with its host and
// stream ("out", "err", or "op" for the operator's own lines).
func (r *Recorder) Line(host, stream, line string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if host == "" {
		host = "-"
	}
	fmt.Fprintf(r.w, "%s %s %s %s\n", time.Now().UTC().Format("15:04:05.000"), host, stream, strings.TrimRight(line, "\r\n"))
	r.w.Flush() // followers of a live deploy read the file
}

// Logf appends one line of the operator's own.
func (r *Recorder) Logf(host, format string, args ...any) {
	r.Line(host, "op", fmt.Sprintf(format, args...))
}

// Phase records a finished phase.
func (r *Recorder) Phase(name string, started time.Time, outcome string) {
	r.mu.Lock()
	r.d.Phases = append(r.d.Phases, Phase{Name: name, Started: started, Duration: time.Since(started), Outcome: outcome})
	r.store.save(r.d)
	r.mu.Unlock()
	r.Logf("", "phase %s: %s (%v)", name, outcome, time.Since(started).Round(time.Millisecond))
}

// Spend adds d to the time spent on kind.
func (r *Recorder) Spend(kind string, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.d.Spent == nil {
		r.d.Spent = map[string]time.Duration{}
	}
	r.d.Spent[kind] += d
}

// Node records what happened to one node, replacing an earlier entry for it.
func (r *Recorder) Node(n NodeResult) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.d.Nodes {
		if r.d.Nodes[i].Host == n.Host {
			r.d.Nodes[i] = n
			r.store.save(r.d)
			return
		}
	}
	r.d.Nodes = append(r.d.Nodes, n)
	r.store.save(r.d)
}

// Finish records the result and closes the log.
func (r *Recorder) Finish(result Result, description string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.d.Result, r.d.Description, r.d.Ended = result, description, time.Now()
	fmt.Fprintf(r.w, "%s - op result %s: %s\n", time.Now().UTC().Format("15:04:05.000"), result, description)
	r.w.Flush()
	err := r.store.save(r.d)
	if cerr := r.log.Close(); err == nil {
		err = cerr
	}
	return err
}
