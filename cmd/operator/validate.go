package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/clusterops/operator/manifests"
)

// runValidate checks a manifest as a deploy would, without touching any host,
// so that a bad deploy.yaml is caught before it is pushed.
func runValidate(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs, _ := newFlagSet("validate", stderr)
	// The manifest lives in the app repo, not with the operator, so validate
	// reads a file in the working tree and needs nothing from the config.
	file := fs.String("manifest", "deploy.yaml", "manifest `file` to check")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	data, err := os.ReadFile(*file)
	if err != nil {
		fmt.Fprintf(stderr, "operator validate: %v\n", err)
		return 1
	}
	m, err := manifests.Parse(*file, data)
	var problems *manifests.Errors
	switch {
	case errors.As(err, &problems):
		for _, p := range problems.Problems {
			fmt.Fprintln(stderr, p)
		}
		return 1
	case err != nil:
		fmt.Fprintf(stderr, "operator validate: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: valid (app %s, %s, %s)\n", *file, m.App,
		count(len(m.Environments), "environment"), count(len(m.Hosts), "host"))
	return 0
}

func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
