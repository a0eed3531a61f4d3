// Package gitsrc is the app repository as the operator sees it: a local bare
// mirror of the tracked branch kept in state_dir, the branch head asked of
// the remote cheaply, files read at a commit without a work tree, and
// content fingerprints of the files a build step depends on.
package gitsrc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	"github.com/go-git/go-git/v5/storage/memory"
)

// remoteName is the mirror's only remote.
const remoteName = "origin"

// Mirror is a bare repository holding the tracked branch of the app repo,
// fetched incrementally: single branch, no tags, never shallow (go-git
// cannot fetch incrementally into a shallow clone, go-git#305).
type Mirror struct {
	// url is what go-git is given: the repository's URL without the
	// credentials of an http(s) URL, which are in auth instead, so that no
	// error of go-git's or net/http's can carry them.
	url string
	// shown is the URL as errors name it, through RedactURL.
	shown  string
	branch string
	dir    string
	auth   transport.AuthMethod

	mu   sync.RWMutex // guards repo; Fetch holds it to fetch
	repo *git.Repository
}

// Options configures a Mirror.
type Options struct {
	// URL is the app repo: a local path, file://, https:// or ssh URL. The
	// userinfo of an http(s) URL (a token) is sent as basic auth and kept
	// out of the mirror's config; errors show the URL through RedactURL.
	URL    string
	Branch string               // the tracked branch, e.g. main
	Dir    string               // where the bare mirror lives (made when missing)
	Auth   transport.AuthMethod // nil for local and public repositories
}

// Open opens the mirror at opts.Dir, creating an empty one when missing. It
// does not touch the network: Fetch does.
func Open(opts Options) (*Mirror, error) {
	if opts.URL == "" || opts.Branch == "" || opts.Dir == "" {
		return nil, errors.New("gitsrc: mirror needs a URL, a branch and a directory")
	}
	if !plumbing.NewBranchReferenceName(opts.Branch).IsBranch() || strings.ContainsAny(opts.Branch, " ~^:?*[\\") {
		return nil, fmt.Errorf("gitsrc: %q is not a branch name", opts.Branch)
	}
	remote, auth, err := splitCredentials(opts.URL, opts.Auth)
	if err != nil {
		return nil, err
	}
	m := &Mirror{url: remote, shown: RedactURL(opts.URL), branch: opts.Branch, dir: opts.Dir, auth: auth}
	repo, err := git.PlainOpen(opts.Dir)
	if errors.Is(err, git.ErrRepositoryNotExists) {
		if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
			return nil, fmt.Errorf("gitsrc: mirror %s: %w", opts.Dir, err)
		}
		repo, err = git.PlainInit(opts.Dir, true)
	}
	if err != nil {
		return nil, fmt.Errorf("gitsrc: open mirror %s: %w", opts.Dir, err)
	}
	cfg := &config.RemoteConfig{
		Name: remoteName,
		URLs: []string{m.url},
		// The branch lands on refs/heads/<branch> of the mirror itself, so
		// the mirror's own head moves with each fetch; a bare single-branch
		// clone's default refspec never would.
		Fetch: []config.RefSpec{m.refSpec()},
	}
	if r, err := repo.Remote(remoteName); err == nil {
		// Compared without credentials: a mirror made before they were
		// kept out of it holds them, and a rotated token is the same
		// repository.
		was := r.Config().URLs[0]
		if stripped, _, err := splitCredentials(was, nil); err == nil {
			was = stripped
		}
		if was != m.url {
			return nil, fmt.Errorf("gitsrc: mirror %s follows %s, not %s: remove it or use another state_dir", opts.Dir, RedactURL(r.Config().URLs[0]), m.shown)
		}
	} else if _, err := repo.CreateRemote(cfg); err != nil {
		return nil, fmt.Errorf("gitsrc: mirror %s: %w", opts.Dir, err)
	}
	m.repo = repo
	return m, nil
}

