package hosts

// Remove returns the command that removes the file or symlink at path; one
// already absent is fine.
func Remove(path string) Cmd { return Cmd{Args: []string{"rm", "-f", "--", fileArg(path)}} }

const recordAfterScript = `set -e
f=$1 line=$2
shift 2
"$@"
mkdir -p -- "${f%/*}"
printf "%s\n" "$line" >"$f.tmp.$$"
mv -f -- "$f.tmp.$$" "$f"`

// RecordAfter returns c followed, only when c succeeds, by writing line to
// the file at path (whole, under a temporary name, then renamed), in one
// session: a record that something ran (such as a migration) costs no
// command of its own. c's environment, directory, output and exit status
// are the result's.
func RecordAfter(c Cmd, path, line string) Cmd {
	return Cmd{
		Args:  append([]string{"sh", "-c", recordAfterScript, "sh", fileArg(path), line}, c.Args...),
		Env:   c.Env,
		Dir:   c.Dir,
		Label: "record-after " + Quote(path) + " " + c.Redacted(),
	}
}
