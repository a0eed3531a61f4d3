package manifests

import (
	"fmt"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strings"
)

// Validate checks m the way Parse does once it has read the YAML: required
// keys, known host names, paths, globs and templates. It is for a Manifest
// built or changed in Go; its problems have no file or line. A Manifest from
// Parse always passes.
func (m *Manifest) Validate() error {
	d := newDecoder("")
	d.check(m)
	return d.err()
}

var (
	// Names (app, hosts, environments) end up in paths, HAProxy server names
	// and command lines, so they are kept to characters that need no quoting
	// and cannot be read as an option.
	namePattern    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]*$`)
	addressPattern = regexp.MustCompile(`^[A-Za-z0-9_.:%][A-Za-z0-9_.:%-]*$`)
	userPattern    = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)
	nodePattern    = regexp.MustCompile(`^[A-Za-z0-9_-]+@[A-Za-z0-9_.:-]+$`)
)

const nameRule = "must be letters, digits, _ and -, starting with a letter or digit"

func (d *decoder) check(m *Manifest) {
	if d.required("app", m.App) && !namePattern.MatchString(m.App) {
		d.report("app", "%q %s", m.App, nameRule)
	}
	d.checkHosts(m)
	d.checkBuild(m)
	d.checkEnvironments(m)
	d.checkRelease(m)

	if d.required("cluster.members", m.Cluster.Members) {
		d.noNUL("cluster.members", m.Cluster.Members)
	}
	if m.Cluster.Settle <= 0 {
		d.report("cluster.settle", "must be positive")
	}
	if m.Health != nil {
		d.checkHealth(m)
	}
	if m.Rollout.Batch < 1 {
		d.report("rollout.batch", "must be at least 1")
	}
	if m.Rollout.Timeout <= 0 {
		d.report("rollout.timeout", "must be positive")
	}
	if lb := m.LoadBalancer; lb != nil {
		h := lb.HAProxy
		d.knownHost(m, "loadbalancer.haproxy.host", h.Host)
		if d.required("loadbalancer.haproxy.socket", h.Socket) {
			switch {
			case !path.IsAbs(h.Socket):
				d.report("loadbalancer.haproxy.socket", "must be an absolute path")
			case !ValidHAProxySocket(h.Socket):
				d.report("loadbalancer.haproxy.socket", "%q: must not hold , : ! spaces or newlines (socat reads them as part of its address)", h.Socket)
			}
		}
		if d.required("loadbalancer.haproxy.backend", h.Backend) && !HAProxyName.MatchString(h.Backend) {
			d.report("loadbalancer.haproxy.backend", "%q %s", h.Backend, haproxyNameRule)
		}
		if lb.DrainTimeout <= 0 {
			d.report("loadbalancer.drain_timeout", "must be positive")
		}
		d.checkServerNames(m)
	}
}

const haproxyNameRule = "is not an HAProxy name: at most 64 letters, digits, _ . : and -"

// checkServerNames checks the host names of the environments' nodes as
// HAProxy server names, which they are: a name the manifest allows may
// still be too long for HAProxy.
func (d *decoder) checkServerNames(m *Manifest) {
	seen := map[string]bool{}
	for _, env := range sortedKeys(m.Environments) {
		for _, name := range m.Environments[env].Hosts {
			if _, ok := m.Hosts[name]; !ok || seen[name] || !namePattern.MatchString(name) {
				continue // unknown or badly named: reported already
			}
			seen[name] = true
			if !HAProxyName.MatchString(name) {
				d.report("hosts."+name, "host name %q is a server name in HAProxy's backend and %s", name, haproxyNameRule)
			}
		}
	}
}

// noNUL reports a value that holds a NUL byte, which no command line or
// environment can carry; it says whether v is free of one.
func (d *decoder) noNUL(key, v string) bool {
	if strings.ContainsRune(v, 0) {
		d.report(key, "must not hold a NUL byte")
		return false
	}
	return true
}

// required reports a missing or blank value and says whether it is there.
func (d *decoder) required(key, v string) bool {
	if strings.TrimSpace(v) != "" {
		return true
	}
	if d.present(key) {
		d.report(key, "must not be empty")
	} else {
		d.report(key, "required")
	}
	return false
}

// requiredLen is required for lists and mappings.
func (d *decoder) requiredLen(key string, n int) bool {
	if n > 0 {
		return true
	}
	return d.required(key, "")
}

func (d *decoder) knownHost(m *Manifest, key, name string) bool {
	if !d.required(key, name) {
		return false
	}
	if _, ok := m.Hosts[name]; !ok {
		if len(m.Hosts) > 0 { // else "hosts: required" already says it
			d.report(key, "unknown host %q (hosts: %s)", name, strings.Join(sortedKeys(m.Hosts), ", "))
		}
		return false
	}
	return true
}

func (d *decoder) checkHosts(m *Manifest) {
	d.requiredLen("hosts", len(m.Hosts))
	for _, name := range sortedKeys(m.Hosts) {
		h, key := m.Hosts[name], "hosts."+name
		if !namePattern.MatchString(name) {
			d.report(key, "host name %q %s", name, nameRule)
		}
		if h.Name != name {
			d.report(key, "Name is %q; it must be the host's key", h.Name)
		}
		if d.required(key+".address", h.Address) && !addressPattern.MatchString(h.Address) {
			d.report(key+".address", "%q is not a host name or IP address", h.Address)
		}
		if d.required(key+".user", h.User) && !userPattern.MatchString(h.User) {
			d.report(key+".user", "%q is not a login name", h.User)
		}
		if h.Port < 1 || h.Port > 65535 {
			d.report(key+".port", "must be between 1 and 65535")
		}
		if h.Node != "" && !nodePattern.MatchString(h.Node) {
			d.report(key+".node", "%q is not an Erlang node name such as app@10.0.1.11", h.Node)
		}
	}
}

func (d *decoder) checkBuild(m *Manifest) {
	b := m.Build
	d.knownHost(m, "build.host", b.Host)
	if d.required("build.dir", b.Dir) && !ValidBuildDir(b.Dir) {
		d.report("build.dir", "%q %s", b.Dir, buildDirProblem(b.Dir))
	}
	d.checkEnv("build.env", b.Env)
	if d.requiredLen("build.steps", len(b.Steps)) {
		for i, s := range b.Steps {
			key := fmt.Sprintf("build.steps[%d]", i)
			if d.required(key+".run", s.Run) {
				d.noNUL(key+".run", s.Run)
			}
			for j, p := range s.WhenChanged {
				d.checkRelPath(fmt.Sprintf("%s.when_changed[%d]", key, j), p, true)
			}
		}
	}
	if d.checkRelPath("build.artifact", b.Artifact, true) && !ValidArtifactGlob(b.Artifact) {
		d.report("build.artifact", "%q: want a glob of plain path characters (letters, digits, _ . + @ %% , = : / - and * ? [ ])", b.Artifact)
	}
	if b.Timeout <= 0 {
		d.report("build.timeout", "must be positive")
	}
}

func (d *decoder) checkEnvironments(m *Manifest) {
	d.requiredLen("environments", len(m.Environments))
	for _, name := range sortedKeys(m.Environments) {
		e, key := m.Environments[name], "environments."+name
		if !namePattern.MatchString(name) {
			d.report(key, "environment name %q %s", name, nameRule)
		}
		if e.Name != name {
			d.report(key, "Name is %q; it must be the environment's key", e.Name)
		}
		if d.requiredLen(key+".hosts", len(e.Hosts)) {
			d.checkNodes(m, key+".hosts", e.Hosts)
		}
		if d.required(key+".deploy_to", e.DeployTo) {
			if _, err := CleanDeployTo(e.DeployTo); !path.IsAbs(e.DeployTo) {
				d.report(key+".deploy_to", "must be an absolute path")
			} else if err != nil {
				d.report(key+".deploy_to", "must not hold a NUL byte")
			}
		}
		if e.KeepReleases < 2 {
			d.report(key+".keep_releases", "must be at least 2, to keep the current and the previous release")
		}
	}
}

// checkNodes checks an environment's hosts: each must run a node of its own,
// since the membership check counts nodes by name.
func (d *decoder) checkNodes(m *Manifest, key string, names []string) {
	listed := map[string]bool{}
	nodeHost := map[string]string{} // node name to the first host running it
	for i, name := range names {
		k := fmt.Sprintf("%s[%d]", key, i)
		if !d.knownHost(m, k, name) || d.broken["hosts."+name] {
			continue
		}
		h := m.Hosts[name]
		switch {
		case listed[name]:
			d.report(k, "host %q is listed twice", name)
		case h.Node == "":
			d.report(k, "host %q has no node: hosts that run the app need hosts.%s.node", name, name)
		case nodeHost[h.Node] != "":
			d.report(k, "host %q has the same node %q as host %q", name, h.Node, nodeHost[h.Node])
		default:
			nodeHost[h.Node] = name
		}
		listed[name] = true
	}
}

func (d *decoder) checkRelease(m *Manifest) {
	r := m.Release
	for _, c := range []struct{ key, cmd string }{
		{"release.start", r.Start}, {"release.stop", r.Stop}, {"release.ping", r.Ping},
	} {
		if d.required(c.key, c.cmd) {
			d.noNUL(c.key, c.cmd)
		}
	}
	d.noNUL("release.migrate", r.Migrate)
	d.checkEnv("release.env", r.Env)
	sample := sampleData(m.App)
	for _, name := range sortedKeys(r.Env) {
		if _, err := checkTemplate(r.Env[name], sample); err != nil {
			d.report("release.env."+name, "%v", err)
		}
	}
	for i, l := range r.Links {
		d.checkReleasePath(fmt.Sprintf("release.links[%d]", i), l)
	}
	for i, f := range r.Files {
		key := fmt.Sprintf("release.files[%d]", i)
		d.checkRelPath(key+".template", f.Template, false)
		// A rendered file travels with a node's delta, named in the
		// release's index.
		if d.checkReleasePath(key+".path", f.Path) {
			if _, ok := CleanIndexPath(f.Path); !ok {
				d.report(key+".path", "%q: must not hold a newline, carriage return or backslash", f.Path)
			}
		}
	}
}

// checkReleasePath checks a path relative to the release as checkRelPath
// does, and as the deploy does (CleanReleasePath); it says whether the path
// passed.
func (d *decoder) checkReleasePath(key, p string) bool {
	if !d.checkRelPath(key, p, false) {
		return false
	}
	if _, err := CleanReleasePath(p); err != nil {
		d.report(key, "must not hold a NUL byte")
		return false
	}
	return true
}

func (d *decoder) checkHealth(m *Manifest) {
	h := m.Health
	if d.required("health.url", h.URL) {
		if u, err := checkTemplate(h.URL, sampleData(m.App)); err != nil {
			d.report("health.url", "%v", err)
		} else if parsed, err := url.Parse(u); err != nil || (parsed.Scheme != "http" && parsed.Scheme != "https") || parsed.Host == "" {
			d.report("health.url", "must be an http or https URL, got %q", h.URL)
		}
	}
	if h.ExpectStatus < 100 || h.ExpectStatus > 599 {
		d.report("health.expect_status", "must be an HTTP status between 100 and 599")
	}
}

// buildDirProblem says why ValidBuildDir refuses dir.
func buildDirProblem(dir string) string {
	const own = ": the workspace needs a directory of its own (absolute, or relative to the home directory)"
	switch c := path.Clean(dir); {
	case strings.ContainsAny(dir, "\x00\n"):
		return "must not hold a newline or NUL byte"
	case c == "/":
		return "is the root directory" + own
	case c == ".":
		return "is the home directory itself" + own
	default:
		return "leaves the home directory" + own
	}
}

// checkEnv checks an environment's names, and that its values can reach a
// command's environment.
func (d *decoder) checkEnv(key string, env map[string]string) {
	for _, name := range sortedKeys(env) {
		if !ValidEnvName(name) {
			d.report(key+"."+name, "%q is not an environment variable name", name)
		} else {
			d.noNUL(key+"."+name, env[name])
		}
	}
}

// checkRelPath checks a path that must stay inside its directory (the repo,
// the build workspace or the release), and, when glob is set, that it is a
// valid path.Match pattern. It says whether the path passed.
func (d *decoder) checkRelPath(key, p string, glob bool) bool {
	if !d.required(key, p) {
		return false
	}
	switch {
	case path.IsAbs(p):
		d.report(key, "must be a relative path")
	case slices.Contains(strings.Split(p, "/"), ".."):
		d.report(key, "must not contain ..")
	case path.Clean(p) == ".":
		d.report(key, "must name a file, not the directory itself")
	default:
		if _, err := path.Match(p, ""); glob && err != nil {
			d.report(key, "%q is not a valid glob: %v", p, err)
			return false
		}
		return true
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