func (m *Mirror) ref() plumbing.ReferenceName { return plumbing.NewBranchReferenceName(m.branch) }

func (m *Mirror) refSpec() config.RefSpec {
	return config.RefSpec("+" + m.ref().String() + ":" + m.ref().String())
}

// Branch is the tracked branch.
func (m *Mirror) Branch() string { return m.branch }

// Dir is the mirror's bare repository.
func (m *Mirror) Dir() string { return m.dir }

// Repository is the mirror's repository, for pushing its objects onwards.
func (m *Mirror) Repository() *git.Repository {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.repo
}

// RemoteHead asks the remote for the branch head without fetching anything:
// an ls-remote, about a millisecond for a local repository.
func (m *Mirror) RemoteHead(ctx context.Context) (string, error) {
	remote := git.NewRemote(memory.NewStorage(), &config.RemoteConfig{Name: remoteName, URLs: []string{m.url}})
	refs, err := remote.ListContext(ctx, &git.ListOptions{Auth: m.auth})
	if err != nil {
		return "", fmt.Errorf("gitsrc: ls-remote %s: %w", m.shown, err)
	}
	for _, r := range refs {
		if r.Name() == m.ref() {
			return r.Hash().String(), nil
		}
	}
	return "", fmt.Errorf("gitsrc: %s has no branch %s", m.shown, m.branch)
}

// LocalHead is the branch head the mirror holds, or "" before the first
// fetch.
func (m *Mirror) LocalHead() string {
	r, err := m.Repository().Reference(m.ref(), true)
	if err != nil {
		return ""
	}
	return r.Hash().String()
}

