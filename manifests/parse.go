package manifests

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Parse reads the manifest in data, fills defaults and validates it. name is
// the file name shown in problems, such as "deploy.yaml". On failure the
// error is an *Errors holding every problem found, not just the first.
//
// Top-level keys starting with "x-" are ignored, as in Docker Compose, to
// give YAML anchors a home: x-node: &node {user: deploy}.
//
// Parse walks the YAML node tree rather than decoding into structs, so that
// each problem carries the line of the offending key, and so that unknown and
// duplicate keys, which struct decoding would drop, are reported.
func Parse(name string, data []byte) (*Manifest, error) {
	d := newDecoder(name)
	root := d.document(data)
	if root == nil {
		return nil, d.err()
	}
	m := d.manifest(root)
	d.check(m)
	if err := d.err(); err != nil {
		return nil, err
	}
	return m, nil
}

// decoder turns a YAML node tree into a Manifest, collecting problems on the
// way. The same type checks a Manifest afterwards, so that decoding and
// validation report through one list, and Validate works on a Manifest built
// in Go (where positions are unknown and problems have line 0).
type decoder struct {
	file  string
	probs []Problem
	// pos maps each key path present in the file to its line. A problem with
	// a key that is absent takes the line of its nearest present parent.
	pos map[string]int
	// broken holds key paths whose values had the wrong shape. Checks under
	// them are skipped: "build: must be a mapping" already says it all, and
	// "build.host: required" on top would only be noise.
	broken map[string]bool
	// budget bounds the pairs that merge keys (<<) may expand to, since
	// nested aliases can otherwise grow exponentially.
	budget int
}

func newDecoder(file string) *decoder {
	return &decoder{file: file, pos: map[string]int{}, broken: map[string]bool{}, budget: 10000}
}

func (d *decoder) err() error {
	if len(d.probs) == 0 {
		return nil
	}
	return &Errors{Problems: sortProblems(d.probs)}
}

// add records a problem at an explicit line.
func (d *decoder) add(line int, key, msg string) {
	d.probs = append(d.probs, Problem{File: d.file, Line: line, Key: key, Msg: msg})
}

// report records a problem with key at the key's line, unless the key lies
// under a value already reported as the wrong shape.
func (d *decoder) report(key, format string, args ...any) {
	for b := range d.broken {
		if key == b || strings.HasPrefix(key, b+".") || strings.HasPrefix(key, b+"[") {
			return
		}
	}
	d.add(d.line(key), key, fmt.Sprintf(format, args...))
}

// line returns the line of key, or of its nearest parent present in the file.
func (d *decoder) line(key string) int {
	for {
		if l, ok := d.pos[key]; ok {
			return l
		}
		if key == "" {
			return 0
		}
		if i := strings.LastIndexAny(key, ".["); i >= 0 {
			key = key[:i]
		} else {
			key = ""
		}
	}
}

func (d *decoder) present(key string) bool {
	_, ok := d.pos[key]
	return ok
}

// wrong reports that the value at key is not the kind wanted.
func (d *decoder) wrong(n *yaml.Node, key, want string) {
	d.report(key, "must be %s, got %s", want, describe(n))
	d.broken[key] = true
}

var syntaxLine = regexp.MustCompile(`^yaml: line (\d+): `)

// document parses data and returns its top-level mapping, or nil after
// reporting why there is none.
func (d *decoder) document(data []byte) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			d.add(1, "", "empty manifest")
		} else {
			d.syntax(err)
		}
		return nil
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		d.add(max(1, firstLine(&next)), "", "only one YAML document is allowed")
	case !errors.Is(err, io.EOF):
		d.syntax(err)
	}
	if len(doc.Content) == 0 {
		d.add(1, "", "empty manifest")
		return nil
	}
	root := resolve(doc.Content[0])
	switch {
	case isNull(root):
		d.add(max(1, root.Line), "", "empty manifest")
		return nil
	case root.Kind != yaml.MappingNode:
		d.add(max(1, root.Line), "", "the manifest must be a mapping of keys such as app and hosts, got "+describe(root))
		return nil
	}
	d.pos[""] = root.Line
	return root
}

func firstLine(doc *yaml.Node) int {
	if len(doc.Content) > 0 {
		return doc.Content[0].Line
	}
	return doc.Line
}

