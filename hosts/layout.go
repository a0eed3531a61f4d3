package hosts

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/clusterops/operator/manifests"
)

// Layout builds the commands that manage the release layout under one
// deploy_to (PRODUCT.md §3):
//
//	<deploy_to>/releases/<sha>   one unpacked release per commit
//	<deploy_to>/current          symlink to the live release
//	<deploy_to>/shared/          files every release links to
//
// Builders only return Cmd values; a Pool runs them. Every path and name is
// passed to a constant script as a positional parameter, never spliced into
// shell code, and every builder refuses a name that could leave the layout.
type Layout struct {
	// DeployTo is the absolute directory of the app on the host. It must be
	// absolute because symlinks (current, shared links) hold it.
	DeployTo string
}

// Release is one release directory found on a host.
type Release struct {
	// Name is the directory's name under releases/: the commit SHA.
	Name string
	// Modified is the directory's modification time. Unpacking sets it and
	// SwitchThen refreshes it, so the newest is the last staged or switched to.
	Modified time.Time
}

func (l Layout) root() (string, error) {
	return manifests.CleanDeployTo(l.DeployTo)
}

// Releases returns the directory that holds every release.
func (l Layout) Releases() string { return path.Join(path.Clean(l.DeployTo), "releases") }

// ReleaseDir returns the directory of release name.
func (l Layout) ReleaseDir(name string) string { return path.Join(l.Releases(), name) }

// Tarball returns where the artifact of release name is staged before it is
// unpacked: beside the release directories, which Observe and the
// release count ignore (it is a file) and Prune removes with its release.
func (l Layout) Tarball(name string) string { return l.ReleaseDir(name) + ".tar.gz" }

// Current returns the path of the symlink to the live release.
func (l Layout) Current() string { return path.Join(path.Clean(l.DeployTo), "current") }

// Shared returns the directory that release links point into.
func (l Layout) Shared() string { return path.Join(path.Clean(l.DeployTo), "shared") }

// validRelease refuses a release name that is not one path component, or is
// hidden: hidden names under releases/ are this package's temporaries.
func validRelease(name string) error {
	switch {
	case name == "":
		return errors.New("release name is empty")
	case name == "." || name == "..", strings.HasPrefix(name, "."):
		return fmt.Errorf("release name %q starts with a dot", name)
	case strings.ContainsAny(name, "/\n\x00"):
		return fmt.Errorf("release name %q holds a slash, newline or NUL", name)
	}
	return nil
}

// script makes the Cmd that runs one of this package's constant scripts with
// args as its positional parameters ($1...): the data never becomes code.
func script(s string, args ...string) Cmd {
	return Cmd{Args: append([]string{"sh", "-c", s, "sh"}, args...)}
}

// named is script with a Label: the builder's name and its parameters say
// more in a log or an error than the script's text does.
func named(name, s string, args ...string) Cmd {
	c := script(s, args...)
	var b strings.Builder
	b.WriteString(name)
	for _, a := range args {
		b.WriteString(" ")
		b.WriteString(Quote(a))
	}
	c.Label = b.String()
	return c
}

// Prepare makes releases/ and shared/, so the later steps can assume them.
func (l Layout) Prepare() (Cmd, error) {
	if _, err := l.root(); err != nil {
		return Cmd{}, err
	}
	return Cmd{Args: []string{"mkdir", "-p", "--", l.Releases(), l.Shared()}}, nil
}

const unpackScript = `set -e
if [ -d "$1" ]; then exit 0; fi
tmp=$(mktemp -d "${1%/*}/.${1##*/}.unpack.XXXXXX")
cleanup() { rm -rf -- "$tmp"; }
trap cleanup EXIT
trap "exit 143" TERM HUP INT
tar -xzf - -C "$tmp" <"$2"
chmod 755 "$tmp"
mv -T -- "$tmp" "$1"
trap - EXIT`

