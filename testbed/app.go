package testbed

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
)

// NPMCache is where the harness keeps npm's package cache, shared by every
// bed and kept between runs. The bed's hosts have no route beyond their
// bridge, so a build host cannot reach the npm registry; a real build host
// would. The harness fetches the packages once on this machine (which does
// reach the registry) and the build host's npm installs from this cache
// offline, as one configured with a registry mirror would.
const NPMCache = "/var/cache/operator-testbed/npm"

// PrimeNPMCache fills cache with every package the lock file in assetsDir
// names, fetching from the registry only what the cache lacks.
func PrimeNPMCache(ctx context.Context, assetsDir, cache string) error {
	tmp, err := os.MkdirTemp("", "npm-prime-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for _, f := range []string{"package.json", "package-lock.json"} {
		data, err := os.ReadFile(filepath.Join(assetsDir, f))
		if err != nil {
			return fmt.Errorf("prime npm cache: %w", err)
		}
		if err := os.WriteFile(filepath.Join(tmp, f), data, 0o644); err != nil {
			return err
		}
	}
	cmd := exec.CommandContext(ctx, "npm", "ci", "--cache", cache, "--prefer-offline", "--ignore-scripts", "--no-audit", "--no-fund")
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("prime npm cache from %s: %w: %s", assetsDir, err, tail(string(out), 2000))
	}
	return nil
}

// UseNPMCache makes npm on h install from cache without the network.
func (h *Host) UseNPMCache(cache string) error {
	rc := fmt.Sprintf("cache=%s\noffline=true\naudit=false\nfund=false\nupdate-notifier=false\n", cache)
	return os.WriteFile(h.Path("/root/.npmrc"), []byte(rc), 0o600)
}

// Upload copies the tree at localDir to remoteDir on the far side of client
// as a tar stream over the session's stdin, leaving out the names in
// exclude (tar --exclude patterns). remoteDir is made if missing.
func Upload(ctx context.Context, client *ssh.Client, localDir, remoteDir string, exclude ...string) error {
	args := []string{"-C", localDir}
	for _, e := range exclude {
		args = append(args, "--exclude="+e)
	}
	args = append(args, "-cf", "-", ".")
	tarCmd := exec.CommandContext(ctx, "tar", args...)
	out, err := tarCmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	tarCmd.Stderr = &stderr
	if err := tarCmd.Start(); err != nil {
		return err
	}
	_, _, runErr := Run(ctx, client, "mkdir -p "+shellQuote(remoteDir)+" && tar -x -m -C "+shellQuote(remoteDir), out)
	io.Copy(io.Discard, out)
	if err := tarCmd.Wait(); err != nil {
		return fmt.Errorf("tar %s: %w: %s", localDir, err, stderr.String())
	}
	return runErr
}
