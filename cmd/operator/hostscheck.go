package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/clusterops/operator/hosts"
	"github.com/clusterops/operator/manifests"
)

// runHosts is `operator hosts check`: for every host of the manifest at the
// branch head, whether it is reachable, whether its host key is known,
// unknown or changed, the SSH round trip, and for nodes what the membership
// command prints now. It exits 1 when any host is not reachable with a
// known key.
func runHosts(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "check" {
		fmt.Fprintln(stderr, "usage: operator hosts check [flags]")
		return 2
	}
	f := newOpFlags("hosts check", stderr)
	if code := parseFlags(f.fs, args[1:]); code >= 0 {
		return code
	}
	op, code := f.open("hosts check", stderr)
	if op == nil {
		return code
	}
	defer op.Close()
	cfg := op.cfg
	head, err := op.mirror.Fetch(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "operator hosts check: %v\n", err)
		return 1
	}
	data, err := op.mirror.ReadFile(head, cfg.Manifest)
	if err != nil {
		fmt.Fprintf(stderr, "operator hosts check: %v\n", err)
		return 1
	}
	m, err := manifests.Parse(cfg.Manifest, data)
	if err != nil {
		fmt.Fprintf(stderr, "operator hosts check: %s at %s is invalid:\n%v\n", cfg.Manifest, short(head), err)
		return 1
	}
	targets, err := checkTargets(m, cfg.Environment, head)
	if err != nil {
		fmt.Fprintf(stderr, "operator hosts check: %v\n", err)
		return 1
	}
	results := op.pool.Check(ctx, targets)
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "HOST\tADDRESS\tREACHABLE\tHOST KEY\tRTT\tMEMBERS")
	code = 0
	for _, r := range results {
		reach := "yes"
		if !r.Reachable {
			reach, code = "no", 1
		}
		if r.HostKey != hosts.HostKeyKnown {
			code = 1
		}
		rtt := "-"
		if r.RTT > 0 {
			rtt = r.RTT.Round(100 * time.Microsecond).String()
		}
		members := "-"
		switch {
		case r.MembersErr != nil:
			members = "error: " + firstLine(r.MembersErr.Error())
		case r.Members != nil:
			members = strings.Join(r.Members, " ")
			if members == "" {
				members = "(none)"
			}
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Target.Name, r.Target.Addr(), reach, r.HostKey, rtt, members)
	}
	w.Flush()
	for _, r := range results {
		if r.Err != nil {
			fmt.Fprintf(stdout, "%s: %v\n", r.Target.Name, r.Err)
		}
	}
	return code
}

// checkTargets lists every host of the manifest once, with the membership
// command for the environment's nodes.
func checkTargets(m *manifests.Manifest, env, commit string) ([]hosts.CheckTarget, error) {
	e, err := m.Environment(env)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(m.Hosts))
	for name := range m.Hosts {
		names = append(names, name)
	}
	sort.Strings(names)
	var out []hosts.CheckTarget
	for _, name := range names {
		h := m.Hosts[name]
		ct := hosts.CheckTarget{Target: hosts.Target{Name: name, Address: h.Address, Port: h.Port, User: h.User}}
		if slices.Contains(e.Hosts, name) {
			relEnv, err := m.ReleaseEnv(env, name, commit)
			if err != nil {
				return nil, err
			}
			c := hosts.ShellCmd(hosts.Layout{DeployTo: e.DeployTo}.Current(), m.Cluster.Members, relEnv)
			ct.Members = &c
		}
		out = append(out, ct)
	}
	return out, nil
}
