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

// stage puts the release on every node at once: the artifact goes from the
// build host straight to the nodes that lack the release (verified by
// sha256), is unpacked into releases/<commit> under a temporary name and
// renamed, and then gets its shared links and rendered per-node files.
// Links and files are applied on every run, so a release left without them
// by an interrupted run is completed.
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
	if err := forEach(p.Nodes, func(n *Node) error {
		c, err := layout.Prepare()
		if err != nil {
			return err
		}
		return run.exec(ctx, n.Target, "stage", c, nil)
	}); err != nil {
		return err
	}
	if len(lacking) > 0 {
		var to []hosts.Target
		for _, n := range lacking {
			to = append(to, n.Target)
		}
		started := time.Now()
		results, err := r.Fleet.FanOut(ctx, hosts.Copy{
			From: p.Build, FromPath: ws.ArtifactPath(run.artifact), SHA256: run.artifact,
			To: to, ToPath: layout.Tarball(sha),
		})
		for _, res := range results {
			switch {
			case res.Err != nil:
				run.rec.Logf(res.Target.Name, "artifact not staged: %v", res.Err)
			case res.Skipped:
				run.rec.Logf(res.Target.Name, "artifact already staged (sha256 %s)", run.artifact[:12])
			default:
				run.rec.Logf(res.Target.Name, "artifact staged from %s: %d bytes in %v", p.Build.Name, res.Bytes, res.Duration.Round(time.Millisecond))
			}
		}
		if err != nil {
			return err
		}
		run.rec.Logf("", "fan-out to %d nodes took %v", len(to), time.Since(started).Round(time.Millisecond))
	}
	return forEach(p.Nodes, func(n *Node) error {
		return r.completeRelease(ctx, run, n, !hasRelease(n, sha))
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

// completeRelease unpacks the staged tarball when the node lacks the
// release, then links shared files and writes the rendered files.
func (r *Reconciler) completeRelease(ctx context.Context, run *run, n *Node, unpack bool) error {
	p := run.plan
	sha := p.Commit.SHA
	layout := hosts.Layout{DeployTo: p.Env.DeployTo}
	if unpack {
		c, err := layout.Unpack(sha, layout.Tarball(sha))
		if err != nil {
			return err
		}
		if err := run.exec(ctx, n.Target, "stage", c, nil); err != nil {
			return fmt.Errorf("unpack on %s: %w", n.Name(), err)
		}
		if err := run.exec(ctx, n.Target, "stage", hosts.Remove(layout.Tarball(sha)), nil); err != nil {
			return err
		}
	}
	if links := p.Manifest.Release.Links; len(links) > 0 {
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
