package hosts

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/clusterops/operator/manifests"
)

// Cmd is a command to run on a host, as data: builders return it, tests
// compare it as a string, and only a Pool executes it. Every field is data
// and is quoted when rendered; no field is ever parsed by the remote shell.
type Cmd struct {
	// Args is the argv of the program; Args[0] is looked up in the remote
	// PATH unless it contains a slash.
	Args []string
	// Env is added to the remote environment. Names must be valid shell
	// variable names: the remote shell exports them.
	Env map[string]string
	// Dir is the working directory, absolute or relative to the remote
	// user's home; empty means the home.
	Dir string
	// Label, when set, names the command in logs and errors instead of its
	// text, such as `write-file '/srv/chat/releases/abc.tar.gz' ...` for a
	// builder's multi-line script. It is never run.
	Label string
}

// Quote returns s as one word for a POSIX shell: inside single quotes every
// byte stands for itself, so only the single quote needs care (close, an
// escaped quote, reopen). Every byte sequence survives, non-UTF-8 and
// newlines included, except NUL, which no argv can carry; Cmd.Validate
// refuses NUL before anything is sent.
func Quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// String renders c as the POSIX shell command line the host runs, such as
//
//	cd -P '/srv/chat/current' && exec 'bin/chat' 'pid'
//
// The program replaces the shell (exec) so that the session reports its own
// exit status or signal, and its process is the session's process group
// leader. cd -P makes $PWD the physical directory, so a command started in
// `current` keeps naming its release after a later switch. A relative Dir
// gets "./" so neither CDPATH nor a leading dash changes its meaning.
//
// Env is not in it. A command line is there for every user of the host to
// read (ps, /proc/<pid>/cmdline) for as long as any process started with it
// runs, and the shell sshd starts, or one it forks (Pool.Run's watchdog),
// can outlive the exec for the command's whole life; release environments
// hold secrets. Pool.Run puts envReader in front of the line and sends
// envLine ahead of the command's own input on the session's stdin: the
// values reach the program's environment and no argv.
func (c Cmd) String() string { return c.render(false, false) }

// Redacted is how logs and errors show c: its Label when it has one, else
// c as String renders it, with its Env shown as an export in front, every
// value replaced by "…" (release environments can hold secrets).
func (c Cmd) Redacted() string {
	if c.Label != "" {
		return c.Label
	}
	return c.render(true, true)
}

func (c Cmd) render(env, redact bool) string {
	var b strings.Builder
	if c.Dir != "" {
		b.WriteString("cd -P ")
		b.WriteString(Quote(localPath(c.Dir)))
		b.WriteString(" && ")
	}
	if env && len(c.Env) > 0 {
		b.WriteString("export")
		for _, k := range slices.Sorted(maps.Keys(c.Env)) {
			v := c.Env[k]
			if redact {
				v = "…"
			}
			b.WriteString(" ")
			b.WriteString(Quote(k + "=" + v))
		}
		b.WriteString(" && ")
	}
	// bash's exec would take a leading dash for its own option and dash's
	// exec does not know "--": such a program runs as a child instead.
	if len(c.Args) > 0 && strings.HasPrefix(c.Args[0], "-") {
		b.WriteString("command --")
	} else {
		b.WriteString("exec")
	}
	for _, a := range c.Args {
		b.WriteString(" ")
		b.WriteString(Quote(a))
	}
	return b.String()
}

// envReader goes in front of a command line whose Cmd has Env: it reads
// one line, envLine, from stdin (the shell's read takes a byte at a time
// from a pipe, so nothing after the line is consumed) and runs it. A stdin
// that ends before the line does (a session cancelled at once, or cut)
// runs nothing. Its variables are not exported: exec drops them.
const envReader = `op_nl='
'; IFS= read -r op_env || { printf "%s\n" "operator: the environment did not arrive" >&2; exit 1; }; eval "$op_env" || exit 1; `

// envLine renders c.Env as the one line envReader reads: an export of every
// name=value, quoted, each newline of a value spelled "$op_nl" outside the
// quotes so that the line holds no newline but its last; "" without Env.
func (c Cmd) envLine() string {
	if len(c.Env) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("export")
	for _, k := range slices.Sorted(maps.Keys(c.Env)) {
		b.WriteString(" ")
		b.WriteString(strings.ReplaceAll(Quote(k+"="+c.Env[k]), "\n", `'"$op_nl"'`))
	}
	b.WriteString("\n")
	return b.String()
}

// Validate reports why c cannot be rendered faithfully: no program, an
// environment name the shell cannot export, or a NUL byte, which argv and
// the environment cannot hold. Pool.Run calls it before sending anything.
func (c Cmd) Validate() error {
	if len(c.Args) == 0 {
		return errors.New("command has no program")
	}
	var errs []error
	for i, a := range c.Args {
		if strings.IndexByte(a, 0) >= 0 {
			errs = append(errs, fmt.Errorf("argument %d holds a NUL byte", i))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(c.Env)) {
		if !manifests.ValidEnvName(k) {
			errs = append(errs, fmt.Errorf("environment name %q is not a shell variable name", k))
		}
		if strings.IndexByte(c.Env[k], 0) >= 0 {
			errs = append(errs, fmt.Errorf("environment value of %s holds a NUL byte", k))
		}
	}
	if strings.IndexByte(c.Dir, 0) >= 0 {
		errs = append(errs, errors.New("directory holds a NUL byte"))
	}
	return errors.Join(errs...)
}

// localPath makes a relative path start with "./", so that no command reads
// it as an option and cd does not search CDPATH for it.
func localPath(p string) string {
	if p == "" || strings.HasPrefix(p, "/") || strings.HasPrefix(p, "./") {
		return p
	}
	return "./" + p
}
