package hosts

import (
	"archive/tar"
	"bufio"
	"bytes"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"

	"github.com/clusterops/operator/manifests"
)

const receiveScript = `set -e
rel=$1 want=$2 shared=$3
shift 3
mkdir -p -- "${rel%/*}" "$shared"
if [ -d "$rel" ]; then
  cat >/dev/null
  exit 0
fi
tmp=$(mktemp -d "${rel%/*}/.${rel##*/}.unpack.XXXXXX")
cleanup() { rm -rf -- "$tmp"; }
trap cleanup EXIT
trap "exit 143" TERM HUP INT
mkdir -- "$tmp/r"
mkfifo -- "$tmp/fifo"
sha256sum <"$tmp/fifo" >"$tmp/sum" &
tee -- "$tmp/fifo" | {
  status=0
  tar -xzf - -C "$tmp/r" || status=$?
  cat >/dev/null
  exit "$status"
}
wait "$!"
read -r got _ <"$tmp/sum"
if [ "$got" != "$want" ]; then
  printf "%s\n" "received bytes have sha256 $got, want $want" >&2
  exit 1
fi
into=$tmp/r
` + linkLoop + `
chmod 755 "$tmp/r"
mv -T -- "$tmp/r" "$rel"`

// Receive returns the command that makes releases/ and shared/ if need be,
// and unpacks the gzipped tarball it reads on stdin as release name while
// hashing the bytes, then makes the shared
// links (as LinkShared does), and gives the release its name only when the
// bytes hash to sum (hex SHA-256) and every link is made: a stream cut
// short, a corrupt tarball or a missing shared file leave no release
// behind. The whole happens in a hidden temporary directory beside the
// release, renamed into place. An existing release directory is left as it
// is (its input is read and dropped), so it can be repeated. Streaming
// saves writing the tarball to disk and reading it back, and a session per
// step.
func (l Layout) Receive(name, sum string, links []string) (Cmd, error) {
	if _, err := l.root(); err != nil {
		return Cmd{}, err
	}
	if err := validRelease(name); err != nil {
		return Cmd{}, err
	}
	if !validSum(sum) {
		return Cmd{}, fmt.Errorf("receive %s: sha256 %q is not 64 lowercase hex digits", name, sum)
	}
	paths, err := linkArgs(links)
	if err != nil {
		return Cmd{}, err
	}
	return named("receive", receiveScript, append([]string{l.ReleaseDir(name), sum, l.Shared()}, paths...)...), nil
}

const receiveDeltaScript = `set -e
export LC_ALL=C
` + dropIndexed + `
rel=$1 shared=$2 n=$3
shift 3
mkdir -p -- "${rel%/*}" "$shared"
base=
while [ "$n" -gt 0 ]; do
  if [ -z "$base" ] && [ -f "$1.index" ] && [ -d "$1" ]; then base=$1; fi
  shift
  n=$((n - 1))
done
if [ -d "$rel" ]; then
  printf "have\n"
  exit 0
fi
if [ -z "$base" ]; then
  printf "none\n"
  exit 0
fi
printf "base %s %s\n" "${base##*/}" "$(wc -c <"$base.index")"
cat -- "$base.index"
read -r go
if [ "$go" != link ]; then
  exit 0
fi
tmp=$(mktemp -d "${rel%/*}/.${rel##*/}.unpack.XXXXXX")
cleanup() { rm -rf -- "$tmp"; }
trap cleanup EXIT
trap "exit 143" TERM HUP INT
cp -al -- "$base" "$tmp/release"
cd -- "$tmp/release"
find . ! -type d ! -type f -delete
find . -type f -print0 | sort -z >"$tmp/have"
mkdir -- "$tmp/in"
read -r answer isum
if [ "$answer" != delta ]; then
  exit 0
fi
tar -xizf - -C "$tmp/in"
keep=$tmp/in/operator/keep
missing=$(comm -z -13 -- "$tmp/have" "$keep" | tr "\0" " ")
if [ -n "$missing" ]; then
  printf "%s\n" "base ${base##*/} lacks files its index lists: $missing" >&2
  exit 1
fi
comm -z -23 -- "$tmp/have" "$keep" | xargs -0 -r rm -f --
find . -mindepth 1 -depth -type d -empty -delete
if [ -d "$tmp/in/release" ]; then
  cp -al --remove-destination -- "$tmp/in/release/." "$tmp/release/"
fi
printf "%s  %s\n" "$isum" "$tmp/in/operator/index" >>"$tmp/in/operator/check"
sha256sum --quiet --strict -c -- "$tmp/in/operator/check" >&2
if [ -d "$tmp/in/node" ]; then
  cp -al --remove-destination -- "$tmp/in/node/." "$tmp/release/"
  rendered=$(cd -- "$tmp/in/node" && find . -type f)
  drop_indexed "$tmp/in/operator/index" "$rendered"
fi
into=$tmp/release
` + linkLoop + `
cd /
mv -f -- "$tmp/in/operator/index" "$rel.index"
mv -T -- "$tmp/release" "$rel"`

