package hosts

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"strings"

	"github.com/clusterops/operator/manifests"
)

// Workspace builds the commands that manage the build host's persistent
// workspace (PRODUCT.md §3, step 2):
//
//	<dir>                        the work tree: a checkout of the commit being
//	                             built, a git work tree (its .git file names
//	                             repo.git/worktrees/build); _build, deps,
//	                             node_modules persist
//	<dir>.operator/repo.git      bare repository the operator pushes to
//	<dir>.operator/steps/<key>   content fingerprint of a step's inputs at its
//	                             last success
//	<dir>.operator/artifacts/<sha256>.tar.gz
//	                             artifacts, content-addressed
//	<dir>.operator/commits/<commit>
//	                             the sha256 of the artifact built from commit
//
// The index of the checkout lives beside the bare repository
// (repo.git/worktrees/build/index), so a checkout rewrites only the files
// that changed and Mix recompiles only those.
type Workspace struct {
	// Dir is build.dir: absolute, or relative to the build user's home.
	Dir string
}

func (w Workspace) dir() string   { return path.Clean(w.Dir) }
func (w Workspace) state() string { return w.dir() + ".operator" }

// Repo returns the bare repository that commits are pushed to.
func (w Workspace) Repo() string { return w.state() + "/repo.git" }

// ArtifactPath returns where the artifact with hex SHA-256 sum is kept.
func (w Workspace) ArtifactPath(sum string) string {
	return w.state() + "/artifacts/" + sum + ".tar.gz"
}

// ReadArtifact returns the command that prints the artifact with hex
// SHA-256 sum, for the operator to read it once (Deltas).
func (w Workspace) ReadArtifact(sum string) (Cmd, error) {
	if err := w.check(); err != nil {
		return Cmd{}, err
	}
	if !validSum(sum) {
		return Cmd{}, fmt.Errorf("read artifact: sha256 %q is not 64 lowercase hex digits", sum)
	}
	return Cmd{Args: []string{"cat", "--", localPath(w.ArtifactPath(sum))}}, nil
}

var (
	commitRE = regexp.MustCompile(`^[0-9a-f]{40}([0-9a-f]{24})?$`)
	sumRE    = regexp.MustCompile(`^[0-9a-f]{64}$`)
	keyRE    = regexp.MustCompile(`^[0-9A-Za-z_-]{1,64}$`)
)

func (w Workspace) check() error {
	if w.Dir == "" || strings.ContainsAny(w.Dir, "\x00\n") {
		return fmt.Errorf("build dir %q is empty or holds a NUL or newline", w.Dir)
	}
	if !manifests.ValidBuildDir(w.Dir) {
		return fmt.Errorf("build dir %q is not a directory of its own", w.Dir)
	}
	return nil
}

// prepareWorkspaceScript makes the work tree a linked worktree of the bare
// repository (what `git worktree add` makes, without its checkout): the
// work tree's .git file names <repo.git>/worktrees/build, which holds the
// work tree's HEAD and index and points back at it. So git run by a build
// step in the work tree answers for the commit being built (`git rev-parse
// HEAD`, `git describe --always`, `git log -1`), while the operator still
// pushes into the bare repository; a detached HEAD keeps receive-pack free
// to update any branch. A workspace made before (its index in repo.git
// itself) keeps that index, so no file is rewritten and Mix recompiles
// nothing more than the commit changed.
const prepareWorkspaceScript = `set -e
mkdir -p -- "$1" "$2/steps" "$2/artifacts" "$2/commits"
if [ ! -f "$2/repo.git/HEAD" ]; then
  git init -q --bare -- "$2/repo.git"
fi
dir=$(cd -- "$1" && pwd -P) state=$(cd -- "$2" && pwd -P) commit=$3
wt=$state/repo.git/worktrees/build
if [ ! -f "$wt/commondir" ] || [ ! -f "$wt/HEAD" ] || [ "$(cat -- "$dir/.git" 2>/dev/null)" != "gitdir: $wt" ]; then
  mkdir -p -- "$wt"
  [ -f "$wt/HEAD" ] || cp -- "$state/repo.git/HEAD" "$wt/HEAD"
  if [ -f "$state/repo.git/index" ] && [ ! -f "$wt/index" ]; then
    mv -- "$state/repo.git/index" "$wt/index"
  fi
  printf "../..\n" >"$wt/commondir"
  printf "%s\n" "$dir/.git" >"$wt/gitdir"
  printf "gitdir: %s\n" "$wt" >"$dir/.git"
fi
shift 3
if [ "$#" -eq 0 ]; then exit 0; fi
"$@"
exec git -C "$dir" checkout -q -f --detach "$commit" >&2`