// Unpack unpacks the gzipped tarball at path tarball (on the host) as release
// name. It unpacks into a hidden temporary directory beside the release and
// renames it into place, so a release directory is never half-unpacked; an
// existing release directory is left as it is, so staging can be repeated.
// The tarball is read from stdin of tar, so no name of it is taken for an
// option or a remote archive (GNU tar's host:path).
func (l Layout) Unpack(name, tarball string) (Cmd, error) {
	if _, err := l.root(); err != nil {
		return Cmd{}, err
	}
	if err := validRelease(name); err != nil {
		return Cmd{}, err
	}
	return named("unpack", unpackScript, l.ReleaseDir(name), localPath(tarball)), nil
}

// linkLoop makes "$into/$p" a link to "$shared/$p" for every argument p,
// stopping at a shared file that does not exist. The scripts that make a
// release end with it.
const linkLoop = `for p in "$@"; do
  if [ ! -e "$shared/$p" ]; then
    printf "%s\n" "missing $shared/$p" >&2
    exit 1
  fi
  d=$into/$p
  [ -d "${d%/*}" ] || mkdir -p -- "${d%/*}"
  if [ -e "$d" ] || [ -L "$d" ]; then rm -rf -- "$d"; fi
  ln -s -- "$shared/$p" "$d"
done`

const linkScript = `set -e
into=$1 shared=$2
shift 2
` + linkLoop

// LinkShared makes <release>/<p> a symlink to <deploy_to>/shared/<p> for
// every p of paths, making parent directories and replacing whatever the
// tarball had there. A shared file that does not exist stops it with an
// error naming it: a release without its cookie or secrets must not start.
func (l Layout) LinkShared(name string, paths []string) (Cmd, error) {
	if _, err := l.root(); err != nil {
		return Cmd{}, err
	}
	if err := validRelease(name); err != nil {
		return Cmd{}, err
	}
	links, err := linkArgs(paths)
	if err != nil {
		return Cmd{}, err
	}
	return named("link-shared", linkScript, append([]string{l.ReleaseDir(name), l.Shared()}, links...)...), nil
}

// linkArgs checks release.links and cleans them into the arguments of
// linkLoop.
func linkArgs(links []string) ([]string, error) {
	var args []string
	for _, p := range links {
		c, err := manifests.CleanReleasePath(p)
		if err != nil {
			return nil, fmt.Errorf("link %w", err)
		}
		args = append(args, c)
	}
	return args, nil
}

const writeScript = `set -e
d=${1%/*}
mkdir -p -- "$d"
tmp=$(mktemp "$d/.${1##*/}.XXXXXX")
cleanup() { rm -f -- "$tmp"; }
trap cleanup EXIT
trap "exit 143" TERM HUP INT
cat >"$tmp"
sum=$(sha256sum <"$tmp")
sum=${sum%% *}
if [ "$sum" != "$3" ]; then
  printf "%s\n" "received bytes have sha256 $sum, want $3" >&2
  exit 1
fi
chmod "$2" "$tmp"
mv -fT -- "$tmp" "$1"
trap - EXIT`

// WriteFile returns the command that writes its stdin to path with mode,
// when the bytes received hash to sum (hex SHA-256): into a hidden
// temporary file beside path, checked, then renamed over it. Readers see the
// old file or the new one, never a part, and a stream cut short (the end of
// stdin is all the remote side learns) never takes the name. Parent
// directories are made.
func WriteFile(path string, mode fs.FileMode, sum string) Cmd {
	return named("write-file", writeScript, fileArg(path), fmt.Sprintf("%04o", mode.Perm()), sum)
}

// fileArg keeps a slash in path, which the scripts split at to find the
// directory.
func fileArg(p string) string {
	if strings.Contains(p, "/") {
		return localPath(p)
	}
	return "./" + p
}

// writeRenderedScript is writeScript for a rendered file "$5" of a
// release whose index is "$4": it first takes the path out of the index,
// if there is one, so that the index never says the artifact's bytes are
// where the rendered file is (a file written and an index left as it was,
// should the write fail, costs only that file's sending next time); "$4"
// is empty for a path no index can hold.
const writeRenderedScript = "set -e\n" + dropIndexed + `
if [ -n "$4" ] && [ -f "$4" ]; then
  drop_indexed "$4" "$5"
fi
` + writeScript