// dropIndexed defines drop_indexed INDEX PATHS, which rewrites the release
// index at INDEX (under a temporary name, then renamed) without the lines
// of PATHS (one a line, relative to the release, "./" allowed): the
// rendered files, which do not hold what the index says of their path.
// A path is what follows the first two (directory) or three (file) fields
// of its line.
const dropIndexed = `drop_indexed() {
  LC_ALL=C DROP=$2 awk "
    BEGIN {
      n = split(ENVIRON[\"DROP\"], a, \"\n\")
      for (i = 1; i <= n; i++) {
        p = a[i]
        if (substr(p, 1, 2) == \"./\") p = substr(p, 3)
        drop[p] = 1
      }
    }
    FNR > 1 {
      p = \$0
      k = (\$1 == \"f\") ? 3 : 2
      for (i = 0; i < k; i++) p = substr(p, index(p, \" \") + 1)
      if (p in drop) next
    }
    { print }" <"$1" >"$1.tmp.$$"
  mv -f -- "$1.tmp.$$" "$1"
}`

// ReceiveDelta returns the command that makes release name as a delta
// against a release the node already holds, in one session with the
// operator:
//
//  1. It prints "have" when the release exists, "none" when none of bases
//     (release names, in order of preference) is held with its Index, and
//     ends; else "base <name> <bytes>" and that base's index (ReadOffer).
//  2. It reads a line: "link" (SendLink), and hard-links the base into a
//     temporary directory (without its symbolic links) and lists its files
//     while the operator reads the artifact and makes the Delta, then
//     reads another line: "delta
//     <sha256 of the new index>" and the payload follow (SendDelta), or
//     anything else, and it ends leaving nothing (the operator sends the
//     release whole instead, with Receive).
//  3. It keeps the files the payload lists to keep (sorted as bytes, as
//     comm wants) and no others (runtime
//     files, rendered files and links of the base go), adds the files sent,
//     checks those against the index's SHA-256s, then adds the node's own
//     files that follow the payload (NodeFiles) over them, makes the
//     shared links, keeps the index (IndexPath) without the paths of the
//     node's files and renames the release into place, as Receive does.
//
// Linking saves creating every file of a release, which costs far more
// than sending the few that changed, as rsync --link-dest does for backups.
// The linked files are trusted as they were checked when the base was
// staged: nothing writes into a release in place (rendered files are
// replaced by a rename, shared links made anew, and the app's own writes
// go to shared/ or elsewhere). A kept index lists only what holds the
// artifact's bytes: the paths of rendered files are left out of it, here
// and by Layout.WriteFile, so a later delta sends the artifact's file
// there rather than keep the base's rendering of another node's or
// commit's values. To have a node receive a release whole again, remove
// the index of its releases (IndexPath).
func (l Layout) ReceiveDelta(name string, bases, links []string) (Cmd, error) {
	if _, err := l.root(); err != nil {
		return Cmd{}, err
	}
	if err := validRelease(name); err != nil {
		return Cmd{}, err
	}
	args := []string{l.ReleaseDir(name), l.Shared(), strconv.Itoa(len(bases))}
	for _, b := range bases {
		if err := validRelease(b); err != nil {
			return Cmd{}, fmt.Errorf("base %w", err)
		}
		if b == name {
			return Cmd{}, fmt.Errorf("receive %s: a release cannot be its own base", name)
		}
		args = append(args, l.ReleaseDir(b))
	}
	paths, err := linkArgs(links)
	if err != nil {
		return Cmd{}, err
	}
	return named("receive-delta", receiveDeltaScript, append(args, paths...)...), nil
}

// Offer is what a ReceiveDelta command offers to build on.
type Offer struct {
	// Have is true when the node holds the release already.
	Have bool
	// Base names the release a delta is to be made against, with its
	// index as text; "" when the node holds none (it needs the release
	// whole).
	Base  string
	Index []byte
}