// syntax reports a YAML syntax error at the line the YAML parser names. For
// errors found while parsing (rather than scanning) yaml.v3 names the line
// where the enclosing construct began, which can be a line or so above the
// mistake; it has no better position to give.
func (d *decoder) syntax(err error) {
	msg := err.Error()
	line := 1
	if m := syntaxLine.FindStringSubmatch(msg); m != nil {
		if n, convErr := strconv.Atoi(m[1]); convErr == nil && n >= 1 {
			line = n
		}
		msg = "yaml: " + msg[len(m[0]):]
	}
	d.add(line, "", msg)
}

// field decodes one known key of a mapping. set is called only when the key
// is present with a non-null value; a null value counts as absent.
type field struct {
	name string
	set  func(n *yaml.Node, key string)
}

// fields decodes mapping n at key through fs, reporting unknown keys.
func (d *decoder) fields(n *yaml.Node, key string, fs ...field) {
	if n.Kind != yaml.MappingNode {
		d.wrong(n, key, "a mapping")
		return
	}
	for _, p := range d.pairs(n, key) {
		k := join(key, p.name)
		i := indexField(fs, p.name)
		if i < 0 && key == "" && strings.HasPrefix(p.name, "x-") {
			continue // an extension key, a place to define YAML anchors
		}
		if i < 0 {
			d.add(p.key.Line, k, "unknown key (known: "+fieldNames(fs)+")")
			continue
		}
		d.pos[k] = p.key.Line
		if !isNull(p.val) {
			fs[i].set(p.val, k)
		}
	}
}

func indexField(fs []field, name string) int {
	for i, f := range fs {
		if f.name == name {
			return i
		}
	}
	return -1
}

func fieldNames(fs []field) string {
	names := make([]string, len(fs))
	for i, f := range fs {
		names[i] = f.name
	}
	return strings.Join(names, ", ")
}

// entries decodes mapping n at key whose keys are names the user chose (hosts,
// environments, environment variables), calling each for every entry.
func (d *decoder) entries(n *yaml.Node, key string, each func(name string, n *yaml.Node, key string)) {
	if n.Kind != yaml.MappingNode {
		d.wrong(n, key, "a mapping")
		return
	}
	for _, p := range d.pairs(n, key) {
		k := join(key, p.name)
		d.pos[k] = p.key.Line
		each(p.name, p.val, k)
	}
}

// list decodes sequence n at key, calling each for every item.
func (d *decoder) list(n *yaml.Node, key string, each func(n *yaml.Node, key string)) {
	if n.Kind != yaml.SequenceNode {
		d.wrong(n, key, "a list")
		return
	}
	for i, item := range n.Content {
		k := fmt.Sprintf("%s[%d]", key, i)
		d.pos[k] = item.Line
		each(resolve(item), k)
	}
}

type pair struct {
	name     string
	key, val *yaml.Node
}

// pairs returns the entries of mapping n, reporting duplicate and non-string
// keys, and expanding YAML merge keys (<<: *anchor) the way YAML specifies:
// keys written in the mapping win over merged ones.
func (d *decoder) pairs(n *yaml.Node, key string) []pair {
	var own, merged []pair
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		switch {
		case k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge":
			merged = append(merged, d.merge(v, key, 0)...)
			continue
		case k.Kind != yaml.ScalarNode:
			d.add(k.Line, key, "keys must be strings, got "+describe(k))
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.add(k.Line, join(key, k.Value), fmt.Sprintf("duplicate key (first at line %d)", first))
			continue
		}
		seen[k.Value] = k.Line
		own = append(own, pair{k.Value, k, v})
	}
	for _, p := range merged {
		if _, dup := seen[p.name]; !dup {
			seen[p.name] = p.key.Line
			own = append(own, p)
		}
	}
	return own
}

// merge returns the pairs that the value of a merge key brings in: one
// mapping, or a list of them where earlier ones win. Problems inside the
// merged mappings are left to where they are defined.
func (d *decoder) merge(v *yaml.Node, key string, depth int) []pair {
	var sources []*yaml.Node
	switch v.Kind {
	case yaml.MappingNode:
		sources = []*yaml.Node{v}
	case yaml.SequenceNode:
		for _, item := range v.Content {
			sources = append(sources, resolve(item))
		}
	}
	var out []pair
	seen := map[string]bool{}
	for _, src := range sources {
		if src.Kind != yaml.MappingNode {
			d.add(v.Line, join(key, "<<"), "must be a mapping or a list of mappings, got "+describe(src))
			d.broken[key] = true
			return nil
		}
		if depth > 8 || d.budget <= 0 {
			d.add(v.Line, join(key, "<<"), "merge keys nest too deep (or merge a mapping into itself)")
			d.broken[key] = true
			return nil
		}
		for i := 0; i+1 < len(src.Content); i += 2 {
			d.budget--
			k, val := resolve(src.Content[i]), resolve(src.Content[i+1])
			if k.Kind != yaml.ScalarNode {
				continue
			}
			var ps []pair
			if k.ShortTag() == "!!merge" {
				ps = d.merge(val, key, depth+1)
			} else {
				ps = []pair{{k.Value, k, val}}
			}
			for _, p := range ps {
				if !seen[p.name] {
					seen[p.name] = true
					out = append(out, p)
				}
			}
		}
	}
	return out
}