// WriteFile returns the command that writes its stdin to rel, a path
// relative to release name (a rendered per-node file), as the package-level
// WriteFile does, and leaves rel out of the release's index (IndexPath),
// when it has one: a later delta against this release sends the
// artifact's file there instead of keeping this node's rendering. Write
// the index first (WriteIndex).
func (l Layout) WriteFile(name, rel string, mode fs.FileMode, sum string) (Cmd, error) {
	if _, err := l.root(); err != nil {
		return Cmd{}, err
	}
	if err := validRelease(name); err != nil {
		return Cmd{}, err
	}
	c, err := manifests.CleanReleasePath(rel)
	if err != nil {
		return Cmd{}, fmt.Errorf("file %w", err)
	}
	index := l.IndexPath(name)
	if _, ok := manifests.CleanIndexPath(c); !ok {
		index = "" // no index holds such a path (Deltas refuses it)
	}
	return named("write-file", writeRenderedScript, fileArg(path.Join(l.ReleaseDir(name), c)), fmt.Sprintf("%04o", mode.Perm()), sum, index, c), nil
}

const sumScript = `if [ -e "$1" ]; then
  sum=$(sha256sum <"$1") || exit 1
  printf "%s\n" "${sum%% *}"
fi`

// Sum returns the command that prints the hex SHA-256 of the file at path,
// or nothing when there is no file there.
func Sum(path string) Cmd { return named("sha256", sumScript, fileArg(path)) }

// switchScript points current at "$2" under deploy_to "$1", first writing
// "$3" to the record file "$4" when "$3" is set.
const switchScript = `set -e
if [ ! -d "$2" ]; then
  printf "%s\n" "$2 is not staged" >&2
  exit 1
fi
if [ -n "$3" ]; then
  mkdir -p -- "${4%/*}"
  printf "%s\n" "$3" >"$4.tmp.$$"
  mv -f -- "$4.tmp.$$" "$4"
fi
touch -c -- "$2"
tmp=$1/.current.$$
ln -sfn -- "$2" "$tmp"
mv -fT -- "$tmp" "$1/current"`

// switchThenScript runs switchScript, then the command "$6"... in the
// directory "$5" (none when empty). Past the switch nothing stops it with a
// non-zero status: set -e ends with the switch.
const switchThenScript = switchScript + `
set +e
dir=$5
shift 5
if [ -n "$dir" ] && ! cd -P -- "$dir" 2>/dev/null; then
  printf "%s\n" "start: cannot enter $dir" >&2
  exit 0
fi
"$@"
status=$?
if [ "$status" -ne 0 ]; then
  printf "%s\n" "start: exit status $status" >&2
fi
exit 0`

// SwitchThen points current at release name in one rename (a symlink made
// under a temporary name, then moved over current), so current always names
// a whole release, and then, in the same session, runs then (such as the
// release's start, a ShellCmd in current): one round trip where a switch and
// a start would take two. The switch refuses a release that is not staged,
// and touches the release so Observe orders it as the newest. With previous
// and record set it first records previous, the release current pointed at,
// in the file at record (absolute; written whole under a temporary name,
// then renamed); both are empty for no record.
//
// The result exits non-zero only when the switch failed, and then nothing
// of then ran. Once current is switched it exits 0 whatever then does (a
// start's exit status says little; the caller checks the node itself): when
// then exits non-zero it prints "start: exit status N" on stderr, and when
// then.Dir cannot be entered it prints a line saying so and runs nothing.
// then.Dir is entered after the switch (cd -P, so current is resolved to the
// new release), and then.Env is the result's Env: the runner exports it
// before the whole script, whose switch reads none of its variables.
func (l Layout) SwitchThen(name, previous, record string, then Cmd) (Cmd, error) {
	root, err := l.root()
	if err != nil {
		return Cmd{}, err
	}
	if err := validRelease(name); err != nil {
		return Cmd{}, err
	}
	if previous != "" || record != "" {
		if err := validRelease(previous); err != nil {
			return Cmd{}, fmt.Errorf("previous %w", err)
		}
		if !path.IsAbs(record) {
			return Cmd{}, fmt.Errorf("switch record %q: want an absolute path", record)
		}
		record = path.Clean(record)
	}
	if len(then.Args) == 0 {
		return Cmd{}, errors.New("switch then: command has no program")
	}
	args := append([]string{root, l.ReleaseDir(name), previous, record, localPath(then.Dir)}, then.Args...)
	c := script(switchThenScript, args...)
	c.Env = then.Env
	c.Label = "switch " + Quote(root) + " " + Quote(l.ReleaseDir(name))
	if previous != "" {
		c.Label += " from " + Quote(previous) + " " + Quote(record)
	}
	c.Label += " && " + then.Redacted()
	return c, nil
}

