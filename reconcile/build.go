package reconcile

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/clusterops/operator/gitsrc"
	"github.com/clusterops/operator/history"
	"github.com/clusterops/operator/hosts"
)

// run is one deploy in progress.
type run struct {
	r       *Reconciler
	plan    *Plan
	rec     *history.Recorder
	started time.Time
	// artifact is the sha256 of the release's artifact on the build host.
	artifact string
	// phaseNote, when set by a phase, is recorded as its outcome instead of
	// "ok" (for example "skipped: artifact exists").
	phaseNote string

	// builtIn is the workspace the deploy built in, if it built.
	builtIn hosts.Workspace
	// bg counts the work the deploy left running beside its phases; the
	// deploy waits for it before its outcome.
	bg sync.WaitGroup

	// ahead delivers the delta sessions stageAhead opened, early holds
	// them once linkAhead took them; opened holds every delta session,
	// for closeSessions.
	ahead  chan []*deltaSession
	early  []*deltaSession
	mu     sync.Mutex
	opened []*deltaSession
	// withFiles are the nodes whose rendered files came with their delta.
	withFiles map[*Node]bool
	// predrain is the first node's drain begun with the migration.
	predrain *predrain
	// read delivers the read of the artifact begun as the build ended
	// (startRead).
	read chan artifactRead
}

func (run *run) filesSent(n *Node) {
	run.mu.Lock()
	defer run.mu.Unlock()
	if run.withFiles == nil {
		run.withFiles = map[*Node]bool{}
	}
	run.withFiles[n] = true
}

func (run *run) hasFiles(n *Node) bool {
	run.mu.Lock()
	defer run.mu.Unlock()
	return run.withFiles[n]
}

// exec runs c on t, logging the command and its output to the deploy's log.
func (run *run) exec(ctx context.Context, t hosts.Target, step string, c hosts.Cmd, stdin io.Reader) error {
	run.rec.Logf(t.Name, "$ %s", c.Redacted())
	started := time.Now()
	err := run.r.Fleet.Run(ctx, t, c, hosts.Exec{Step: step, Sink: run.rec, Stdin: stdin})
	if err != nil {
		run.rec.Logf(t.Name, "%s failed after %v: %v", step, time.Since(started).Round(time.Millisecond), err)
	}
	return err
}

// refreshWorkspace refreshes the index of the workspace the deploy built
// in (hosts.Workspace.Refresh), beside the deploy's phases: the rollout
// starts it, while the build host is idle and the first node stops. A
// failure only makes the next checkout slower: it is logged.
func (r *Reconciler) refreshWorkspace(ctx context.Context, run *run) {
	if run.builtIn.Dir == "" {
		return
	}
	c, err := run.builtIn.Refresh()
	if err != nil {
		return
	}
	run.bg.Go(func() {
		// Not cancelled with the deploy: git killed mid-refresh would
		// leave its index locked. Bounded all the same.
		ctx, cancel := within(context.WithoutCancel(ctx), run.plan.Manifest.Rollout.Timeout, "rollout.timeout", false)
		defer cancel()
		if err := run.exec(ctx, run.plan.Build, "build", c, nil); err != nil {
			run.rec.Logf(run.plan.Build.Name, "refreshing the checkout's index: %v (the next checkout reads every file)", err)
		}
	})
}

// timed runs fn and adds its duration to what the deploy spent on kind.
func (run *run) timed(kind string, fn func() error) error {
	started := time.Now()
	err := fn()
	run.rec.Spend(kind, time.Since(started))
	return err
}

// output runs c on t and returns its stdout, logging the command.
func (run *run) output(ctx context.Context, t hosts.Target, c hosts.Cmd) ([]byte, error) {
	run.rec.Logf(t.Name, "$ %s", c.Redacted())
	out, err := run.r.Fleet.Output(ctx, t, c)
	if err != nil {
		run.rec.Logf(t.Name, "failed: %v", err)
	}
	return out, err
}

