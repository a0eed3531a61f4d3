package hosts

import (
	"fmt"
	"path"
	"strconv"
	"time"
)

// waitExitPoll is how often WaitExit looks at the process: a look is a
// shell builtin and a read of /proc, so it can be frequent.
const waitExitPoll = 20 * time.Millisecond

const waitExitScript = `pid=$1 tries=$3
dir=$(cd -P -- "$2" 2>/dev/null && pwd -P) || dir=$2
gone() {
  kill -0 "$pid" 2>/dev/null || return 0
  [ -r "/proc/$pid/stat" ] || return 1
  read -r s <"/proc/$pid/stat" || return 0
  s=${s##*) }
  case $s in Z*|X*) return 0 ;; esac
  return 1
}
ours=no
for l in "/proc/$pid/exe" "/proc/$pid/cwd"; do
  t=$(readlink -- "$l" 2>/dev/null) || continue
  case $t in "$dir" | "$dir"/*) ours=yes ;; esac
done
while ! gone; do
  tries=$((tries - 1))
  if [ "$tries" -le 0 ]; then
    printf "%s\n" "process $pid still running" >&2
    exit 1
  fi
  sleep 0.02 2>/dev/null || sleep 1
done
if [ "$ours" != yes ]; then
  printf "%s\n" "process $pid is gone; it did not run from $dir" >&2
  exit 3
fi`

// WaitExitUnowned is WaitExit's exit status when the process is gone but
// was not seen running from the directory given: nothing says it was the
// one to wait for.
const WaitExitUnowned = 3

// WaitExit returns the command that waits, on the host, until process pid
// is gone (no such process, or a zombie waiting for its parent), looking
// every 20 ms; it exits 1 when the process is still there after about
// limit. It exits 0 only when, at its first look, the process's executable
// or working directory lay in dir (such as a release directory, whose
// bundled ERTS runs the node), so a number that merely looked like a pid
// proves nothing: then it exits WaitExitUnowned once the process is gone.
// It costs a shell builtin per look, where asking the app whether it is
// down (a release's ping) boots a VM. pid must be above 1: kill -0 with 0
// or -1 would ask about process groups or every process.
func WaitExit(pid int, dir string, limit time.Duration) (Cmd, error) {
	if pid <= 1 {
		return Cmd{}, fmt.Errorf("wait for process %d: want a process id above 1", pid)
	}
	if !path.IsAbs(dir) {
		return Cmd{}, fmt.Errorf("wait for process %d: directory %q is not absolute", pid, dir)
	}
	tries := max(int(limit/waitExitPoll), 1)
	return named("wait-exit", waitExitScript, strconv.Itoa(pid), path.Clean(dir), strconv.Itoa(tries)), nil
}