// ParseCurrent reads where current points (Observe's first line) as the
// name of the live release,
// "" when there is none. A current that points outside releases/ (changed by
// hand) is an error: the host is not in a state the operator understands.
func (l Layout) ParseCurrent(out []byte) (string, error) {
	target := strings.TrimSuffix(string(out), "\n")
	if target == "" {
		return "", nil
	}
	dir, name := path.Split(strings.TrimRight(target, "/"))
	dir = strings.TrimSuffix(dir, "/")
	if dir != l.Releases() && dir != "releases" {
		return "", fmt.Errorf("%s points at %q, outside %s", l.Current(), target, l.Releases())
	}
	if err := validRelease(name); err != nil {
		return "", fmt.Errorf("%s points at %q: %w", l.Current(), target, err)
	}
	return name, nil
}

const observeScript = `set -e
export LC_ALL=C
cur=
if [ -L "$1/current" ]; then
  cur=$(readlink -- "$1/current")
elif [ -e "$1/current" ]; then
  printf "%s\n" "$1/current is not a symlink" >&2
  exit 1
fi
printf "%s %s\n" "${#cur}" "$cur"
if [ -d "$2" ]; then
  (
    cd -P -- "$2"
    for d in *; do
      if [ -d "$d" ] && [ ! -L "$d" ]; then
        stat -c "%Y %n" -- "$d"
      fi
    done
  )
fi
printf -- "--\n"
shift 2
for f in "$@"; do
  if [ -f "$f" ]; then
    printf "+%s\n" "$(head -n 1 -- "$f")"
  else
    printf -- "-\n"
  fi
done`

// Observed is what Observe saw on a host.
type Observed struct {
	// Current is the release current points at, "" when there is none.
	Current string
	// Releases are the release directories, newest first.
	Releases []Release
	// Records are the first lines of the record files Observe was given,
	// in order; "" for a file that does not exist.
	Records []string
}

// Observe returns the command that prints, in one session, where current
// points (for ParseCurrent), the release directories with their
// modification times (for ParseReleases) and the first
// line of each of the record files (absolute paths, such as the previous
// release's record); ParseObserve reads it.
func (l Layout) Observe(records ...string) (Cmd, error) {
	root, err := l.root()
	if err != nil {
		return Cmd{}, err
	}
	args := []string{root, l.Releases()}
	for _, r := range records {
		if !path.IsAbs(r) {
			return Cmd{}, fmt.Errorf("observe record %q: want an absolute path", r)
		}
		args = append(args, path.Clean(r))
	}
	return named("observe", observeScript, args...), nil
}

// ParseObserve reads Observe's output, given as many records.
func (l Layout) ParseObserve(out []byte, records int) (Observed, error) {
	var o Observed
	// Where current points comes first, as "<bytes> <target>", since
	// deploy_to may hold a newline.
	size, rest, _ := strings.Cut(string(out), " ")
	n, err := strconv.Atoi(size)
	if err != nil || n < 0 || n >= len(rest) || rest[n] != '\n' {
		return o, fmt.Errorf("observe: %.60q: no current line", out)
	}
	if o.Current, err = l.ParseCurrent([]byte(rest[:n])); err != nil {
		return o, err
	}
	rest = rest[n+1:]
	listing, recs, ok := strings.Cut(rest, "--\n")
	if !ok {
		return o, fmt.Errorf("observe: %.60q: no end of the release listing", rest)
	}
	if o.Releases, err = ParseReleases([]byte(listing)); err != nil {
		return o, err
	}
	lines := strings.Split(strings.TrimSuffix(recs, "\n"), "\n")
	if recs == "" {
		lines = nil
	}
	if len(lines) != records {
		return o, fmt.Errorf("observe: %d record lines, want %d", len(lines), records)
	}
	for _, line := range lines {
		switch {
		case line == "-":
			o.Records = append(o.Records, "")
		case strings.HasPrefix(line, "+"):
			o.Records = append(o.Records, strings.TrimSpace(line[1:]))
		default:
			return o, fmt.Errorf("observe: record line %q", line)
		}
	}
	return o, nil
}

