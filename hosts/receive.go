package hosts

import (
	"fmt"
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
for p in "$@"; do
  if [ ! -e "$shared/$p" ]; then
    printf "%s\n" "missing $shared/$p" >&2
    exit 1
  fi
  d=$tmp/r/$p
  mkdir -p -- "${d%/*}"
  rm -rf -- "$d"
  ln -s -- "$shared/$p" "$d"
done
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
	args := []string{l.ReleaseDir(name), sum, l.Shared()}
	for _, p := range links {
		c, err := relPath(p)
		if err != nil {
			return Cmd{}, fmt.Errorf("link %w", err)
		}
		args = append(args, c)
	}
	return named("receive", receiveScript, args...), nil
}