// Fetch brings the mirror up to the remote's branch head and returns it. It
// asks the remote first and fetches only when the head moved, so an idle
// poll costs one ls-remote.
//
// The daemon and CLI commands (status, plan) may share a mirror: a file lock
// keeps two processes from fetching into it at once, and the repository is
// opened afresh, because go-git caches the list of packs it has seen and
// would not find objects another process fetched.
func (m *Mirror) Fetch(ctx context.Context) (string, error) {
	head, err := m.RemoteHead(ctx)
	if err != nil {
		return "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	unlock, err := lockFile(filepath.Join(m.dir, "operator-fetch.lock"))
	if err != nil {
		return "", fmt.Errorf("gitsrc: lock mirror %s: %w", m.dir, err)
	}
	defer unlock()
	repo, err := git.PlainOpen(m.dir)
	if err != nil {
		return "", fmt.Errorf("gitsrc: open mirror %s: %w", m.dir, err)
	}
	m.repo = repo
	if r, err := repo.Reference(m.ref(), true); err == nil && r.Hash().String() == head {
		return head, nil
	}
	err = repo.FetchContext(ctx, &git.FetchOptions{
		RemoteName: remoteName,
		// Not the URL in the mirror's config, which may predate the
		// credentials' move to auth (or hold a token since rotated).
		RemoteURL: m.url,
		RefSpecs:  []config.RefSpec{m.refSpec()},
		Tags:      git.NoTags,
		Auth:      m.auth,
		Force:     true,
	})
	if err != nil && !errors.Is(err, git.NoErrAlreadyUpToDate) {
		return "", fmt.Errorf("gitsrc: fetch %s from %s: %w", m.branch, m.shown, err)
	}
	r, err := repo.Reference(m.ref(), true)
	if err != nil {
		return "", fmt.Errorf("gitsrc: %s after fetch: %w", m.branch, err)
	}
	return r.Hash().String(), nil
}

// redacted replaces a secret wherever RedactURL prints one.
const redacted = "REDACTED"

// RedactURL is a repository URL as the operator prints it, in logs, errors,
// the API and the pages: the password of a URL's userinfo is replaced by
// REDACTED, and so is the whole userinfo of an http(s) URL without a
// password (https://<token>@github.com/… is how GitHub takes a token). An
// SSH user name (ssh://git@host/…) is kept: it is not a secret. An scp-like
// address (git@host:path) and a local path have no password and come back
// unchanged.
//
// It reads the text as written, without decoding or parsing it as net/url
// would, so that a password holding an unescaped "@", ":", "/" or "#" (which
// url.Parse rejects, quoting the URL whole in its error) is replaced all
// the same: everything between "://" and the last "@" is the userinfo. A
// URL whose path holds an "@" shows less than it could, never more.
func RedactURL(s string) string {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok || !isScheme(scheme) || strings.HasPrefix(rest, "/") {
		return s
	}
	at := strings.LastIndexByte(rest, '@')
	if at <= 0 {
		return s
	}
	userinfo, host := rest[:at], rest[at:]
	user, password, hasPassword := strings.Cut(userinfo, ":")
	switch {
	case hasPassword && password != "":
		userinfo = user + ":" + redacted
	case !hasPassword && isHTTP(scheme):
		userinfo = redacted
	}
	return scheme + "://" + userinfo + host
}

// isScheme reports whether s is a URL scheme (RFC 3986: a letter, then
// letters, digits, "+", "-" and ".").
func isScheme(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range []byte(s) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return true
}

func isHTTP(scheme string) bool {
	return strings.EqualFold(scheme, "http") || strings.EqualFold(scheme, "https")
}

// splitCredentials takes the userinfo out of an http(s) repository URL and
// returns the URL without it (as net/url writes it), with the basic auth
// go-git would have made of it (auth, when set, wins as it does in go-git).
// Other URLs come back as they are: an SSH URL's user is needed in it, and
// go-git's SSH transport never uses a password from the URL.
func splitCredentials(raw string, auth transport.AuthMethod) (string, transport.AuthMethod, error) {
	scheme, _, ok := strings.Cut(raw, "://")
	if !ok || !isHTTP(scheme) {
		return raw, auth, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url.Parse's error quotes raw, password and all.
		return "", nil, fmt.Errorf("gitsrc: repository %s is not a valid URL (in a password, characters such as / # ? must be percent-encoded)", RedactURL(raw))
	}
	if u.User == nil {
		return u.String(), auth, nil
	}
	if auth == nil && u.User.Username() != "" {
		password, _ := u.User.Password()
		auth = &githttp.BasicAuth{Username: u.User.Username(), Password: password}
	}
	u.User = nil
	return u.String(), auth, nil
}

// lockFile takes an exclusive flock on path, waiting for it; the kernel
// drops it if the process dies.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// Commit is what the operator shows of a commit.
type Commit struct {
	SHA     string
	Subject string // first line of the message
	Author  string
}

// Commit looks sha up in the mirror.
func (m *Mirror) Commit(sha string) (Commit, error) {
	c, err := m.commit(sha)
	if err != nil {
		return Commit{}, err
	}
	subject, _, _ := strings.Cut(c.Message, "\n")
	return Commit{SHA: c.Hash.String(), Subject: subject, Author: c.Author.Name}, nil
}

func (m *Mirror) commit(sha string) (*object.Commit, error) {
	if !plumbing.IsHash(sha) {
		return nil, fmt.Errorf("gitsrc: %q is not a full commit SHA", sha)
	}
	c, err := m.Repository().CommitObject(plumbing.NewHash(sha))
	if err != nil {
		return nil, fmt.Errorf("gitsrc: commit %s: %w", sha, err)
	}
	return c, nil
}

// ReadFile returns the file at name in commit sha.
func (m *Mirror) ReadFile(sha, name string) ([]byte, error) {
	c, err := m.commit(sha)
	if err != nil {
		return nil, err
	}
	f, err := c.File(name)
	if err != nil {
		return nil, fmt.Errorf("gitsrc: %s at %s: %w", name, sha[:12], err)
	}
	s, err := f.Contents()
	if err != nil {
		return nil, fmt.Errorf("gitsrc: %s at %s: %w", name, sha[:12], err)
	}
	return []byte(s), nil
}

// Resolve turns rev, a full commit SHA or an unambiguous prefix of at least
// 7 hex digits (as `git log --oneline` prints them), into the full SHA of a
// commit the mirror holds. Branch and tag names are not accepted: a person
// naming a release names a commit.
func (m *Mirror) Resolve(rev string) (string, error) {
	rev = strings.ToLower(strings.TrimSpace(rev))
	if len(rev) < 7 || len(rev) > 40 || strings.Trim(rev, "0123456789abcdef") != "" {
		return "", fmt.Errorf("gitsrc: %q is not a commit SHA (7 to 40 hex digits)", rev)
	}
	if len(rev) == 40 {
		c, err := m.commit(rev)
		if err != nil {
			return "", err
		}
		return c.Hash.String(), nil
	}
	iter, err := m.Repository().CommitObjects()
	if err != nil {
		return "", fmt.Errorf("gitsrc: resolve %s: %w", rev, err)
	}
	var all []string
	err = iter.ForEach(func(c *object.Commit) error {
		all = append(all, c.Hash.String())
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("gitsrc: resolve %s: %w", rev, err)
	}
	return m.pick(rev, all)
}

// pick returns the one SHA of all that starts with prefix.
func (m *Mirror) pick(prefix string, all []string) (string, error) {
	var found []string
	for _, sha := range all {
		if strings.HasPrefix(sha, prefix) {
			found = append(found, sha)
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("gitsrc: no commit %s in the mirror of %s", prefix, m.branch)
	case 1:
		return found[0], nil
	}
	sort.Strings(found)
	return "", fmt.Errorf("gitsrc: %s is ambiguous: it starts %s; give more digits", prefix, strings.Join(found, ", "))
}

// IsAncestor reports whether commit a is an ancestor of (or equal to) b.
func (m *Mirror) IsAncestor(a, b string) (bool, error) {
	ca, err := m.commit(a)
	if err != nil {
		return false, err
	}
	cb, err := m.commit(b)
	if err != nil {
		return false, err
	}
	if ca.Hash == cb.Hash {
		return true, nil
	}
	return ca.IsAncestor(cb)
}

// Fingerprint is a digest of the content of every file of commit sha whose
// path matches one of patterns (path.Match syntax; a pattern naming a
// directory covers what is under it). A build step with when_changed runs
// again only when its fingerprint differs from the one recorded at its last
// success. The fingerprint comes from blob hashes in the tree, so it costs no
// file reads and no round trip to the build host.
func (m *Mirror) Fingerprint(sha string, patterns []string) (string, error) {
	c, err := m.commit(sha)
	if err != nil {
		return "", err
	}
	tree, err := c.Tree()
	if err != nil {
		return "", fmt.Errorf("gitsrc: tree of %s: %w", sha, err)
	}
	// Tree entries carry each file's hash and mode: walking them reads
	// the trees only, never a file's content (tree.Files would inflate
	// every blob of the commit).
	var lines []string
	w := object.NewTreeWalker(tree, true, nil)
	defer w.Close()
	for {
		name, entry, err := w.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", fmt.Errorf("gitsrc: files of %s: %w", sha, err)
		}
		if !entry.Mode.IsFile() {
			continue
		}
		for _, p := range patterns {
			if matches(p, name) {
				lines = append(lines, name+"\x00"+entry.Hash.String()+"\x00"+entry.Mode.String())
				break
			}
		}
	}
	sort.Strings(lines)
	h := sha256.New()
	for _, p := range patterns {
		fmt.Fprintf(h, "pattern %s\n", p)
	}
	for _, l := range lines {
		fmt.Fprintf(h, "%s\n", l)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func matches(pattern, name string) bool {
	pattern = strings.TrimSuffix(strings.TrimPrefix(pattern, "./"), "/")
	if ok, _ := path.Match(pattern, name); ok {
		return true
	}
	return strings.HasPrefix(name, pattern+"/")
}
