package manifests

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Problem is one thing wrong with a manifest. It carries the file, line and
// dotted key path so that a person can go straight to the offending spot, and
// so that callers (a commit status, a web page) can show it without parsing
// strings.
type Problem struct {
	File string // as given to Parse; empty for a Manifest built in Go
	Line int    // 1-based; 0 when unknown (a Manifest built in Go)
	Key  string // dotted path such as build.steps[1].run; empty for a YAML syntax error
	Msg  string
}

// String formats p as "deploy.yaml:12: build.artifact: required", dropping
// the parts that are unknown, so that it reads like a compiler diagnostic.
func (p Problem) String() string {
	var b strings.Builder
	if p.File != "" {
		b.WriteString(p.File)
		b.WriteString(":")
	}
	if p.Line > 0 {
		fmt.Fprintf(&b, "%d:", p.Line)
	}
	if b.Len() > 0 {
		b.WriteString(" ")
	}
	if p.Key != "" {
		b.WriteString(p.Key)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Errors is the error Parse and Validate return: every problem found, sorted
// by line, so that one run of `operator validate` shows everything to fix
// rather than one problem per attempt.
type Errors struct {
	Problems []Problem
}

// Error joins the problems one a line.
func (e *Errors) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// sortProblems orders problems by line, then key and message so that the
// output does not depend on map iteration order, and drops exact repeats.
func sortProblems(ps []Problem) []Problem {
	slices.SortFunc(ps, func(a, b Problem) int {
		return cmp.Or(
			cmp.Compare(a.Line, b.Line),
			cmp.Compare(a.Key, b.Key),
			cmp.Compare(a.Msg, b.Msg),
			cmp.Compare(a.File, b.File),
		)
	})
	return slices.Compact(ps)
}
