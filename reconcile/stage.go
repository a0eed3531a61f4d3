package reconcile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/clusterops/operator/hosts"
	"github.com/clusterops/operator/manifests"
)

// stage puts the release on every node at once: the artifact streams from
// the build host straight into an unpack on each node that lacks the
// release (hosts.Layout.Receive: hashed as it arrives, unpacked and given
// its shared links under a temporary name, renamed into releases/<commit>
// only when the sha256 matches), then every node gets its rendered per-node
// files. A node that already holds the release gets its links again, so a
// release left without them by an interrupted run of an older operator is
// completed; files are written on every run.
func (r *Reconciler) stage(ctx context.Context, run *run) error {
	p := run.plan
	sha := p.Commit.SHA
	layout := hosts.Layout{DeployTo: p.Env.DeployTo}
	ws := hosts.Workspace{Dir: p.Manifest.Build.Dir}
	r.report(run, Pending, "staging")
	run.progress("stage: on %d nodes", len(p.Nodes))

	var lacking []*Node
	for _, n := range p.Nodes {
		if !hasRelease(n, sha) {
			lacking = append(lacking, n)
		}
	}
	if len(lacking) > 0 {
		receive, err := layout.Receive(sha, run.artifact, p.Manifest.Release.Links)
		if err != nil {
			return err
		}
		var to []hosts.Target
		for _, n := range lacking {
			to = append(to, n.Target)
			run.rec.Logf(n.Name(), "$ %s", receive.Redacted())
		}
		started := time.Now()
		results, err := r.Fleet.FanOut(ctx, hosts.Copy{
			From: p.Build, FromPath: ws.ArtifactPath(run.artifact), SHA256: run.artifact,
			To: to, Into: receive,
		})
		var errs []error
		for i, res := range results {
			if res.Err != nil {
				run.rec.Logf(res.Target.Name, "release not staged: %v", res.Err)
				errs = append(errs, &DeployError{Class: classOf(res.Err), Phase: "stage", Host: lacking[i].Name(), Err: res.Err})
				continue
			}
			run.rec.Logf(res.Target.Name, "release received from %s and unpacked: %d bytes in %v", p.Build.Name, res.Bytes, res.Duration.Round(time.Millisecond))
		}
		if err != nil {
			if len(errs) == 0 {
				return err
			}
			return errors.Join(errs...)
		}
		run.rec.Logf("", "fan-out to %d nodes took %v", len(to), time.Since(started).Round(time.Millisecond))
	}
	return forEach(p.Nodes, func(n *Node) error {
		return r.completeRelease(ctx, run, n, hasRelease(n, sha))
	})
}

func hasRelease(n *Node, sha string) bool {
	for _, rel := range n.Releases {
		if rel.Name == sha {
			return true
		}
	}
	return false
}

// completeRelease links shared files into a release the node already held
// (one just received has them), then writes the rendered files.
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
	data, err := r.templateData(p, n, sha)
	if err != nil {
		return err
	}
	for _, f := range p.Manifest.Release.Files {
		content, err := r.render(p, f, data)
		if err != nil {
			return &DeployError{Class: ClassFailure, Phase: "stage", Host: n.Name(), Err: err}
		}
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

// render renders one of release.files from its template in the repo at the
// commit being deployed.
func (r *Reconciler) render(p *Plan, f manifests.ReleaseFile, data manifests.TemplateData) ([]byte, error) {
	tmpl, err := r.Source.ReadFile(p.Commit.SHA, f.Template)
	if err != nil {
		return nil, fmt.Errorf("release.files %s: %w", f.Template, err)
	}
	out, err := manifests.Render(string(tmpl), data)
	if err != nil {
		return nil, fmt.Errorf("release.files %s: %w", f.Template, err)
	}
	return []byte(out), nil
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