// str decodes a scalar as a string. Numbers and booleans are taken as
// written (PORT: 4000 means "4000"), as is usual for configuration.
func (d *decoder) str(n *yaml.Node, key string) string {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		d.wrong(n, key, "a string")
		return ""
	}
	return n.Value
}

func (d *decoder) integer(n *yaml.Node, key string) int {
	var v int
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&v) != nil {
		d.wrong(n, key, "an integer")
		return 0
	}
	return v
}

func (d *decoder) duration(n *yaml.Node, key string) time.Duration {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
		if v, err := time.ParseDuration(n.Value); err == nil {
			return v
		}
	}
	d.wrong(n, key, "a duration such as 30s or 2m")
	return 0
}

func (d *decoder) stringList(n *yaml.Node, key string) []string {
	var out []string
	d.list(n, key, func(n *yaml.Node, key string) {
		out = append(out, d.str(n, key))
	})
	return out
}

func (d *decoder) stringMap(n *yaml.Node, key string) map[string]string {
	out := map[string]string{}
	d.entries(n, key, func(name string, n *yaml.Node, key string) {
		out[name] = d.str(n, key)
	})
	return out
}

// manifest decodes the top-level mapping, starting from the defaults so that
// a key given explicitly (even as 0) is never overwritten by one.
func (d *decoder) manifest(root *yaml.Node) *Manifest {
	m := &Manifest{
		Build:   Build{Timeout: DefaultBuildTimeout},
		Rollout: Rollout{Batch: DefaultBatch, Timeout: DefaultTimeout},
		Cluster: Cluster{Settle: DefaultSettle},
	}
	dirSet := false
	d.fields(root, "",
		field{"app", func(n *yaml.Node, k string) { m.App = d.str(n, k) }},
		field{"hosts", func(n *yaml.Node, k string) { m.Hosts = d.hosts(n, k) }},
		field{"build", func(n *yaml.Node, k string) {
			d.fields(n, k,
				field{"host", func(n *yaml.Node, k string) { m.Build.Host = d.str(n, k) }},
				field{"dir", func(n *yaml.Node, k string) { m.Build.Dir, dirSet = d.str(n, k), true }},
				field{"env", func(n *yaml.Node, k string) { m.Build.Env = d.stringMap(n, k) }},
				field{"steps", func(n *yaml.Node, k string) { m.Build.Steps = d.steps(n, k) }},
				field{"artifact", func(n *yaml.Node, k string) { m.Build.Artifact = d.str(n, k) }},
				field{"timeout", func(n *yaml.Node, k string) { m.Build.Timeout = d.duration(n, k) }},
			)
		}},
		field{"environments", func(n *yaml.Node, k string) { m.Environments = d.environments(n, k) }},
		field{"release", func(n *yaml.Node, k string) { d.release(n, k, &m.Release) }},
		field{"cluster", func(n *yaml.Node, k string) {
			d.fields(n, k,
				field{"members", func(n *yaml.Node, k string) { m.Cluster.Members = d.str(n, k) }},
				field{"settle", func(n *yaml.Node, k string) { m.Cluster.Settle = d.duration(n, k) }},
			)
		}},
		field{"health", func(n *yaml.Node, k string) {
			m.Health = &Health{ExpectStatus: DefaultExpectStatus}
			d.fields(n, k,
				field{"url", func(n *yaml.Node, k string) { m.Health.URL = d.str(n, k) }},
				field{"expect_status", func(n *yaml.Node, k string) { m.Health.ExpectStatus = d.integer(n, k) }},
			)
		}},
		field{"rollout", func(n *yaml.Node, k string) {
			d.fields(n, k,
				field{"batch", func(n *yaml.Node, k string) { m.Rollout.Batch = d.integer(n, k) }},
				field{"timeout", func(n *yaml.Node, k string) { m.Rollout.Timeout = d.duration(n, k) }},
			)
		}},
		field{"loadbalancer", func(n *yaml.Node, k string) {
			m.LoadBalancer = &LoadBalancer{HAProxy: HAProxy{Socket: DefaultHAProxySocket}, DrainTimeout: DefaultDrainTimeout}
			h := &m.LoadBalancer.HAProxy
			d.fields(n, k,
				field{"haproxy", func(n *yaml.Node, k string) {
					d.fields(n, k,
						field{"host", func(n *yaml.Node, k string) { h.Host = d.str(n, k) }},
						field{"socket", func(n *yaml.Node, k string) { h.Socket = d.str(n, k) }},
						field{"backend", func(n *yaml.Node, k string) { h.Backend = d.str(n, k) }},
					)
				}},
				field{"drain_timeout", func(n *yaml.Node, k string) { m.LoadBalancer.DrainTimeout = d.duration(n, k) }},
			)
		}},
	)
	if !dirSet {
		m.Build.Dir = DefaultBuildDir(m.App)
	}
	return m
}

