package gitsrc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/pktline"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/capability"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/sideband"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/plumbing/transport/client"
)

// Starter starts a program (argv) on a remote host with its stdin and stdout
// piped: one session of the operator's pooled SSH connection to the build
// host. Pushing through it costs no new connection and no second trust path.
type Starter interface {
	Start(ctx context.Context, argv ...string) (Process, error)
}

// Process is a command started by a Starter.
type Process interface {
	Stdin() io.WriteCloser
	Stdout() io.Reader
	// Wait waits for the command to exit; a non-zero exit is an error that
	// says what the command printed on stderr.
	Wait() error
}

// DeployRef is the ref of the build host's bare repository that Push moves
// to the commit being built.
const DeployRef = "refs/heads/deploy"

// Push sends commit sha and the objects it needs, and only those the bare
// repository at bareDir on the far side of to lacks, then points DeployRef
// at it: an incremental push over the operator's own SSH session, as
// edeliver pushes, but never a fresh clone. bareDir must exist (git init
// --bare). A push of a commit the build host already has sends no objects.
func (m *Mirror) Push(ctx context.Context, to Starter, bareDir, sha string) error {
	if !plumbing.IsHash(sha) {
		return fmt.Errorf("gitsrc: push %q: not a full commit SHA", sha)
	}
	token := starters.add(to)
	defer starters.remove(token)
	remote := git.NewRemote(m.Repository().Storer, &config.RemoteConfig{
		Name: "build",
		URLs: []string{protocol + "://" + token + "/" + strings.TrimPrefix(bareDir, "/")},
	})
	err := remote.PushContext(ctx, &git.PushOptions{
		RemoteName: "build",
		RefSpecs:   []config.RefSpec{config.RefSpec("+" + sha + ":" + DeployRef)},
		Force:      true,
	})
	if err != nil && !errors.Is(err, git.NoErrAlreadyUpToDate) {
		return fmt.Errorf("gitsrc: push %s to %s: %w", sha[:12], bareDir, err)
	}
	return nil
}

// protocol is the URL scheme under which Push's transport is installed in
// go-git. go-git picks transports by scheme from a global table, so one
// transport is installed once and finds the Starter of each push by the
// token in the URL's host part.
const protocol = "operator-session"

var installOnce sync.Once

type starterTable struct {
	mu sync.Mutex
	m  map[string]Starter
}

var starters = &starterTable{m: map[string]Starter{}}

func (t *starterTable) add(s Starter) string {
	installOnce.Do(func() { client.InstallProtocol(protocol, sessionTransport{}) })
	b := make([]byte, 8)
	rand.Read(b)
	token := "s" + hex.EncodeToString(b)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.m[token] = s
	return token
}

func (t *starterTable) remove(token string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, token)
}

func (t *starterTable) get(token string) (Starter, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.m[token]
	return r, ok
}

// sessionTransport is a go-git transport that runs git-receive-pack through a
// Starter. Only pushing is supported: the build host never serves fetches.
type sessionTransport struct{}

func (sessionTransport) NewUploadPackSession(*transport.Endpoint, transport.AuthMethod) (transport.UploadPackSession, error) {
	return nil, errors.New("gitsrc: fetching from a build host is not supported")
}

func (sessionTransport) NewReceivePackSession(ep *transport.Endpoint, _ transport.AuthMethod) (transport.ReceivePackSession, error) {
	s, ok := starters.get(ep.Host)
	if !ok {
		return nil, fmt.Errorf("gitsrc: no session for %s", ep.Host)
	}
	return &receivePack{starter: s, argv: []string{"git-receive-pack", ep.Path}}, nil
}

// receivePack is the client side of git-receive-pack over one process, as
// go-git's own ssh transport speaks it.
type receivePack struct {
	starter Starter
	argv    []string
	proc    Process
	adv     *packp.AdvRefs
	done    bool
}

func (s *receivePack) AdvertisedReferences() (*packp.AdvRefs, error) {
	return s.AdvertisedReferencesContext(context.Background())
}

func (s *receivePack) AdvertisedReferencesContext(ctx context.Context) (*packp.AdvRefs, error) {
	if s.adv != nil {
		return s.adv, nil
	}
	if s.proc == nil {
		p, err := s.starter.Start(ctx, s.argv...)
		if err != nil {
			return nil, err
		}
		s.proc = p
	}
	ar := packp.NewAdvRefs()
	if err := ar.Decode(s.proc.Stdout()); err != nil {
		if errors.Is(err, packp.ErrEmptyInput) {
			// The command printed nothing: it failed, and Wait says why.
			s.done = true
			if werr := s.proc.Wait(); werr != nil {
				return nil, werr
			}
		}
		return nil, fmt.Errorf("read advertised refs: %w", err)
	}
	transport.FilterUnsupportedCapabilities(ar.Capabilities)
	s.adv = ar
	return ar, nil
}

func (s *receivePack) ReceivePack(ctx context.Context, req *packp.ReferenceUpdateRequest) (*packp.ReportStatus, error) {
	if _, err := s.AdvertisedReferencesContext(ctx); err != nil {
		return nil, err
	}
	s.done = true
	stdin := s.proc.Stdin()
	if err := req.Encode(stdin); err != nil {
		return nil, fmt.Errorf("send pack: %w", err)
	}
	if err := stdin.Close(); err != nil {
		return nil, err
	}
	if !req.Capabilities.Supports(capability.ReportStatus) {
		return nil, s.proc.Wait()
	}
	var r io.Reader = s.proc.Stdout()
	switch {
	case req.Capabilities.Supports(capability.Sideband64k):
		d := sideband.NewDemuxer(sideband.Sideband64k, r)
		d.Progress = req.Progress
		r = d
	case req.Capabilities.Supports(capability.Sideband):
		d := sideband.NewDemuxer(sideband.Sideband, r)
		d.Progress = req.Progress
		r = d
	}
	report := packp.NewReportStatus()
	if err := report.Decode(r); err != nil {
		s.proc.Wait()
		return nil, fmt.Errorf("read push report: %w", err)
	}
	if err := report.Error(); err != nil {
		s.proc.Wait()
		return report, err
	}
	return report, s.proc.Wait()
}

// Close ends a session that pushed nothing (already up to date) the way git
// does: a flush packet tells receive-pack there are no commands.
func (s *receivePack) Close() error {
	if s.proc == nil || s.done {
		return nil
	}
	s.done = true
	stdin := s.proc.Stdin()
	stdin.Write(pktline.FlushPkt)
	stdin.Close()
	return s.proc.Wait()
}