// ParseReleases reads Observe's release listing ("<unix time> <name>" a
// line), newest first (then by name, so
// the order is total).
func ParseReleases(out []byte) ([]Release, error) {
	var rs []Release
	for line := range strings.SplitSeq(strings.TrimSuffix(string(out), "\n"), "\n") {
		if line == "" {
			continue
		}
		secs, name, ok := strings.Cut(line, " ")
		n, err := strconv.ParseInt(secs, 10, 64)
		if !ok || err != nil || name == "" {
			return nil, fmt.Errorf("release listing line %q: want <unix time> <name>", line)
		}
		rs = append(rs, Release{Name: name, Modified: time.Unix(n, 0)})
	}
	slices.SortFunc(rs, func(a, b Release) int {
		if c := b.Modified.Compare(a.Modified); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return rs, nil
}

const pruneScript = `if [ ! -d "$1" ]; then exit 0; fi
cd -P -- "$1" || exit 1
cur=$(readlink -- "$2" 2>/dev/null) || cur=
cur=${cur%/}
cur=${cur##*/}
shift 2
trash=.pruned.$$
status=0
for d in * .[!.]* ..?*; do
  if [ ! -e "$d" ] && [ ! -L "$d" ]; then continue; fi
  case $d in .pruned.*) continue ;; esac
  if [ "$d" = "$cur" ]; then continue; fi
  for k in "$@"; do
    if [ "$d" = "$k" ]; then continue 2; fi
  done
  if [ ! -d "$trash" ]; then mkdir -- "$trash" || exit 1; fi
  if mv -- "$d" "$trash/"; then printf "%s\n" "$d"; else status=1; fi
done
for d in .pruned.*; do
  if [ -d "$d" ]; then
    rm -rf -- .pruned.* </dev/null >/dev/null 2>&1 &
    break
  fi
done
exit $status`

// Prune removes everything under releases/ but the releases named in keep
// (computed by the caller from Observe: keep_releases, the current and
// the previous one) and their tarballs and indexes; leftovers of
// interrupted unpacks go too. Whatever current points at is kept even
// when keep forgets it. It prints each name it removed. It must not run
// while a release is being staged on the host (one deploy per environment
// at a time ensures that).
//
// A release is thousands of files, and unlinking them takes a tenth of a
// second or more: Prune moves what goes into a hidden directory
// (releases/.pruned.<pid>) at once, and leaves a process removing every
// such directory after the command ends, so a deploy does not wait for
// it. What a node stopped before it finished is removed by the next
// Prune; Observe lists no hidden name.
func (l Layout) Prune(keep []string) (Cmd, error) {
	if _, err := l.root(); err != nil {
		return Cmd{}, err
	}
	args := []string{l.Releases(), l.Current()}
	for _, k := range keep {
		if err := validRelease(k); err != nil {
			return Cmd{}, fmt.Errorf("keep %w", err)
		}
		args = append(args, k, k+".tar.gz", k+".index")
	}
	return named("prune", pruneScript, args...), nil
}

// ShellCmd returns the command that runs line, a release command of the
// manifest (such as `bin/chat eval 'Chat.Release.migrate()'`), through sh in
// dir with env. line is the user's own shell code and runs as such; dir and
// env are data, quoted like every other value.
func ShellCmd(dir, line string, env map[string]string) Cmd {
	return Cmd{Args: []string{"sh", "-c", line}, Env: env, Dir: dir}
}