func (d *decoder) hosts(n *yaml.Node, key string) map[string]Host {
	out := map[string]Host{}
	d.entries(n, key, func(name string, n *yaml.Node, key string) {
		h := Host{Name: name, Port: DefaultPort}
		d.fields(n, key,
			field{"address", func(n *yaml.Node, k string) { h.Address = d.str(n, k) }},
			field{"user", func(n *yaml.Node, k string) { h.User = d.str(n, k) }},
			field{"port", func(n *yaml.Node, k string) { h.Port = d.integer(n, k) }},
			field{"node", func(n *yaml.Node, k string) { h.Node = d.str(n, k) }},
		)
		// Kept even when malformed, so that references to it are not also
		// reported as unknown hosts.
		out[name] = h
	})
	return out
}

func (d *decoder) steps(n *yaml.Node, key string) []Step {
	var out []Step
	d.list(n, key, func(n *yaml.Node, key string) {
		var s Step
		d.fields(n, key,
			field{"run", func(n *yaml.Node, k string) { s.Run = d.str(n, k) }},
			field{"when_changed", func(n *yaml.Node, k string) { s.WhenChanged = d.stringList(n, k) }},
		)
		out = append(out, s)
	})
	return out
}

func (d *decoder) environments(n *yaml.Node, key string) map[string]Environment {
	out := map[string]Environment{}
	d.entries(n, key, func(name string, n *yaml.Node, key string) {
		e := Environment{Name: name, KeepReleases: DefaultKeepReleases}
		d.fields(n, key,
			field{"hosts", func(n *yaml.Node, k string) { e.Hosts = d.stringList(n, k) }},
			field{"deploy_to", func(n *yaml.Node, k string) { e.DeployTo = d.str(n, k) }},
			field{"keep_releases", func(n *yaml.Node, k string) { e.KeepReleases = d.integer(n, k) }},
		)
		out[name] = e
	})
	return out
}

func (d *decoder) release(n *yaml.Node, key string, r *Release) {
	d.fields(n, key,
		field{"env", func(n *yaml.Node, k string) { r.Env = d.stringMap(n, k) }},
		field{"links", func(n *yaml.Node, k string) { r.Links = d.stringList(n, k) }},
		field{"files", func(n *yaml.Node, k string) {
			d.list(n, k, func(n *yaml.Node, k string) {
				var f ReleaseFile
				d.fields(n, k,
					field{"template", func(n *yaml.Node, k string) { f.Template = d.str(n, k) }},
					field{"path", func(n *yaml.Node, k string) { f.Path = d.str(n, k) }},
				)
				r.Files = append(r.Files, f)
			})
		}},
		field{"start", func(n *yaml.Node, k string) { r.Start = d.str(n, k) }},
		field{"stop", func(n *yaml.Node, k string) { r.Stop = d.str(n, k) }},
		field{"ping", func(n *yaml.Node, k string) { r.Ping = d.str(n, k) }},
		field{"migrate", func(n *yaml.Node, k string) { r.Migrate = d.str(n, k) }},
	)
}

func join(key, name string) string {
	if key == "" {
		return name
	}
	return key + "." + name
}

// resolve follows an alias (*anchor) to the node it names.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 16; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names what a node is, for "must be X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "nothing"
		case "!!str":
			return strconv.Quote(truncate(n.Value))
		}
		return truncate(n.Value)
	}
	return "an unsupported YAML node"
}

func truncate(s string) string {
	const limit = 40
	r := []rune(s)
	if len(r) <= limit {
		return s
	}
	return string(r[:limit-3]) + "..."
}
