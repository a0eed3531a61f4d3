package manifests

import (
	"fmt"
	"path"
	"regexp"
	"strings"
)

// The rules below are what a deploy demands of manifest values when it
// turns them into commands for the hosts (package hosts builds those
// commands and refuses what breaks a rule). Each rule is defined here, once:
// Validate applies it, so `operator validate` refuses what a deploy would
// refuse later (PRODUCT.md §10), and the builders call it rather than
// keeping a copy that could drift.

// HAProxyName matches what an HAProxy backend or server name may hold:
// HAProxy's own identifier characters, at most 64 of them, so that no name
// can smuggle a second command into a runtime API line. Server names are the
// manifest's host names.
var HAProxyName = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,64}$`)

// ValidHAProxySocket reports whether socket may be the path of HAProxy's
// admin socket: absolute, and without the characters socat's address syntax
// gives a meaning (, : !), spaces, newlines or NUL.
func ValidHAProxySocket(socket string) bool {
	return path.IsAbs(socket) && !strings.ContainsAny(socket, ",:!\n\x00 ")
}

// ValidBuildDir reports whether dir may be build.dir: not empty, without a
// NUL or a newline, and a directory of its own, not the filesystem's root,
// the user's home or above it: the operator keeps its state beside it
// (<dir>.operator) and the build owns everything in it.
func ValidBuildDir(dir string) bool {
	if dir == "" || strings.ContainsAny(dir, "\x00\n") {
		return false
	}
	c := path.Clean(dir)
	return c != "." && c != "/" && c != ".." && !strings.HasPrefix(c, "../")
}

// artifactGlob is what build.artifact may hold: the build host's shell
// expands it unquoted, so it is kept to plain path characters and glob
// syntax.
var artifactGlob = regexp.MustCompile(`^[A-Za-z0-9_.+@%,=:/*?\[\]-]+$`)

// ValidArtifactGlob reports whether glob may be build.artifact: a relative
// path.Match pattern of plain path characters.
func ValidArtifactGlob(glob string) bool {
	_, err := path.Match(glob, "")
	return err == nil && artifactGlob.MatchString(glob) && !path.IsAbs(glob)
}

// ValidEnvName reports whether name may name an environment variable
// (build.env, release.env): the shell exports it, so it is a shell variable
// name.
func ValidEnvName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		ch := name[i]
		switch {
		case ch == '_', ch >= 'A' && ch <= 'Z', ch >= 'a' && ch <= 'z':
		case ch >= '0' && ch <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// CleanDeployTo checks deploy_to and returns it cleaned: it must be an
// absolute path (symlinks such as current hold it) without a NUL byte.
func CleanDeployTo(dir string) (string, error) {
	if !path.IsAbs(dir) {
		return "", fmt.Errorf("deploy_to %q is not an absolute path", dir)
	}
	if strings.ContainsRune(dir, 0) {
		return "", fmt.Errorf("deploy_to %q holds a NUL byte", dir)
	}
	return path.Clean(dir), nil
}

// CleanReleasePath checks p, a path relative to a release (release.links,
// release.files[].path), and returns it cleaned: it must stay inside the
// release and hold no NUL byte.
func CleanReleasePath(p string) (string, error) {
	if strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("path %q holds a NUL byte", p)
	}
	if path.IsAbs(p) {
		return "", fmt.Errorf("path %q is absolute, want one relative to the release", p)
	}
	c := path.Clean(p)
	if c == "." || c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("path %q leaves the release directory", p)
	}
	return c, nil
}

// CleanIndexPath returns name cleaned (a leading "./" dropped) and whether a
// release index can hold it: a path inside the release, without the bytes
// the index's lines cannot carry (newline, carriage return, backslash, NUL).
// A file of release.files travels with a delta under such a name.
func CleanIndexPath(name string) (string, bool) {
	p := path.Clean(strings.TrimPrefix(name, "./"))
	if p == "." || p == "" || path.IsAbs(p) || p == ".." || strings.HasPrefix(p, "../") ||
		strings.ContainsAny(p, "\n\r\\\x00") {
		return p, false
	}
	return p, true
}