// maxIndex bounds an index read from a node: a release of a million paths.
// It bounds what is read, not what is allocated first: the buffer grows with
// the bytes that arrive (readIndex).
const maxIndex = 128 << 20

// indexChunk is the buffer readIndex starts with, and grows from by doubling.
const indexChunk = 16 << 10

// ReadOffer reads a ReceiveDelta command's offer from its stdout.
func ReadOffer(r *bufio.Reader) (Offer, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return Offer{}, fmt.Errorf("read offer: %w", err)
	}
	switch f := strings.Fields(line); {
	case len(f) == 1 && f[0] == "have":
		return Offer{Have: true}, nil
	case len(f) == 1 && f[0] == "none":
		return Offer{}, nil
	case len(f) == 3 && f[0] == "base" && validRelease(f[1]) == nil:
		n, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil || n < 0 || n > maxIndex {
			return Offer{}, fmt.Errorf("read offer: index size %q", f[2])
		}
		ix, err := readIndex(r, n)
		if err != nil {
			return Offer{}, fmt.Errorf("read offer: index of %s (%d bytes declared): %w", f[1], n, err)
		}
		return Offer{Base: f[1], Index: ix}, nil
	default:
		return Offer{}, fmt.Errorf("read offer: %.60q", line)
	}
}

// readIndex reads the n bytes of an index. Its buffer grows as they
// arrive, doubling up to n, so that a node declaring a large index and
// sending less costs what it sent, not what it declared. Fewer than n
// bytes is io.ErrUnexpectedEOF.
func readIndex(r io.Reader, n int64) ([]byte, error) {
	buf := make([]byte, 0, min(n, indexChunk))
	for int64(len(buf)) < n {
		if len(buf) == cap(buf) {
			next := make([]byte, len(buf), min(2*int64(cap(buf)), n))
			copy(next, buf)
			buf = next
		}
		m, err := io.ReadFull(r, buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return nil, fmt.Errorf("%d bytes read: %w", len(buf), err)
		}
	}
	return buf, nil
}

// SendLink tells a ReceiveDelta command to start linking its base.
func SendLink(w io.Writer) error {
	_, err := io.WriteString(w, "link\n")
	return err
}

// SendDelta writes the answer to an offer that brings d (after SendLink): the line, then
// the payload, then extra (NodeFiles: the node's own files, or nothing).
// A nil d declines it (the release is sent whole instead).
func SendDelta(w io.Writer, d *Delta, extra []byte) error {
	if d == nil {
		_, err := io.WriteString(w, "whole\n")
		return err
	}
	if _, err := io.WriteString(w, "delta "+d.IndexSum+"\n"); err != nil {
		return err
	}
	if _, err := w.Write(d.Payload); err != nil {
		return err
	}
	_, err := w.Write(extra)
	return err
}

// NodeFiles returns the files of one node (rendered per-node files: path
// in the release → content) as a gzipped tarball to follow a Delta's
// payload (SendDelta): they come with the release, each with mode 0644,
// in place of any file of that path, once the files the payload sent are
// checked (they are under node/, apart from the payload's release/: a
// rendered file often replaces one of the artifact's, such as a Mix
// release's releases/<vsn>/vm.args, and the check is of what the artifact
// has there). The node's index of the release leaves their paths out. The
// receiving tar reads the two tarballs as one, past the first one's end.
func NodeFiles(files map[string][]byte) ([]byte, error) {
	if len(files) == 0 {
		return nil, nil
	}
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	now := time.Now().Truncate(time.Second)
	for _, name := range slices.Sorted(maps.Keys(files)) {
		p, ok := manifests.CleanIndexPath(name)
		if !ok || p != name {
			return nil, fmt.Errorf("node file %q: want a clean relative path", name)
		}
		data := files[name]
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "node/" + p, Mode: 0o644, Size: int64(len(data)), ModTime: now}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// IndexPath returns where the Index of release name is kept on a node:
// beside it, so that pruning the release removes it too.
func (l Layout) IndexPath(name string) string { return l.ReleaseDir(name) + ".index" }

// WriteIndex returns the command that keeps the Index of release name, read
// on stdin with hex SHA-256 sum (after a whole release was received), and
// before its rendered files are written (Layout.WriteFile, which takes
// their paths out of it).
func (l Layout) WriteIndex(name, sum string) (Cmd, error) {
	if _, err := l.root(); err != nil {
		return Cmd{}, err
	}
	if err := validRelease(name); err != nil {
		return Cmd{}, err
	}
	return WriteFile(l.IndexPath(name), 0o644, sum), nil
}