// Prepare makes the work tree and the operator's state beside it, with an
// empty bare repository the first time.
func (w Workspace) Prepare() (Cmd, error) {
	if err := w.check(); err != nil {
		return Cmd{}, err
	}
	return script(prepareWorkspaceScript, localPath(w.dir()), localPath(w.state()), ""), nil
}

// PushSession returns the one command a build's push runs in: Prepare,
// then argv (the git-receive-pack the push speaks to), then, when that
// succeeded, the checkout of commit in the work tree, so a build waits for
// no session of its own to prepare the workspace or check the commit out.
// The checkout prints on stderr only: stdout carries receive-pack's
// protocol alone. The checkout's index lives beside the bare repository, so
// files the commit does not change keep their mtimes (Mix recompiles only
// what changed); untracked build products stay.
func (w Workspace) PushSession(commit string, argv ...string) (Cmd, error) {
	if err := w.check(); err != nil {
		return Cmd{}, err
	}
	if !commitRE.MatchString(commit) {
		return Cmd{}, fmt.Errorf("checkout %q: not a full commit SHA", commit)
	}
	if len(argv) == 0 {
		return Cmd{}, errors.New("push session: no command")
	}
	return named("push-then-checkout", prepareWorkspaceScript, append([]string{localPath(w.dir()), localPath(w.state()), commit}, argv...)...), nil
}

// Refresh returns the command that refreshes the checkout's index: git
// takes a file written in the same second as the index for possibly
// changed ("racily clean") and reads it whole at the next checkout, which
// after a first checkout is every file. Run a second or more after the
// checkout (once the build steps ran), it costs those reads once, off the
// next deploy's way.
func (w Workspace) Refresh() (Cmd, error) {
	if err := w.check(); err != nil {
		return Cmd{}, err
	}
	return Cmd{Args: []string{"git", "-C", localPath(w.dir()), "update-index", "-q", "--refresh"}}, nil
}

const readStepsScript = `cd -- "$1" 2>/dev/null || exit 0
for f in *; do
  [ -f "$f" ] && printf "%s %s\n" "$f" "$(cat -- "$f")"
done
exit 0`

// ReadSteps returns the command that prints "<key> <fingerprint>" for every
// step recorded as succeeded; ParseSteps reads it.
func (w Workspace) ReadSteps() (Cmd, error) {
	if err := w.check(); err != nil {
		return Cmd{}, err
	}
	return script(readStepsScript, localPath(w.state()+"/steps")), nil
}

// ParseSteps reads ReadSteps' output into key → fingerprint.
func ParseSteps(out []byte) map[string]string {
	steps := map[string]string{}
	for line := range strings.SplitSeq(string(out), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok && keyRE.MatchString(k) {
			steps[k] = v
		}
	}
	return steps
}

const recordStepScript = `set -e
tmp="$1.tmp.$$"
printf "%s\n" "$2" >"$tmp"
mv -f -- "$tmp" "$1"`

// RecordStep records that the step with key succeeded with inputs of
// fingerprint. An empty fingerprint forgets the step, so that it runs next
// time (a step that failed after its inputs changed).
func (w Workspace) RecordStep(key, fingerprint string) (Cmd, error) {
	if err := w.check(); err != nil {
		return Cmd{}, err
	}
	if !keyRE.MatchString(key) {
		return Cmd{}, fmt.Errorf("step key %q: want letters, digits, _ or -", key)
	}
	p := localPath(w.state() + "/steps/" + key)
	if fingerprint == "" {
		return Cmd{Args: []string{"rm", "-f", "--", p}}, nil
	}
	if strings.ContainsAny(fingerprint, "\n\x00") {
		return Cmd{}, errors.New("step fingerprint holds a newline or NUL")
	}
	return script(recordStepScript, p, fingerprint), nil
}

