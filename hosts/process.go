package hosts

import (
	"fmt"
	"path"
	"strconv"
	"time"
)

// waitStoppedPoll is how often WaitStopped looks at the process: a look
// is a kill -0, a read of /proc and an ls, so it can be frequent.
const waitStoppedPoll = 20 * time.Millisecond

const waitStoppedScript = `pid=$1 tries=$3
dir=$(cd -P -- "$2" 2>/dev/null && pwd -P) || dir=$2
gone() {
  kill -0 "$pid" 2>/dev/null || return 0
  [ -r "/proc/$pid/stat" ] || return 1
  read -r s <"/proc/$pid/stat" || return 0
  s=${s##*) }
  case $s in Z*|X*) return 0 ;; esac
  return 1
}
listening() {
  ls -l "/proc/$pid/fd" 2>/dev/null | awk -v net="/proc/$pid/net" "
    { i = index(\$NF, \"socket:[\"); if (i) { s = substr(\$NF, i + 8); sub(/].*/, \"\", s); socks[s] = 1 } }
    END {
      split(net \"/tcp \" net \"/tcp6\", fs, \" \")
      for (k = 1; k <= 2; k++)
        while ((getline line < fs[k]) > 0) {
          split(line, f, \" \")
          if (f[4] == \"0A\" && (f[10] in socks)) exit 0
        }
      exit 1
    }"
}
unsure() {
  printf "%s\n" "$1" >&2
  exit 3
}
ours=no
for l in "/proc/$pid/exe" "/proc/$pid/cwd"; do
  t=$(readlink -- "$l" 2>/dev/null) || continue
  case $t in "$dir" | "$dir"/*) ours=yes ;; esac
done
if gone; then
  unsure "process $pid is gone"
fi
if [ "$ours" != yes ]; then
  unsure "process $pid does not run from $dir"
fi
if ! listening; then
  unsure "process $pid listens on no TCP port"
fi
while :; do
  sleep 0.02 2>/dev/null || sleep 1
  if ! listening; then
    if ! gone; then
      unsure "process $pid no longer listens on any TCP port"
    fi
    exit 0
  fi
  tries=$((tries - 1))
  if [ "$tries" -le 0 ]; then
    printf "%s\n" "process $pid still running" >&2
    exit 1
  fi
done`

// WaitStoppedUnsure is WaitStopped's exit status when what it saw does not
// prove the app down: ask the app (its ping).
const WaitStoppedUnsure = 3

// WaitStopped returns the command that waits on the host, looking every
// 20 ms with shell builtins, /proc and one ls, for process pid, the node
// of an app being stopped, to stop serving. It watches only a process that
// runs from dir (its executable or working directory lies there, as a
// release's bundled ERTS does) and listens on some TCP port at its first
// look; any other is not known to be the node, and it exits
// WaitStoppedUnsure at once: a number that merely looked like a pid proves
// nothing. Watching, it exits 0 when the process is gone, and
// WaitStoppedUnsure when it no longer listens on any TCP port (an Erlang
// node closes its distribution listener, and so stops answering a ping,
// well before its VM has unloaded its code and exited): then ask the app
// (its ping). It exits 1 when the process still listens after about limit.
// A look costs a few milliseconds, where asking the app boots a VM.
// Without /proc it is unsure at once. pid must be above 1: kill -0 with 0
// or -1 would ask about process groups or every process.
func WaitStopped(pid int, dir string, limit time.Duration) (Cmd, error) {
	if pid <= 1 {
		return Cmd{}, fmt.Errorf("wait for process %d: want a process id above 1", pid)
	}
	if !path.IsAbs(dir) {
		return Cmd{}, fmt.Errorf("wait for process %d: directory %q is not absolute", pid, dir)
	}
	tries := max(int(limit/waitStoppedPoll), 1)
	return named("wait-stopped", waitStoppedScript, strconv.Itoa(pid), path.Clean(dir), strconv.Itoa(tries)), nil
}
