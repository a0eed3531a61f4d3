// Command operator is a GitOps deploy operator for clustered Elixir apps on
// plain servers: it builds a release on a build host and rolls it out node by
// node, checking after each node that the Erlang cluster is whole again.
//
// Usage:
//
//	operator <command> [flags]
//
// Run "operator help" for the list of commands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// command is one subcommand. Each lives in its own file and parses its own
// flags, so adding one means adding a file and a line to commands.
type command struct {
	name string
	help string // one line, for usage
	run  func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

// commands lists every subcommand, in the order usage shows them.
var commands = []command{
	{"run", "the daemon: poll, webhook, API, metrics; deploys by itself", runDaemon},
	{"sync", "reconcile now through the daemon (--wait to follow), or --once in this process", runSync},
	{"rollback", "deploy the previous release (or --to SHA) and lock until unlock", runRollback},
	{"plan", "say what a sync would do, changing nothing", runPlan},
	{"status", "show the desired commit, each node's commit and the last deploy", runStatus},
	{"history", "list the deploys", runHistory},
	{"logs", "print a deploy's log", runLogs},
	{"lock", "hold automatic deploys: lock --reason TEXT", runLock},
	{"unlock", "release the lock", runUnlock},
	{"hosts", "hosts check: SSH reachability, host keys, round trip, membership now", runHosts},
	{"validate", "check a manifest without touching any host", runValidate},
	{"version", "print the operator's version", runVersion},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run dispatches args to a command and returns the process exit code: 0 on
// success, 1 when the command failed, 2 for a usage error. What the command
// prints goes through printable: commit subjects, deploy logs and what
// hosts print never reach the terminal as control sequences.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	out, errOut := newTerminal(stdout), newTerminal(stderr)
	defer out.Flush()
	defer errOut.Flush()
	return dispatch(ctx, args, out, errOut)
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return 0
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "operator: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: operator <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.help)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, `Every command takes --config (default ./operator.yaml). Run "operator <command> -h" for its flags.`)
}

// defaultConfig is where every command looks for the operator's config.
const defaultConfig = "./operator.yaml"

// newFlagSet returns the flag set of command name with the flags every
// command shares, so that they are spelt the same everywhere.
func newFlagSet(name string, stderr io.Writer) (fs *flag.FlagSet, config *string) {
	fs = flag.NewFlagSet("operator "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	config = fs.String("config", defaultConfig, "path of the operator's config `file`")
	return fs, config
}

// parseFlags parses args into fs and returns the exit code to stop with, or
// -1 to go on: 0 after -h, 2 for bad flags or unexpected arguments.
func parseFlags(fs *flag.FlagSet, args []string) int {
	switch err := fs.Parse(args); {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		return 2 // the flag package has printed the error and usage
	case fs.NArg() > 0:
		fmt.Fprintf(fs.Output(), "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		fs.Usage()
		return 2
	}
	return -1
}
