package history

import (
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// open opens a Store in dir, closed at the end of the test.
func open(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// readLog returns deploy id's whole log as text.
func readLog(t testing.TB, s *Store, id int64) string {
	t.Helper()
	rc, err := s.Log(id)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDeployRecordAndLog(t *testing.T) {
	s := open(t, t.TempDir())
	r, err := s.Begin("production", "abc", "one-line change", "webhook 1234-abcd")
	if err != nil {
		t.Fatal(err)
	}
	if r.ID() != 1 {
		t.Fatalf("first ID: got %d, want 1", r.ID())
	}
	r.Line("n1", "out", "hello\r\n")
	r.Line("n1", "err", "not utf-8: \xff\xfe")
	r.Phase("build", time.Now().Add(-time.Second), "ok")
	r.Spend("build step", 2*time.Second)
	r.Spend("build step", time.Second)
	r.Spend("stop", time.Millisecond)
	r.Node(NodeResult{Host: "n1", From: "old", To: "abc", Outcome: "updated"})
	r.Node(NodeResult{Host: "n2", From: "old", To: "old", Outcome: "untouched"})
	r.Node(NodeResult{Host: "n1", From: "old", To: "old", Outcome: "rolled back: membership"})
	if err := r.Finish(Failure, "membership check failed on n1"); err != nil {
		t.Fatal(err)
	}
	if err := r.Finish(Success, "again"); err == nil {
		t.Errorf("a second Finish succeeded")
	}

	got, err := s.Get(1)
	if err != nil {
		t.Fatal(err)
	}
	snap := r.Snapshot()
	if diff := cmp.Diff(&snap, got); diff != "" {
		t.Errorf("Get(1) differs from the recorder's snapshot (-snapshot +got):\n%s", diff)
	}
	if got.Result != Failure || got.Trigger != "webhook 1234-abcd" || got.Phases[0].Duration < time.Second || got.Ended.IsZero() {
		t.Errorf("record: %+v", got)
	}
	if want := map[string]time.Duration{"build step": 3 * time.Second, "stop": time.Millisecond}; !cmp.Equal(got.Spent, want) {
		t.Errorf("spent: got %v, want %v", got.Spent, want)
	}
	if want := []NodeResult{
		{Host: "n1", From: "old", To: "old", Outcome: "rolled back: membership"},
		{Host: "n2", From: "old", To: "old", Outcome: "untouched"},
	}; !cmp.Equal(got.Nodes, want) {
		t.Errorf("nodes: got %+v, want %+v", got.Nodes, want)
	}

	log := readLog(t, s, 1)
	lines := strings.Split(strings.TrimSuffix(log, "\n"), "\n")
	wants := []string{
		" n1 out hello",
		" n1 err not utf-8: \xff\xfe",
		" - op phase build: ok (1s)",
		" - op result failure: membership check failed on n1",
	}
	if len(lines) != len(wants) {
		t.Fatalf("log has %d lines, want %d:\n%s", len(lines), len(wants), log)
	}
	for i, want := range wants {
		// "15:04:05.000" then the rest.
		if _, err := time.Parse("15:04:05.000", lines[i][:12]); err != nil || lines[i][12:] != want {
			t.Errorf("log line %d: got %q, want a time then %q", i+1, lines[i], want)
		}
	}

	r2, err := s.Begin("production", "def", "", "poll")
	if err != nil {
		t.Fatal(err)
	}
	if r2.ID() != 2 {
		t.Fatalf("second ID: got %d, want 2", r2.ID())
	}
	for _, tc := range []struct {
		limit int
		want  []int64
	}{
		{limit: 1, want: []int64{2}},
		{limit: 2, want: []int64{2, 1}},
		{limit: 0, want: []int64{2, 1}},
		{limit: 9, want: []int64{2, 1}},
	} {
		t.Run(fmt.Sprintf("List(%d)", tc.limit), func(t *testing.T) {
			list, err := s.List(tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			var ids []int64
			for _, d := range list {
				ids = append(ids, d.ID)
			}
			if !cmp.Equal(ids, tc.want) {
				t.Errorf("got IDs %v, want %v", ids, tc.want)
			}
			if list[0].Result != Running || !list[0].Ended.IsZero() {
				t.Errorf("the running deploy reads as %+v", list[0])
			}
		})
	}
}

func TestUnknownDeployIsNotFound(t *testing.T) {
	s := open(t, t.TempDir())
	r, _ := s.Begin("production", "abc", "", "manual")
	r.Finish(Success, "done")
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"Get", func() error { _, err := s.Get(9); return err }},
		{"Log", func() error { _, err := s.Log(9); return err }},
		{"LogLines", func() error { _, err := s.LogLines(9, 0, 10); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); !errors.Is(err, ErrNotFound) {
				t.Errorf("got %v, want an error wrapping ErrNotFound", err)
			}
		})
	}
	// A known deploy with no line past after is no error.
	if lines, err := s.LogLines(r.ID(), 1000, 10); err != nil || len(lines) != 0 {
		t.Errorf("LogLines past the end: got %v, %v", lines, err)
	}
}

func TestConcurrentLinesAreAllStoredInOrder(t *testing.T) {
	const goroutines, each = 20, 500
	s := open(t, t.TempDir())
	r, err := s.Begin("production", "abc", "", "manual")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				r.Line(fmt.Sprintf("h%02d", g), "stdout", fmt.Sprint(i))
			}
		})
	}
	wg.Wait()
	if err := r.Finish(Success, "done"); err != nil {
		t.Fatal(err)
	}
	lines, err := s.LogLines(r.ID(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(lines), goroutines*each+1; got != want {
		t.Fatalf("stored %d lines, want %d", got, want)
	}
	next := map[string]int{}
	for i, l := range lines {
		if l.Seq != int64(i+1) {
			t.Fatalf("line %d is numbered %d", i+1, l.Seq)
		}
		if l.Stream == "op" {
			continue
		}
		if l.Text != fmt.Sprint(next[l.Host]) {
			t.Fatalf("line %d from %s: got %q, want %d", l.Seq, l.Host, l.Text, next[l.Host])
		}
		next[l.Host]++
	}
	if len(next) != goroutines {
		t.Errorf("lines from %d hosts, want %d", len(next), goroutines)
	}
}

func TestLogLinesPages(t *testing.T) {
	s := open(t, t.TempDir())
	r, _ := s.Begin("production", "abc", "", "manual")
	for i := 1; i <= 9; i++ {
		r.Line("n1", "stdout", fmt.Sprint(i))
	}
	if err := r.Finish(Success, "done"); err != nil { // line 10
		t.Fatal(err)
	}
	for _, tc := range []struct {
		after int64
		limit int
		want  []int64
	}{
		{after: 0, limit: 3, want: []int64{1, 2, 3}},
		{after: 3, limit: 3, want: []int64{4, 5, 6}},
		{after: 8, limit: 3, want: []int64{9, 10}},
		{after: 10, limit: 3, want: nil},
		{after: 7, limit: 0, want: []int64{8, 9, 10}},
		{after: -1, limit: 1, want: []int64{1}},
	} {
		t.Run(fmt.Sprintf("after %d limit %d", tc.after, tc.limit), func(t *testing.T) {
			lines, err := s.LogLines(r.ID(), tc.after, tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			var seqs []int64
			for _, l := range lines {
				seqs = append(seqs, l.Seq)
				if l.Stream == "stdout" && l.Text != fmt.Sprint(l.Seq) {
					t.Errorf("line %d: text %q", l.Seq, l.Text)
				}
			}
			if !cmp.Equal(seqs, tc.want) {
				t.Errorf("got %v, want %v", seqs, tc.want)
			}
		})
	}
}

func TestLogTail(t *testing.T) {
	s := open(t, t.TempDir())
	r, _ := s.Begin("production", "abc", "", "manual")
	for i := 1; i <= 11; i++ {
		r.Line("n1", "stdout", fmt.Sprint(i))
	}
	if err := r.Finish(Success, "done"); err != nil { // line 12
		t.Fatal(err)
	}
	// A batch the history failed to commit leaves a gap: 5 and 6.
	if _, err := s.db.Exec(`DELETE FROM log_lines WHERE deploy_id = ? AND seq IN (5, 6)`, r.ID()); err != nil {
		t.Fatal(err)
	}
	empty, _ := s.Begin("production", "def", "", "manual")
	for _, tc := range []struct {
		id     int64
		before int64
		n      int
		want   LogSpan
	}{
		{r.ID(), 0, 3, LogSpan{First: 10, Last: 12, Earlier: true}},
		{r.ID(), 10, 3, LogSpan{First: 7, Last: 9, Earlier: true, Later: true}},
		{r.ID(), 8, 3, LogSpan{First: 3, Last: 7, Earlier: true, Later: true}}, // 3, 4, 7
		{r.ID(), 5, 3, LogSpan{First: 2, Last: 4, Earlier: true, Later: true}},
		{r.ID(), 4, 3, LogSpan{First: 1, Last: 3, Later: true}},
		{r.ID(), 3, 3, LogSpan{First: 1, Last: 2, Later: true}},
		{r.ID(), 1, 3, LogSpan{Later: true}},
		{r.ID(), 0, 0, LogSpan{First: 1, Last: 12}},
		{r.ID(), 0, 10, LogSpan{First: 1, Last: 12}}, // the whole log is 10 lines
		{r.ID(), 0, 11, LogSpan{First: 1, Last: 12}},
		{r.ID(), 99, 2, LogSpan{First: 11, Last: 12, Earlier: true}},
		{empty.ID(), 0, 3, LogSpan{}},
	} {
		t.Run(fmt.Sprintf("deploy %d before %d n %d", tc.id, tc.before, tc.n), func(t *testing.T) {
			got, err := s.LogTail(tc.id, tc.before, tc.n)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	if _, err := s.LogTail(99, 0, 3); !errors.Is(err, ErrNotFound) {
		t.Errorf("LogTail of an unknown deploy: got %v, want an error wrapping ErrNotFound", err)
	}
}

// The CLI opens the history while the daemon runs a deploy, and reads it.
func TestSecondStoreReadsWhatTheFirstWrote(t *testing.T) {
	dir := t.TempDir()
	daemon := open(t, dir)
	r, err := daemon.Begin("production", "abc", "subject", "manual by ana")
	if err != nil {
		t.Fatal(err)
	}
	r.Line("n1", "stdout", "building")

	cli := open(t, dir)
	d, err := cli.Get(r.ID())
	if err != nil {
		t.Fatal(err)
	}
	if d.Result != Running {
		t.Errorf("the CLI sees the running deploy as %s", d.Result)
	}

	r.Phase("build", time.Now(), "ok")
	r.Node(NodeResult{Host: "n1", To: "abc", Outcome: "updated"})
	if err := r.Finish(Success, "deployed"); err != nil {
		t.Fatal(err)
	}
	got, err := cli.Get(r.ID())
	if err != nil {
		t.Fatal(err)
	}
	want := r.Snapshot()
	if diff := cmp.Diff(&want, got); diff != "" {
		t.Errorf("the CLI reads (-daemon +cli):\n%s", diff)
	}
	if log := readLog(t, cli, r.ID()); !strings.Contains(log, " n1 stdout building\n") || !strings.Contains(log, " - op result success: deployed\n") {
		t.Errorf("the CLI reads the log:\n%s", log)
	}
	// The CLI's Close leaves the daemon's database working.
	if err := cli.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := daemon.List(0); err != nil {
		t.Fatal(err)
	}
}

// setPID makes deploy id's record name pid as its operator.
func setPID(t *testing.T, s *Store, id int64, pid int) {
	t.Helper()
	if _, err := s.db.Exec(`UPDATE deploys SET pid = ? WHERE id = ?`, pid, id); err != nil {
		t.Fatal(err)
	}
}

func TestRunningDeployOfADeadOperatorIsInterrupted(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	dead, _ := s.Begin("production", "abc", "", "manual")
	dead.Line("n1", "stdout", "stopping")
	alive, _ := s.Begin("staging", "abc", "", "manual")
	done, _ := s.Begin("production", "def", "", "manual")
	done.Finish(Success, "deployed")
	if err := s.Close(); err != nil { // commits the lines of the unfinished ones
		t.Fatal(err)
	}
	// Open marks one whose process is gone, and only that one, the way a
	// new process would; this one is alive.
	s = open(t, dir)
	setPID(t, s, dead.ID(), 1<<30)
	s2 := open(t, dir)

	for _, tc := range []struct {
		id   int64
		want Result
	}{
		{dead.ID(), Interrupted},
		{alive.ID(), Running},
		{done.ID(), Success},
	} {
		t.Run(fmt.Sprint(tc.id), func(t *testing.T) {
			d, err := s2.Get(tc.id)
			if err != nil {
				t.Fatal(err)
			}
			if d.Result != tc.want {
				t.Errorf("result: got %s, want %s", d.Result, tc.want)
			}
		})
	}
	d, _ := s2.Get(dead.ID())
	if d.Ended.IsZero() || d.Ended.Before(d.Started) || d.Description == "" {
		t.Errorf("the interrupted deploy reads %+v", d)
	}
	log := readLog(t, s2, dead.ID())
	if !strings.Contains(log, " n1 stdout stopping\n") || !strings.Contains(log, " - op result interrupted: ") {
		t.Errorf("the interrupted deploy's log:\n%s", log)
	}
}

// setProcess makes deploy id's record name identity as its operator's.
func setProcess(t *testing.T, s *Store, id int64, identity string) {
	t.Helper()
	if _, err := s.db.Exec(`UPDATE deploys SET process = ? WHERE id = ?`, identity, id); err != nil {
		t.Fatal(err)
	}
}

// An operator in a container is PID 1 every time: its predecessor's
// deploy, left running when it was killed, has this process's PID but not
// its identity, and is marked interrupted all the same.
func TestRunningDeployOfAPredecessorWithTheSamePIDIsInterrupted(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	predecessor, _ := s.Begin("production", "abc", "", "manual")
	predecessor.Line("n1", "stdout", "stopping")
	mine, _ := s.Begin("staging", "abc", "", "manual")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir)
	// The predecessor had this PID and started before this process: the
	// same boot, another start time.
	boot, _ := bootID()
	setProcess(t, s, predecessor.ID(), boot+"/1")
	s2 := open(t, dir)

	for _, tc := range []struct {
		id   int64
		want Result
	}{
		{predecessor.ID(), Interrupted},
		{mine.ID(), Running},
	} {
		d, err := s2.Get(tc.id)
		if err != nil {
			t.Fatal(err)
		}
		if d.PID != os.Getpid() {
			t.Errorf("deploy %d: PID %d, want this process's %d", tc.id, d.PID, os.Getpid())
		}
		if d.Result != tc.want {
			t.Errorf("deploy %d: got %s, want %s", tc.id, d.Result, tc.want)
		}
	}
	if log := readLog(t, s2, predecessor.ID()); !strings.Contains(log, " - op result interrupted: ") {
		t.Errorf("the interrupted deploy's log:\n%s", log)
	}
}

// A database of schema version 1 has no process identities: Open adds
// them, and judges the running deploys it holds by their PIDs, as before,
// except that one with this process's PID cannot be this process's.
func TestOpenMigratesVersion1(t *testing.T) {
	dir := t.TempDir()
	db, err := sql.Open("sqlite", dsn(filepath.Join(dir, fileName)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(migrations[0] + `PRAGMA user_version = 1;`); err != nil {
		t.Fatal(err)
	}
	for _, d := range []struct {
		id  int64
		pid int
	}{{1, 1}, {2, 1 << 30}, {3, os.Getpid()}} {
		if _, err := db.Exec(`INSERT INTO deploys (id, env, commit_sha, trigger, started, result, pid) VALUES (?, 'production', 'abc', 'manual', ?, 'running', ?)`,
			d.id, time.Now().UnixNano(), d.pid); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	s := open(t, dir)
	var version int
	s.db.QueryRow(`PRAGMA user_version`).Scan(&version)
	if version != 2 {
		t.Errorf("user_version %d after Open, want 2", version)
	}
	for _, tc := range []struct {
		id   int64
		want Result
	}{
		{1, Running},     // PID 1 runs
		{2, Interrupted}, // no such process
		{3, Interrupted}, // an earlier process with this PID
	} {
		d, err := s.Get(tc.id)
		if err != nil {
			t.Fatal(err)
		}
		if d.Result != tc.want {
			t.Errorf("deploy %d of PID %d: got %s, want %s", tc.id, d.PID, d.Result, tc.want)
		}
	}
	r, err := s.Begin("production", "def", "", "manual")
	if err != nil {
		t.Fatal(err)
	}
	var identity string
	s.db.QueryRow(`SELECT process FROM deploys WHERE id = ?`, r.ID()).Scan(&identity)
	if identity != thisProcess() || identity == "" {
		t.Errorf("a new deploy records process %q, want %q", identity, thisProcess())
	}
}

func TestLockSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if l, err := s.LockOf("production"); l != nil || err != nil {
		t.Fatalf("LockOf an unlocked env: %+v, %v", l, err)
	}
	if err := s.Lock("production", "db upgrade", "ana"); err != nil {
		t.Fatal(err)
	}
	first, _ := s.LockOf("production")
	if err := s.Lock("production", "db upgrade, take two", "bo"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir)
	got, err := s.LockOf("production")
	if err != nil {
		t.Fatal(err)
	}
	want := &Lock{Env: "production", Reason: "db upgrade, take two", Who: "bo", Since: first.Since}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("lock after restart (-want +got):\n%s", diff)
	}
	if l, _ := s.LockOf("staging"); l != nil {
		t.Errorf("staging is locked: %+v", l)
	}
	if err := s.Lock("", "x", "ana"); err == nil {
		t.Errorf("locked the unnamed environment")
	}
	for range 2 { // unlocking twice is fine
		if err := s.Unlock("production"); err != nil {
			t.Fatal(err)
		}
	}
	if l, err := s.LockOf("production"); l != nil || err != nil {
		t.Fatalf("LockOf after Unlock: %+v, %v", l, err)
	}
}

func TestSubscribeFollowsALiveDeploy(t *testing.T) {
	s := open(t, t.TempDir())
	r, _ := s.Begin("production", "abc", "", "manual")
	r.Line("n1", "stdout", "before")
	s.flush()
	lines, cancel := s.Subscribe(r.ID())
	defer cancel()
	other, cancelOther := s.Subscribe(r.ID())
	cancelOther()
	cancelOther() // twice is fine
	if _, ok := <-other; ok {
		t.Errorf("a cancelled subscription got a line")
	}
	for i := range 3 {
		r.Line("n1", "stdout", fmt.Sprint(i))
	}
	r.Finish(Success, "done")
	var got []string
	for l := range lines { // closed after the deploy's last line
		got = append(got, fmt.Sprintf("%d %s", l.Seq, l.Text))
	}
	want := []string{"2 0", "3 1", "4 2", "5 result success: done"}
	if !cmp.Equal(got, want) {
		t.Errorf("followed %q, want %q", got, want)
	}
	// An ended deploy is read with LogLines.
	ended, _ := s.Subscribe(r.ID())
	if _, ok := <-ended; ok {
		t.Errorf("the subscription to an ended deploy got a line")
	}
}

func TestSubscribeDropsASlowReader(t *testing.T) {
	s := open(t, t.TempDir())
	r, _ := s.Begin("production", "abc", "", "manual")
	lines, cancel := s.Subscribe(r.ID())
	defer cancel()
	for i := range followBuffer + 10 {
		r.Line("n1", "stdout", fmt.Sprint(i))
	}
	s.flush()
	n := 0
	for range lines {
		n++
	}
	if n != followBuffer {
		t.Errorf("the slow reader got %d lines before its channel closed, want %d", n, followBuffer)
	}
	if d, _ := s.Get(r.ID()); d.Result != Running {
		t.Errorf("the deploy is %s", d.Result)
	}
	r.Finish(Success, "done")
}

func TestCloseCommitsQueuedLines(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := s.Begin("production", "abc", "", "manual")
	for i := range 1000 {
		r.Line("n1", "stdout", fmt.Sprint(i))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("a second Close: %v", err)
	}
	// After Close, a Recorder neither blocks nor panics.
	r.Line("n1", "stdout", "late")
	if err := r.Finish(Success, "done"); !errors.Is(err, ErrClosed) {
		t.Errorf("Finish after Close: got %v, want ErrClosed", err)
	}
	if _, err := s.Begin("production", "def", "", "manual"); !errors.Is(err, ErrClosed) {
		t.Errorf("Begin after Close: got %v, want ErrClosed", err)
	}

	s = open(t, dir)
	lines, err := s.LogLines(r.ID(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 1000 || lines[999].Text != "999" {
		t.Errorf("after Close: %d lines stored, want 1000", len(lines))
	}
}

func TestSchema(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	var version int
	var mode string
	s.db.QueryRow(`PRAGMA user_version`).Scan(&version)
	s.db.QueryRow(`PRAGMA journal_mode`).Scan(&mode)
	if version != len(migrations) || mode != "wal" {
		t.Errorf("user_version %d, journal_mode %s; want %d, wal", version, mode, len(migrations))
	}
	// Opening again applies nothing.
	open(t, dir)
	// A database from a newer operator is refused, not misread.
	if _, err := s.db.Exec(fmt.Sprintf(`PRAGMA user_version = %d`, len(migrations)+1)); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("Open of a newer schema: got %v", err)
	}
}

func TestProcessAlive(t *testing.T) {
	self := thisProcess()
	if self == "" {
		t.Fatal("this process has no identity: the test needs Linux's /proc")
	}
	boot, _ := bootID()
	initID, err := processIdentity(1)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		pid      int
		identity string
		want     bool
	}{
		{"none", 0, "", false},
		{"this process", os.Getpid(), self, true},
		{"init", 1, initID, true},
		{"impossible", 1 << 30, "", false},
		{"impossible, identified", 1 << 30, boot + "/1", false},
		// A restarted operator has its predecessor's PID, not its start.
		{"this PID, started earlier", os.Getpid(), boot + "/1", false},
		{"this PID, before the last boot", os.Getpid(), "another-boot/" + strings.TrimPrefix(self, boot+"/"), false},
		{"init, started later", 1, initID + "1", false},
		// Records from before identities go by the PID, as then; this
		// process identifies its own, so one of its PID without is a
		// predecessor's.
		{"init, unidentified", 1, "", true},
		{"this PID, unidentified", os.Getpid(), "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := processAlive(tc.pid, tc.identity); got != tc.want {
				t.Errorf("processAlive(%d, %q): got %v, want %v", tc.pid, tc.identity, got, tc.want)
			}
		})
	}
}

func TestStartTime(t *testing.T) {
	rest := " S 0 1 1 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 487385 12345 678 18446744073709551615"
	for _, tc := range []struct {
		name, stat, want string
	}{
		{"plain", "1234 (operator)" + rest, "487385"},
		{"spaces and parentheses in the name", "1234 (op (x) ) y)" + rest, "487385"},
		{"cut short", "1234 (operator) S 0 1", ""},
		{"no name", "1234 operator", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := startTime([]byte(tc.stat))
			if got != tc.want || (err != nil) != (tc.want == "") {
				t.Errorf("startTime: got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// BenchmarkLine measures how many lines a second a deploy can log, from
// Line to committed, with one goroutine and with many.
func BenchmarkLine(b *testing.B) {
	line := strings.Repeat("x", 100)
	b.Run("serial", func(b *testing.B) {
		s := open(b, b.TempDir())
		r, _ := s.Begin("production", "abc", "", "manual")
		b.ResetTimer()
		for range b.N {
			r.Line("n1", "stdout", line)
		}
		if !s.flush() {
			b.Fatal("flush")
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lines/s")
	})
	b.Run("parallel", func(b *testing.B) {
		s := open(b, b.TempDir())
		r, _ := s.Begin("production", "abc", "", "manual")
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				r.Line("n1", "stdout", line)
			}
		})
		if !s.flush() {
			b.Fatal("flush")
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lines/s")
	})
}
