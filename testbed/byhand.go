package testbed

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/clusterops/operator/manifests"
	"golang.org/x/crypto/ssh"
)

// ByHand deploys the example app the way a person does with plain SSH and
// edeliver today: sources uploaded, every build step run, the tarball dragged
// through this machine to each node in turn, nodes started without checks.
// It proves the bed and the example app are real, and it is the baseline the
// benchmarks compare the operator against. Nothing here is the operator.
type ByHand struct {
	App      string // release name: "chat"
	Src      string // the app's source tree on this machine
	BuildDir string // workspace on the build host, e.g. /root/build/chat
	DeployTo string // on every node, e.g. /srv/chat
	Cookie   string // the cluster's Erlang cookie, put in <DeployTo>/shared
	Logf     func(format string, args ...any)
}

// byHandExcludes are the local build products never uploaded with sources.
var byHandExcludes = []string{"./_build", "./deps", "./assets/node_modules", "./priv/static", "./.elixir_ls"}

// UploadSource copies the app's sources to the build workspace.
func (m *ByHand) UploadSource(ctx context.Context, build *ssh.Client) error {
	return Upload(ctx, build, m.Src, m.BuildDir, byHandExcludes...)
}

// BuildRelease runs every build step of the example app in the workspace
// (none skipped, as edeliver does) and returns the tarball's remote path.
func (m *ByHand) BuildRelease(ctx context.Context, build *ssh.Client, commit string) (string, error) {
	script := "cd " + shellQuote(m.BuildDir) + " && export MIX_ENV=prod OPERATOR_COMMIT=" + shellQuote(commit) +
		" && mix deps.get --only prod && npm ci --prefix assets && npm run deploy --prefix assets && mix release --overwrite" +
		" && ls _build/prod/" + m.App + "-*.tar.gz"
	out, _, err := Run(ctx, build, script, nil)
	if err != nil {
		return "", fmt.Errorf("build %s: %w", m.App, err)
	}
	lines := strings.Fields(out)
	if len(lines) == 0 {
		return "", fmt.Errorf("build %s: no tarball", m.App)
	}
	return path.Join(m.BuildDir, lines[len(lines)-1]), nil
}

// ReleaseDir is where release commit lives on a node.
func (m *ByHand) ReleaseDir(commit string) string {
	return path.Join(m.DeployTo, "releases", commit)
}

// Install streams the tarball from the build host through this machine into
// releases/<commit> on one node, links the shared cookie and makes current
// point at it.
func (m *ByHand) Install(ctx context.Context, build, node *ssh.Client, tarball, commit string) error {
	sess, err := build.NewSession()
	if err != nil {
		return err
	}
	defer sess.Close()
	stdout, err := sess.StdoutPipe()
	if err != nil {
		return err
	}
	if err := sess.Start("cat " + shellQuote(tarball)); err != nil {
		return err
	}
	rel := m.ReleaseDir(commit)
	shared := path.Join(m.DeployTo, "shared")
	script := strings.Join([]string{
		"set -e",
		"mkdir -p " + shellQuote(rel) + " " + shellQuote(shared+"/releases"),
		"tar -xz -C " + shellQuote(rel),
		"printf %s " + shellQuote(m.Cookie) + " > " + shellQuote(shared+"/releases/COOKIE"),
		"chmod 400 " + shellQuote(shared+"/releases/COOKIE"),
		"ln -sfn " + shellQuote(shared+"/releases/COOKIE") + " " + shellQuote(rel+"/releases/COOKIE"),
		"ln -sfn " + shellQuote(rel) + " " + shellQuote(m.DeployTo+"/current"),
	}, "\n")
	_, _, runErr := Run(ctx, node, script, stdout)
	io.Copy(io.Discard, stdout)
	if err := sess.Wait(); err != nil {
		return fmt.Errorf("read %s on the build host: %w", tarball, err)
	}
	return runErr
}

// Start renders the node's vm.args from the app's template, as the operator
// renders release.files, and starts the node as a daemon. Like edeliver it
// trusts the start command: it does not wait for the node.
func (m *ByHand) Start(ctx context.Context, node *ssh.Client, data manifests.TemplateData) error {
	tmpl, err := os.ReadFile(filepath.Join(m.Src, "deploy", "vm.args.tmpl"))
	if err != nil {
		return err
	}
	vmArgs, err := manifests.Render(string(tmpl), data)
	if err != nil {
		return fmt.Errorf("render vm.args for %s: %w", data.Node, err)
	}
	rel := m.ReleaseDir(data.Commit)
	script := "cat > " + shellQuote(rel+"/releases/vm.args") + " && cd " + shellQuote(rel) +
		" && RELEASE_NODE=" + shellQuote(data.Node) + " RELEASE_DISTRIBUTION=name bin/" + m.App + " daemon"
	_, _, err = Run(ctx, node, script, strings.NewReader(vmArgs))
	return err
}

// Stop stops the node running in current and waits until it is down.
func (m *ByHand) Stop(ctx context.Context, node *ssh.Client, nodeName string) error {
	script := "cd " + shellQuote(m.DeployTo+"/current") + " && export RELEASE_NODE=" + shellQuote(nodeName) +
		" RELEASE_DISTRIBUTION=name && bin/" + m.App + " stop; for i in $(seq 100); do bin/" + m.App + " pid >/dev/null 2>&1 || exit 0; sleep 0.1; done; exit 1"
	_, _, err := Run(ctx, node, script, nil)
	return err
}

// Members asks a node which nodes it is connected to, as the manifest's
// cluster.members command does, and returns them sorted.
func (m *ByHand) Members(ctx context.Context, node *ssh.Client, nodeName string) ([]string, error) {
	script := "cd " + shellQuote(m.DeployTo+"/current") + " && RELEASE_NODE=" + shellQuote(nodeName) +
		" RELEASE_DISTRIBUTION=name bin/" + m.App + " rpc 'Enum.each(Node.list(), &IO.puts/1)'"
	out, _, err := Run(ctx, node, script, nil)
	if err != nil {
		return nil, err
	}
	members := strings.Fields(out)
	sort.Strings(members)
	return members, nil
}