// build makes sure the build host holds the commit's artifact. It records
// "skipped" when the artifact exists; otherwise it pushes the commit, checks
// it out in the persistent workspace, runs each step whose inputs changed
// since its last success, and keeps the artifact under its sha256. Its ctx
// carries build.timeout, which the stage shares (deploy).
func (r *Reconciler) build(ctx context.Context, run *run) error {
	p := run.plan
	sha := p.Commit.SHA
	if p.Artifact != "" {
		run.artifact = p.Artifact
		run.phaseNote = "skipped: the artifact of " + short(sha) + " exists (sha256 " + p.Artifact[:12] + ")"
		run.progress("build: skipped, artifact of %s exists", short(sha))
		return nil
	}
	r.report(run, Pending, "building")
	run.progress("build: on %s", p.Build.Name)
	ws := hosts.Workspace{Dir: p.Manifest.Build.Dir}
	// The step records do not depend on the push or the checkout: read them
	// meanwhile (a workspace not prepared yet has none).
	type stepsRead struct {
		out []byte
		err error
	}
	steps := make(chan stepsRead, 1)
	readSteps, err := ws.ReadSteps()
	if err != nil {
		return err
	}
	go func() {
		out, err := run.output(ctx, p.Build, readSteps)
		steps <- stepsRead{out, err}
	}()
	var read stepsRead
	readDone := false
	defer func() {
		if !readDone { // returned early: the read must not outlive the phase
			<-steps
		}
	}()
	// The steps' inputs are read from the operator's mirror while the
	// build host receives and checks the commit out.
	prints := make([]string, len(p.Manifest.Build.Steps))
	printed := make(chan error, 1)
	go func() {
		for i, step := range p.Manifest.Build.Steps {
			if len(step.WhenChanged) > 0 {
				var err error
				if prints[i], err = r.Source.Fingerprint(sha, step.WhenChanged); err != nil {
					printed <- err
					return
				}
			}
		}
		printed <- nil
	}()
	started := time.Now()
	// The push's session prepares the workspace first and checks the
	// commit out after.
	push := &starter{fleet: r.Fleet, target: p.Build, rec: run.rec, wrap: func(argv ...string) (hosts.Cmd, error) {
		return ws.PushSession(sha, argv...)
	}}
	err = r.Source.Push(ctx, push, ws.Repo(), sha)
	if perr := <-printed; err == nil && perr != nil {
		return perr
	}
	if err != nil {
		return fmt.Errorf("push %s to %s and check it out: %w", short(sha), p.Build.Name, err)
	}
	run.rec.Logf(p.Build.Name, "pushed %s to %s and checked it out in %v", short(sha), ws.Repo(), time.Since(started).Round(time.Millisecond))
	read, readDone = <-steps, true
	if read.err != nil {
		return read.err
	}
	// The build steps take seconds: the nodes offer their bases
	// meanwhile.
	r.stageAhead(ctx, run)
	recorded := hosts.ParseSteps(read.out)
	env := maps.Clone(p.Manifest.Build.Env)
	if env == nil {
		env = map[string]string{}
	}
	env["OPERATOR_COMMIT"] = sha
	for i, step := range p.Manifest.Build.Steps {
		key := stepKey(i, step.Run)
		print := prints[i]
		if len(step.WhenChanged) > 0 {
			if recorded[key] == print {
				run.rec.Logf(p.Build.Name, "step %d skipped: %s unchanged since it last succeeded: %s", i+1, strings.Join(step.WhenChanged, ", "), step.Run)
				run.progress("build: step %d skipped (%s unchanged)", i+1, strings.Join(step.WhenChanged, ", "))
				continue
			}
			// Forget the record first: a step that fails after its inputs
			// changed must run again next time, whatever it left behind.
			if recorded[key] != "" {
				if err := r.recordStep(ctx, run, ws, key, ""); err != nil {
					return err
				}
			}
		}
		run.progress("build: step %d: %s", i+1, step.Run)
		started := time.Now()
		if err := run.timed("build step", func() error {
			return run.execTail(ctx, p.Build, "build", fmt.Sprintf("step %d (%s)", i+1, step.Run), hosts.ShellCmd(ws.Dir, step.Run, env))
		}); err != nil {
			return &DeployError{Class: classOf(err), Phase: "build", Host: p.Build.Name, Err: err}
		}
		run.rec.Logf(p.Build.Name, "step %d ran in %v", i+1, time.Since(started).Round(time.Millisecond))
		if print != "" {
			if err := r.recordStep(ctx, run, ws, key, print); err != nil {
				return err
			}
		}
	}
	run.builtIn = ws
	run.linkAhead()
	kept := r.startRead(ctx, run, ws)
	sum, err := r.keepArtifact(ctx, run, ws)
	kept(sum, err)
	run.artifact = sum
	return err
}

// recordStep records on the build host that the step named key succeeded
// with inputs fingerprinted as print ("" forgets it).
func (r *Reconciler) recordStep(ctx context.Context, run *run, ws hosts.Workspace, key, print string) error {
	c, err := ws.RecordStep(key, print)
	if err != nil {
		return err
	}
	return run.exec(ctx, run.plan.Build, "build", c, nil)
}

// keepArtifact has the build host keep the artifact the build steps made,
// under its sha256, as the commit's, and returns that sha256.
func (r *Reconciler) keepArtifact(ctx context.Context, run *run, ws hosts.Workspace) (string, error) {
	p := run.plan
	c, err := ws.StoreArtifact(p.Commit.SHA, p.Manifest.Build.Artifact)
	if err != nil {
		return "", err
	}
	out, err := run.output(ctx, p.Build, c)
	if err != nil {
		return "", &DeployError{Class: classOf(err), Phase: "build", Host: p.Build.Name, Err: err}
	}
	sum, err := hosts.ParseSum(out)
	if err == nil && sum == "" {
		err = errors.New("no sha256 printed")
	}
	if err != nil {
		return "", fmt.Errorf("artifact of %s: %q: %w", short(p.Commit.SHA), out, err)
	}
	return sum, nil
}