const lookupArtifactScript = `[ -f "$1/commits/$2" ] || exit 0
sum=$(cat -- "$1/commits/$2")
[ -f "$1/artifacts/$sum.tar.gz" ] && printf "%s\n" "$sum"
exit 0`

// LookupArtifact returns the command that prints the sha256 of the
// artifact built from commit, or nothing when there is none to use.
func (w Workspace) LookupArtifact(commit string) (Cmd, error) {
	if err := w.check(); err != nil {
		return Cmd{}, err
	}
	if !commitRE.MatchString(commit) {
		return Cmd{}, fmt.Errorf("artifact of %q: not a full commit SHA", commit)
	}
	return script(lookupArtifactScript, localPath(w.state()), commit), nil
}

// ParseSum reads a command's output as one hex SHA-256, "" when empty.
func ParseSum(out []byte) (string, error) {
	s := strings.TrimSpace(string(out))
	if s == "" || sumRE.MatchString(s) {
		return s, nil
	}
	return "", fmt.Errorf("want a sha256, got %q", s)
}

// findArtifact leaves in $1 the one file of the work tree $dir matching
// $pattern (build.artifact), or fails saying how many match.
const findArtifact = `cd -- "$dir"
set -- $pattern
n=$#
if [ "$n" -eq 1 ] && [ ! -f "$1" ]; then n=0; fi
if [ "$n" -ne 1 ]; then
  printf "artifact: %s matches %s files, want exactly one\n" "$pattern" "$n" >&2
  exit 1
fi
`

const storeArtifactScript = `set -e
state=$(cd -- "$1" && pwd -P)
dir=$2 commit=$3 pattern=$4
` + findArtifact + `sum=$(sha256sum <"$1")
sum=${sum%% *}
dst="$state/artifacts/$sum.tar.gz"
if [ ! -f "$dst" ]; then
  cp -- "$1" "$dst.tmp.$$"
  mv -f -- "$dst.tmp.$$" "$dst"
fi
printf "%s\n" "$sum" >"$state/commits/$commit.tmp.$$"
mv -f -- "$state/commits/$commit.tmp.$$" "$state/commits/$commit"
printf "%s\n" "$sum"`

const readBuiltScript = `set -e
dir=$1 pattern=$2
` + findArtifact + `exec cat -- "$1"`

// StoreArtifact returns the command that finds the one file of the work
// tree matching glob (build.artifact), keeps it under its sha256 and records
// it as commit's artifact, printing the sha256. No match or several matches
// is an error saying how many. The glob is the only word the remote shell
// expands, inside the work tree; it must be a relative pattern of plain path
// characters, so splitting and expansion can do nothing else with it.
func (w Workspace) StoreArtifact(commit, glob string) (Cmd, error) {
	if err := w.checkGlob(glob); err != nil {
		return Cmd{}, err
	}
	if !commitRE.MatchString(commit) {
		return Cmd{}, fmt.Errorf("store artifact of %q: not a full commit SHA", commit)
	}
	return script(storeArtifactScript, localPath(w.state()), localPath(w.dir()), commit, glob), nil
}

// ReadBuilt returns the command that prints the one file of the work tree
// matching glob, as StoreArtifact finds it: the artifact just built, for
// the operator to read while the build host keeps it. What it printed is
// the artifact StoreArtifact keeps only if the sums agree: the reader
// checks.
func (w Workspace) ReadBuilt(glob string) (Cmd, error) {
	if err := w.checkGlob(glob); err != nil {
		return Cmd{}, err
	}
	return named("read-built", readBuiltScript, localPath(w.dir()), glob), nil
}

func (w Workspace) checkGlob(glob string) error {
	if err := w.check(); err != nil {
		return err
	}
	if !manifests.ValidArtifactGlob(glob) {
		return fmt.Errorf("artifact pattern %q: want a relative glob of plain path characters", glob)
	}
	return nil
}
