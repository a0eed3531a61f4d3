package hosts

const readFileScript = `if [ -f "$1" ]; then exec cat -- "$1"; fi`

// ReadFile returns the command that prints the file at path, or nothing
// when there is no such file: for the small records the operator keeps on
// hosts (which release came before, which commits were migrated).
func ReadFile(path string) Cmd { return script(readFileScript, fileArg(path)) }

// Remove returns the command that removes the file or symlink at path; one
// already absent is fine.
func Remove(path string) Cmd { return Cmd{Args: []string{"rm", "-f", "--", fileArg(path)}} }
