package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

// runVersion prints the version, so that a bug report can say which build
// ran.
func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs, _ := newFlagSet("version", stderr)
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	fmt.Fprintf(stdout, "operator %s (%s)\n", currentVersion(), runtime.Version())
	return 0
}

// currentVersion prefers the version stamped by the build, then the module
// version recorded by "go install ...@version", then "dev".
func currentVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