// classOf classes an error where it arose: a command that ran and failed,
// or a check that ran out of time, is the commit's (failure); anything
// else, such as a host that cannot be reached, is the operator's (error).
func classOf(err error) Class {
	var de *DeployError
	if errors.As(err, &de) {
		return de.Class
	}
	var ce *hosts.CommandError
	if errors.As(err, &ce) || errors.Is(err, errCheckTimeout) {
		return ClassFailure
	}
	return ClassError
}

// stepKey names a build step's record in the workspace: its position and
// its command, so editing a step's command runs it again.
func stepKey(i int, run string) string {
	h := sha256.Sum256([]byte(run))
	return fmt.Sprintf("step%d-%s", i, hex.EncodeToString(h[:8]))
}

// starter runs git-receive-pack for gitsrc through the pooled connection,
// through wrap when set.
type starter struct {
	fleet  Fleet
	target hosts.Target
	rec    *history.Recorder
	wrap   func(argv ...string) (hosts.Cmd, error)
}

type process struct {
	stdin  *io.PipeWriter
	stdout *io.PipeReader
	done   chan struct{}
	err    error
}

func (s *starter) Start(ctx context.Context, argv ...string) (gitsrc.Process, error) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	p := &process{stdin: inW, stdout: outR, done: make(chan struct{})}
	c := hosts.Cmd{Args: argv}
	if s.wrap != nil {
		var err error
		if c, err = s.wrap(argv...); err != nil {
			return nil, err
		}
	}
	s.rec.Logf(s.target.Name, "$ %s", c.Redacted())
	go func() {
		p.err = s.fleet.Run(ctx, s.target, c, hosts.Exec{Step: "push", Stdin: inR, Stdout: outW, Sink: s.rec})
		outW.CloseWithError(errOr(p.err, io.EOF))
		inR.CloseWithError(errOr(p.err, io.ErrClosedPipe))
		close(p.done)
	}()
	return p, nil
}

func errOr(err, otherwise error) error {
	if err != nil {
		return err
	}
	return otherwise
}

func (p *process) Stdin() io.WriteCloser { return p.stdin }
func (p *process) Stdout() io.Reader     { return p.stdout }

// Wait drains what the command still prints (so it can exit), then waits.
func (p *process) Wait() error {
	go io.Copy(io.Discard, p.stdout)
	<-p.done
	return p.err
}

// tail keeps the last lines of a command's output (both streams) while
// passing every line on to the deploy's log, so that a failure can say what
// the command last printed: Mix prints compile errors on stdout.
type tail struct {
	next  hosts.LogSink
	mu    sync.Mutex
	lines []string
}

const tailLines = 6

func (t *tail) Line(host, stream, line string) {
	t.next.Line(host, stream, line)
	if strings.TrimSpace(line) == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines = append(t.lines, line)
	if len(t.lines) > tailLines {
		t.lines = t.lines[len(t.lines)-tailLines:]
	}
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, " | ")
}

// commandFailed is a release or build command that failed, said briefly:
// what it was, how it ended, what it printed last. It unwraps to the
// *hosts.CommandError or connection error beneath.
type commandFailed struct {
	what string
	out  string
	err  error
}

func (e *commandFailed) Error() string {
	var ce *hosts.CommandError
	how := e.err.Error()
	if errors.As(e.err, &ce) {
		how = "exit status " + strconv.Itoa(ce.ExitCode)
		if ce.Signal != "" {
			how = "killed by signal " + ce.Signal
		}
	}
	if e.out == "" {
		return e.what + ": " + how
	}
	return e.what + ": " + how + ": " + e.out
}

func (e *commandFailed) Unwrap() error { return e.err }

// execTail runs c like exec and, when it fails, returns a *commandFailed
// naming what with the command's last output lines.
func (run *run) execTail(ctx context.Context, t hosts.Target, step, what string, c hosts.Cmd) error {
	tl := &tail{next: run.rec}
	run.rec.Logf(t.Name, "$ %s", c.Redacted())
	started := time.Now()
	err := run.r.Fleet.Run(ctx, t, c, hosts.Exec{Step: step, Sink: tl})
	if err != nil {
		run.rec.Logf(t.Name, "%s failed after %v: %v", step, time.Since(started).Round(time.Millisecond), err)
		return &commandFailed{what: what, out: tl.String(), err: err}
	}
	return nil
}
