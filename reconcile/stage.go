package reconcile

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterops/operator/hosts"
	"github.com/clusterops/operator/manifests"
)

// stage puts the release on every node at once, then gives every node its
// rendered per-node files. A node that lacks the release gets it one of two
// ways (receive): as a delta against the release it runs, when that
// release's index is kept on it (only the files that changed travel, the
// others are hard links; hosts.Layout.ReceiveDelta), or whole, the
// artifact streamed from the build host into an unpack (hosts.Layout.
// Receive). Either way the release is checked by SHA-256 and renamed into
// releases/<commit> only when whole. A node that already holds the release
// gets its links again, so a release left without them by an interrupted
// run of an older operator is completed; files are written on every run.
func (r *Reconciler) stage(ctx context.Context, run *run) error {
	p := run.plan
	sha := p.Commit.SHA
	r.report(run, Pending, "staging")
	run.progress("stage: on %d nodes", len(p.Nodes))

	if lacking := lacking(p); len(lacking) > 0 {
		if err := r.receive(ctx, run, lacking); err != nil {
			return err
		}
	}
	return forEach(p.Nodes, func(n *Node) error {
		return r.completeRelease(ctx, run, n, hasRelease(n, sha))
	})
}

// receive sends the release to the nodes that lack it. Each node is asked
// for a base, a release it holds with its index (hosts.Layout.
// ReceiveDelta), and starts linking it while the operator reads the
// artifact once (hosts.Deltas: its index, and a delta against each base;
// read from the work tree as the build ended when it built, startRead);
// nodes with no base receive the artifact whole meanwhile. Then each node
// with a base gets its delta, or the whole artifact when none could be
// made. Every node that received it whole is given its index after, for
// the next deploy.
func (r *Reconciler) receive(ctx context.Context, run *run, nodes []*Node) error {
	p := run.plan
	started := time.Now()
	sessions := r.sessions(ctx, run, nodes)
	errs := make([]error, len(nodes))
	bases := basesOf(sessions)
	var whole, withBase []int
	for i, s := range sessions {
		switch {
		case s.err != nil:
			errs[i] = s.err
		case s.offer.Have:
		case s.offer.Base == "":
			whole = append(whole, i)
		default:
			if _, err := s.baseIndex(); err != nil {
				run.rec.Logf(s.n.Name(), "index of %s not used: %v", short(s.offer.Base), err)
				s.decline()
				whole = append(whole, i)
			} else {
				withBase = append(withBase, i)
			}
		}
	}

	var wg sync.WaitGroup
	sendWhole := func(idx []int) {
		ns := make([]*Node, len(idx))
		for k, i := range idx {
			ns[k] = nodes[i]
		}
		wg.Go(func() {
			for k, err := range r.receiveWhole(ctx, run, ns) {
				errs[idx[k]] = err
			}
		})
	}
	if len(whole) > 0 {
		sendWhole(whole)
	}
	index, deltas, err := r.readAhead(run, bases)
	if index == nil && !errors.Is(err, hosts.ErrNoDelta) { // read again, the kept artifact
		if err != nil {
			run.rec.Logf(p.Build.Name, "artifact read from the work tree not used: %v", err)
		}
		index, deltas, err = r.readArtifact(ctx, run, bases)
	}
	if err != nil {
		run.rec.Logf(p.Build.Name, "no delta: %v", err)
	}
	var late []int
	for _, i := range withBase {
		s := sessions[i]
		d := deltas[s.key()]
		if d == nil {
			s.decline()
			late = append(late, i)
			continue
		}
		extra, err := r.nodeFiles(run.plan, s.n)
		if err != nil {
			s.decline()
			errs[i] = err
			continue
		}
		wg.Go(func() {
			if errs[i] = s.send(run, d, extra); errs[i] == nil && extra != nil {
				run.filesSent(s.n)
			}
		})
	}
	if len(late) > 0 {
		run.rec.Logf("", "no delta for %d nodes: they receive the whole artifact", len(late))
		sendWhole(late)
	}
	wg.Wait()
	if index != nil {
		var received []*Node // whole, the index to follow
		for _, i := range append(whole, late...) {
			if errs[i] == nil {
				received = append(received, nodes[i])
			}
		}
		forEach(received, func(n *Node) error {
			r.keepIndex(ctx, run, n, index)
			return nil
		})
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	run.rec.Logf("", "release on %d nodes in %v", len(nodes), time.Since(started).Round(time.Millisecond))
	return nil
}

// deltaSession is a ReceiveDelta command running on a node: its offer
// read, waiting for the operator's answer.
type deltaSession struct {
	n     *Node
	in    *io.PipeWriter
	offer hosts.Offer
	done  chan error
	// err is why the session failed before its answer; it has ended then.
	err error
	// answered is set once the session has its answer or has ended;
	// linked once it was told to link its base.
	answered, linked atomic.Bool

	parse    sync.Once
	index    hosts.Index
	indexErr error
}

// baseIndex is the offered base's index, parsed once.
func (s *deltaSession) baseIndex() (hosts.Index, error) {
	s.parse.Do(func() { s.index, s.indexErr = hosts.ParseIndex(s.offer.Index) })
	return s.index, s.indexErr
}

// basesOf returns the bases the sessions offered, by key, leaving out any
// whose index does not parse (receive declines those).
func basesOf(ss []*deltaSession) map[string]hosts.Index {
	bases := map[string]hosts.Index{}
	for _, s := range ss {
		if s.err != nil || s.offer.Have || s.offer.Base == "" {
			continue
		}
		if ix, err := s.baseIndex(); err == nil {
			bases[s.key()] = ix
		}
	}
	return bases
}

// openDelta starts a ReceiveDelta command on n, offering the release it
// runs, then its others newest first, and reads its offer.
func (r *Reconciler) openDelta(ctx context.Context, run *run, layout hosts.Layout, n *Node) *deltaSession {
	p := run.plan
	var names []string
	if n.Current != "" && n.Current != p.Commit.SHA {
		names = append(names, n.Current)
	}
	for _, rel := range n.Releases { // newest first
		if rel.Name != n.Current && rel.Name != p.Commit.SHA {
			names = append(names, rel.Name)
		}
	}
	s := &deltaSession{n: n, done: make(chan error, 1)}
	c, err := layout.ReceiveDelta(p.Commit.SHA, names, p.Manifest.Release.Links)
	if err != nil {
		s.err = err
		s.answered.Store(true)
		return s
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	s.in = inW
	run.rec.Logf(n.Name(), "$ %s", c.Redacted())
	go func() {
		err := r.Fleet.Run(ctx, n.Target, c, hosts.Exec{Step: "stage", Stdin: inR, Stdout: outW, Sink: run.rec})
		outW.CloseWithError(errOr(err, io.EOF))
		inR.CloseWithError(errOr(err, io.ErrClosedPipe))
		s.done <- err
	}()
	out := bufio.NewReader(outR)
	s.offer, s.err = hosts.ReadOffer(out)
	go io.Copy(io.Discard, out)
	if s.err != nil || s.offer.Base == "" {
		// Nothing to answer: the command ends by itself.
		s.answered.Store(true)
		inW.Close()
		if err := <-s.done; err != nil {
			s.err = err
		}
		if s.err != nil {
			run.rec.Logf(n.Name(), "release not staged: %v", s.err)
			s.err = &DeployError{Class: classOf(s.err), Phase: "stage", Host: n.Name(), Err: s.err}
		}
	}
	return s
}

// key tells apart bases by name and index, should two nodes' indexes of
// one release differ.
func (s *deltaSession) key() string {
	sum := sha256.Sum256(s.offer.Index)
	return s.offer.Base + "@" + hex.EncodeToString(sum[:8])
}

// link tells the node to link its base, once.
func (s *deltaSession) link() {
	if s.answered.Load() || s.linked.Swap(true) {
		return
	}
	hosts.SendLink(s.in)
}

// decline answers the offer with no delta: the command ends leaving
// nothing, and the node is to receive the release whole.
func (s *deltaSession) decline() {
	if s.answered.Swap(true) {
		return
	}
	hosts.SendDelta(s.in, nil, nil)
	s.in.Close()
	<-s.done
}

// send answers the offer with d and the node's own files (extra), and
// waits for the release to be made.
func (s *deltaSession) send(run *run, d *hosts.Delta, extra []byte) error {
	if s.answered.Swap(true) {
		return fmt.Errorf("stage on %s: delta session already answered", s.n.Name())
	}
	started := time.Now()
	var werr error
	if !s.linked.Swap(true) {
		werr = hosts.SendLink(s.in)
	}
	werr = errOr(werr, hosts.SendDelta(s.in, d, extra))
	s.in.Close()
	err := errOr(<-s.done, werr)
	if err != nil {
		run.rec.Logf(s.n.Name(), "release not staged: %v", err)
		return &DeployError{Class: classOf(err), Phase: "stage", Host: s.n.Name(), Err: fmt.Errorf("release from %s and a delta: %w", short(s.offer.Base), err)}
	}
	run.rec.Logf(s.n.Name(), "release made from %s: %d files sent (%d bytes, %d compressed), %d linked, in %v",
		short(s.offer.Base), d.Sent, d.SentBytes, len(d.Payload), d.Linked, time.Since(started).Round(time.Millisecond))
	return nil
}

// readArtifact reads the kept artifact from the build host through the
// operator once: its index, and a delta against each base.
func (r *Reconciler) readArtifact(ctx context.Context, run *run, bases map[string]hosts.Index) (hosts.Index, map[string]*hosts.Delta, error) {
	ws := hosts.Workspace{Dir: run.plan.Manifest.Build.Dir}
	c, err := ws.ReadArtifact(run.artifact)
	if err != nil {
		return nil, nil, err
	}
	ix, deltas, err := r.readDeltas(ctx, run, c, hosts.KnownSum(run.artifact), bases)
	if err != nil {
		return nil, nil, fmt.Errorf("read artifact %s from %s: %w", run.artifact[:12], run.plan.Build.Name, err)
	}
	return ix, deltas, nil
}

// readDeltas runs c, which prints an artifact, on the build host and reads
// it into its index and deltas (hosts.Deltas), checked against sum.
func (r *Reconciler) readDeltas(ctx context.Context, run *run, c hosts.Cmd, sum func() (string, error), bases map[string]hosts.Index) (hosts.Index, map[string]*hosts.Delta, error) {
	p := run.plan
	started := time.Now()
	run.rec.Logf(p.Build.Name, "$ %s", c.Redacted())
	pr, pw := io.Pipe()
	read := make(chan error, 1)
	go func() {
		err := r.Fleet.Run(ctx, p.Build, c, hosts.Exec{Step: "stage", Stdout: pw, Sink: run.rec})
		pw.CloseWithError(errOr(err, io.EOF))
		read <- err
	}()
	ix, deltas, err := hosts.Deltas(pr, sum, bases, p.Manifest.Release.Links, hosts.DefaultDeltaLimits)
	pr.CloseWithError(errOr(err, io.ErrClosedPipe))
	// The command's failure says more than the read it cut short, but not
	// more than an artifact a delta cannot carry (the read stopped it).
	if rerr := <-read; rerr != nil && !errors.Is(err, hosts.ErrNoDelta) {
		err = errors.Join(rerr, err)
	}
	if err != nil {
		return nil, nil, err
	}
	run.rec.Logf(p.Build.Name, "artifact read and indexed (%d paths, %d deltas) in %v", len(ix), len(deltas), time.Since(started).Round(time.Millisecond))
	return ix, deltas, nil
}

// artifactRead is the outcome of a read of the artifact: its index and
// deltas, or why there are none.
type artifactRead struct {
	bases  map[string]hosts.Index
	index  hosts.Index
	deltas map[string]*hosts.Delta
	err    error
}

// startRead begins reading the artifact the build steps just made, from
// the work tree, against the bases the nodes offered (stageAhead), while
// the build host keeps it: keeping hashes and copies it, the read
// inflates and hashes every file, and on the stage's way the one need
// not wait for the other. The read's deltas count only if its bytes hash
// to the sum the build host kept the artifact under: build hands that sum
// over through the function startRead returns, which it must call once,
// on every path (an error when the artifact was not kept). receive takes
// the outcome (readAhead). No bases, nothing read: the function does
// nothing.
func (r *Reconciler) startRead(ctx context.Context, run *run, ws hosts.Workspace) func(sum string, err error) {
	bases := basesOf(run.early)
	if len(bases) == 0 {
		return func(string, error) {}
	}
	c, err := ws.ReadBuilt(run.plan.Manifest.Build.Artifact)
	if err != nil {
		run.rec.Logf(run.plan.Build.Name, "artifact not read ahead: %v", err)
		return func(string, error) {}
	}
	var kept struct {
		sum string
		err error
	}
	done := make(chan struct{})
	read := make(chan artifactRead, 1)
	run.read = read
	run.bg.Go(func() {
		ix, deltas, err := r.readDeltas(ctx, run, c, func() (string, error) {
			<-done
			return kept.sum, kept.err
		}, bases)
		read <- artifactRead{bases, ix, deltas, err}
	})
	return func(sum string, err error) {
		kept.sum, kept.err = sum, err
		close(done)
	}
}

// readAhead returns what startRead read, if it read, for bases; nil and no
// error when it did not read, or read for other bases.
func (r *Reconciler) readAhead(run *run, bases map[string]hosts.Index) (hosts.Index, map[string]*hosts.Delta, error) {
	if run.read == nil {
		return nil, nil, nil
	}
	got := <-run.read
	run.read = nil
	if got.err != nil {
		return nil, nil, got.err
	}
	for key := range bases {
		if _, ok := got.bases[key]; !ok {
			return nil, nil, nil // a base it did not read for
		}
	}
	return got.index, got.deltas, nil
}

// receiveWhole streams the artifact from the build host into an unpack on
// every node of ns at once, and returns each node's error, in ns's order.
func (r *Reconciler) receiveWhole(ctx context.Context, run *run, ns []*Node) []error {
	p := run.plan
	layout := hosts.Layout{DeployTo: p.Env.DeployTo}
	ws := hosts.Workspace{Dir: p.Manifest.Build.Dir}
	errs := make([]error, len(ns))
	receive, err := layout.Receive(p.Commit.SHA, run.artifact, p.Manifest.Release.Links)
	if err != nil {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	var to []hosts.Target
	for _, n := range ns {
		to = append(to, n.Target)
		run.rec.Logf(n.Name(), "$ %s", receive.Redacted())
	}
	results, _ := r.Fleet.FanOut(ctx, hosts.Copy{
		From: p.Build, FromPath: ws.ArtifactPath(run.artifact), SHA256: run.artifact,
		To: to, Into: receive,
	})
	for i, res := range results {
		if res.Err != nil {
			run.rec.Logf(res.Target.Name, "release not staged: %v", res.Err)
			errs[i] = &DeployError{Class: classOf(res.Err), Phase: "stage", Host: ns[i].Name(), Err: res.Err}
			continue
		}
		run.rec.Logf(res.Target.Name, "release received from %s and unpacked: %d bytes in %v", p.Build.Name, res.Bytes, res.Duration.Round(time.Millisecond))
	}
	return errs
}

// keepIndex writes the release's index on n, which received it whole. A
// failure costs only the next deploy's delta: it is logged, not returned.
func (r *Reconciler) keepIndex(ctx context.Context, run *run, n *Node, ix hosts.Index) {
	p := run.plan
	layout := hosts.Layout{DeployTo: p.Env.DeployTo}
	data := ix.Marshal()
	sum := sha256.Sum256(data)
	c, err := layout.WriteIndex(p.Commit.SHA, hex.EncodeToString(sum[:]))
	if err == nil {
		err = run.exec(ctx, n.Target, "stage", c, bytes.NewReader(data))
	}
	if err != nil {
		run.rec.Logf(n.Name(), "index of the release not kept (the next deploy sends it whole): %v", err)
	}
}

// lacking returns the nodes that do not hold the release to deploy.
func lacking(p *Plan) []*Node {
	var ns []*Node
	for _, n := range p.Nodes {
		if !hasRelease(n, p.Commit.SHA) {
			ns = append(ns, n)
		}
	}
	return ns
}

// stageAhead opens the delta sessions of the nodes that lack the release
// when the build steps start, so that their offers are in when the build
// ends; linkAhead then has the nodes link their bases while the operator
// reads the artifact. Not earlier: where hosts share disks and CPUs (the
// test bed) linking thousands of files slows the build. stage takes the
// sessions (sessions), and a deploy that ends before its stage declines
// them (closeSessions).
func (r *Reconciler) stageAhead(ctx context.Context, run *run) {
	nodes := lacking(run.plan)
	if len(nodes) == 0 {
		return
	}
	ahead := make(chan []*deltaSession, 1)
	go func() { ahead <- r.openDeltas(ctx, run, nodes) }()
	run.ahead = ahead
}

// linkAhead has the sessions stageAhead opened start linking their bases.
func (run *run) linkAhead() {
	if run.ahead == nil {
		return
	}
	run.early = <-run.ahead
	run.ahead = nil
	for _, s := range run.early {
		s.link()
	}
}

// sessions returns the delta sessions of nodes, opened ahead or now, each
// told to link its base.
func (r *Reconciler) sessions(ctx context.Context, run *run, nodes []*Node) []*deltaSession {
	run.linkAhead()
	if ss := run.early; ss != nil {
		run.early = nil
		if len(ss) == len(nodes) {
			return ss
		}
		closeAll(ss) // not expected: the plan did not change
	}
	ss := r.openDeltas(ctx, run, nodes)
	for _, s := range ss {
		s.link()
	}
	return ss
}

// openDeltas opens a delta session on every node of nodes at once.
func (r *Reconciler) openDeltas(ctx context.Context, run *run, nodes []*Node) []*deltaSession {
	layout := hosts.Layout{DeployTo: run.plan.Env.DeployTo}
	ss := make([]*deltaSession, len(nodes))
	forEach(nodes, func(n *Node) error {
		ss[slices.Index(nodes, n)] = r.openDelta(ctx, run, layout, n)
		return nil
	})
	run.mu.Lock()
	run.opened = append(run.opened, ss...)
	run.mu.Unlock()
	return ss
}

// closeSessions declines every delta session the deploy opened and did
// not answer: the nodes remove what they linked.
func (run *run) closeSessions() {
	if run.ahead != nil {
		<-run.ahead
		run.ahead = nil
	}
	run.mu.Lock()
	ss := run.opened
	run.mu.Unlock()
	closeAll(ss)
}

func closeAll(ss []*deltaSession) {
	var wg sync.WaitGroup
	for _, s := range ss {
		wg.Go(s.decline)
	}
	wg.Wait()
}

func hasRelease(n *Node, sha string) bool {
	for _, rel := range n.Releases {
		if rel.Name == sha {
			return true
		}
	}
	return false
}

// nodeFiles renders n's release.files, to go with its delta.
func (r *Reconciler) nodeFiles(p *Plan, n *Node) ([]byte, error) {
	files, err := r.renderFiles(p, n)
	if err != nil || len(files) == 0 {
		return nil, err
	}
	byPath := map[string][]byte{}
	for i, f := range p.Manifest.Release.Files {
		byPath[path.Clean(f.Path)] = files[i]
	}
	return hosts.NodeFiles(byPath)
}

// renderFiles renders n's release.files from their templates in the repo
// at the commit being deployed, in the manifest's order.
func (r *Reconciler) renderFiles(p *Plan, n *Node) ([][]byte, error) {
	if len(p.Manifest.Release.Files) == 0 {
		return nil, nil
	}
	data, err := r.templateData(p, n, p.Commit.SHA)
	if err != nil {
		return nil, err
	}
	var files [][]byte
	for _, f := range p.Manifest.Release.Files {
		tmpl, err := r.Source.ReadFile(p.Commit.SHA, f.Template)
		if err == nil {
			var out string
			if out, err = manifests.Render(string(tmpl), data); err == nil {
				files = append(files, []byte(out))
				continue
			}
		}
		return nil, &DeployError{Class: ClassFailure, Phase: "stage", Host: n.Name(), Err: fmt.Errorf("release.files %s: %w", f.Template, err)}
	}
	return files, nil
}

// completeRelease links shared files into a release the node already held
// (one just received has them), then writes the rendered files, unless
// they came with the node's delta.
func (r *Reconciler) completeRelease(ctx context.Context, run *run, n *Node, relink bool) error {
	p := run.plan
	sha := p.Commit.SHA
	layout := hosts.Layout{DeployTo: p.Env.DeployTo}
	if links := p.Manifest.Release.Links; relink && len(links) > 0 {
		c, err := layout.LinkShared(sha, links)
		if err != nil {
			return err
		}
		if err := run.exec(ctx, n.Target, "stage", c, nil); err != nil {
			return &DeployError{Class: classOf(err), Phase: "stage", Host: n.Name(), Err: fmt.Errorf("link shared files: %w", err)}
		}
	}
	if run.hasFiles(n) {
		return nil
	}
	files, err := r.renderFiles(p, n)
	if err != nil {
		return err
	}
	for i, f := range p.Manifest.Release.Files {
		content := files[i]
		sum := sha256.Sum256(content)
		c, err := layout.WriteFile(sha, f.Path, 0o644, hex.EncodeToString(sum[:]))
		if err != nil {
			return err
		}
		if err := run.exec(ctx, n.Target, "stage", c, bytes.NewReader(content)); err != nil {
			return fmt.Errorf("write %s on %s: %w", f.Path, n.Name(), err)
		}
	}
	return nil
}

// forEach runs fn for every node at once and joins the errors.
func forEach(nodes []*Node, fn func(*Node) error) error {
	var wg sync.WaitGroup
	errs := make([]error, len(nodes))
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(n)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
