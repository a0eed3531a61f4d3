package manifests_test

import (
	"path"
	"strconv"
	"strings"
	"testing"

	"github.com/clusterops/operator/hosts"
	"github.com/clusterops/operator/manifests"
)

// deployManifest is a valid manifest whose value at KEY the test replaces.
const deployManifest = `app: chat
hosts:
  nyc: {address: 10.0.1.11, user: deploy, node: chat@10.0.1.11}
  lb: {address: 10.0.0.2, user: deploy}
build:
  host: nyc
  dir: BUILD_DIR
  env: {BUILD_ENV: prod}
  steps:
    - run: mix release --overwrite
  artifact: ARTIFACT
environments:
  production:
    hosts: [nyc]
    deploy_to: DEPLOY_TO
release:
  links: [LINK]
  files:
    - {template: deploy/vm.args.tmpl, path: FILE}
  start: bin/chat daemon
  stop: bin/chat stop
  ping: bin/chat pid
cluster:
  members: bin/members
loadbalancer:
  haproxy: {host: lb, socket: SOCKET, backend: BACKEND}
`

var deployDefaults = map[string]string{
	"BUILD_DIR": "build/chat", "BUILD_ENV": "MIX_ENV", "ARTIFACT": "_build/prod/chat-*.tar.gz",
	"DEPLOY_TO": "/srv/chat", "LINK": "releases/COOKIE", "FILE": "releases/vm.args",
	"SOCKET": "/run/haproxy/admin.sock", "BACKEND": "www",
}

// parseWith parses deployManifest with the value at key replaced by v.
func parseWith(key, v string) error {
	text := deployManifest
	for k, def := range deployDefaults {
		val := def
		if k == key {
			val = v
		}
		text = strings.ReplaceAll(text, k, strconv.Quote(val))
	}
	_, err := manifests.Parse("deploy.yaml", []byte(text))
	return err
}

const commit = "0123456789abcdef0123456789abcdef01234567"

// TestValidateRefusesWhatTheDeployRefuses puts tricky values in every key
// whose value the deploy's command builders check, and wants Parse (what
// `operator validate` runs) to refuse each value a builder refuses: a
// manifest that validates must not fail at the drain, the build or the
// stage for a value it holds (PRODUCT.md §10).
func TestValidateRefusesWhatTheDeployRefuses(t *testing.T) {
	names := []string{"www", "www-backend", "www.b:1", "www backend", "www;shutdown", "www/nyc", "ww\nw", "", strings.Repeat("w", 64), strings.Repeat("w", 65)}
	paths := []string{"releases/COOKIE", "config/../x", "./vm.args", "/etc/x", ".", "..", "../x", "a/../..", "a\x00b", "a\nb", "a\rb", `a\b`, "a b", "a*b", "$(id)", "a'b", "-x"}
	dirs := []string{"build/chat", "/home/deploy/build", "/", ".", "..", "../x", "./", "a/../..", "a/..", "build\nchat", "build\x00chat", "~/build", "/srv/chat/", "build chat"}
	globs := []string{"_build/prod/chat-*.tar.gz", "_build/prod/chat-[0-9]*.tar.gz", "/abs/*.tar.gz", "chat *.tar.gz", "$(id).tar.gz", "chat-{1,2}.tar.gz", "chat-[.tar.gz", "chat\n.tar.gz", "~/x.tar.gz", "a;b"}
	sockets := []string{"/run/haproxy/admin.sock", "run/haproxy.sock", "/run/haproxy,sock", "/run/ha:proxy", "/run/ha!proxy", "/run/ha proxy", "/run/ha\nproxy", "/run/ha\x00proxy"}
	envNames := []string{"MIX_ENV", "_X", "X1", "1X", "MIX-ENV", "X Y", "X=Y", "É"}
	const data = "data\n"

	cases := []struct {
		key    string
		values []string
		deploy func(v string) error // what the deploy's builder says of v
	}{
		{"BACKEND", names, func(v string) error {
			_, err := hosts.HAProxy{Socket: "/run/haproxy/admin.sock"}.SetState(v, "nyc", "drain")
			return err
		}},
		{"SOCKET", sockets, func(v string) error {
			_, err := hosts.HAProxy{Socket: v}.SetState("www", "nyc", "drain")
			return err
		}},
		{"BUILD_DIR", dirs, func(v string) error {
			_, err := hosts.Workspace{Dir: v}.ReadSteps()
			return err
		}},
		{"ARTIFACT", globs, func(v string) error {
			_, err := hosts.Workspace{Dir: "build/chat"}.StoreArtifact(commit, v)
			return err
		}},
		{"DEPLOY_TO", append(dirs, "/srv/chat\x00"), func(v string) error {
			_, err := hosts.Layout{DeployTo: v}.Observe()
			return err
		}},
		{"LINK", paths, func(v string) error {
			_, err := hosts.Layout{DeployTo: "/srv/chat"}.LinkShared(commit, []string{v})
			return err
		}},
		{"FILE", paths, func(v string) error {
			layout := hosts.Layout{DeployTo: "/srv/chat"}
			if _, err := layout.WriteFile(commit, v, 0o644, strings.Repeat("0", 64)); err != nil {
				return err
			}
			// With a delta, rendered files travel by their cleaned path
			// (reconcile's nodeFiles).
			_, err := hosts.NodeFiles(map[string][]byte{path.Clean(v): []byte(data)})
			return err
		}},
		{"BUILD_ENV", envNames, func(v string) error {
			return hosts.Cmd{Args: []string{"true"}, Env: map[string]string{v: "x"}}.Validate()
		}},
	}
	for _, c := range cases {
		for _, v := range c.values {
			deployErr := c.deploy(v)
			validateErr := parseWith(c.key, v)
			if deployErr != nil && validateErr == nil {
				t.Errorf("%s %q: validate accepts what the deploy refuses: %v", c.key, v, deployErr)
			}
		}
	}
}
