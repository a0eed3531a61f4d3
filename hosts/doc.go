// Package hosts reaches the build host and the nodes over SSH: commands as
// data (Cmd, the release-layout builders), their execution on pooled,
// verified connections (Pool), the transfer of artifacts straight from the
// build host to every node (Pool.FanOut), and a health check of the fleet's
// connections (Pool.Check).
//
// Every value that reaches a remote shell goes through Quote, the only
// quoting code of the project; the only shell code that is not quoted data is
// this package's own constant scripts and the manifest's release commands,
// which are the user's own shell code by design (ShellCmd).
//
// Remote hosts need a POSIX login shell for the connecting user (sh, dash,
// bash, ksh or zsh) and the GNU userland of Debian, Ubuntu or RHEL
// (coreutils' mktemp, mv -T, sha256sum, readlink, stat; GNU tar).
package hosts
