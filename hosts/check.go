package hosts

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// CheckTarget is one host for Check.
type CheckTarget struct {
	Target Target
	// Members, for a node that runs the app, is the membership command
	// (the manifest's cluster.members, in current with the release env):
	// it prints one node name a line. Nil for other hosts.
	Members *Cmd
}

// HostKeyStatus is what Check learnt about a host's key.
type HostKeyStatus string

// The host key statuses: the key matches known_hosts; known_hosts has no
// key for the host; the host presented another key than known_hosts lists;
// no key was seen (the host could not be reached, or the fault was the jump
// host's).
const (
	HostKeyKnown     HostKeyStatus = "known"
	HostKeyUnknown   HostKeyStatus = "unknown"
	HostKeyChanged   HostKeyStatus = "changed"
	HostKeyUnchecked HostKeyStatus = "unchecked"
)

// CheckResult is the state of one host's connection, for `operator hosts
// check`.
type CheckResult struct {
	Target Target
	// Reachable is true when an authenticated SSH connection is up.
	Reachable bool
	HostKey   HostKeyStatus
	// Fingerprint is the SHA256 fingerprint of the key the host presented,
	// for an administrator to compare out of band.
	Fingerprint string
	// RTT is the round trip of one SSH request on the connection.
	RTT time.Duration
	// Err says why the host is not reachable.
	Err error
	// Members are the nodes the membership command listed.
	Members []string
	// MembersErr says why the membership command failed.
	MembersErr error
}

// Check connects to every target at once (or reuses the pool's connection),
// and reports reachability, host key status, the SSH round trip and, for
// nodes, the membership command's output. It never fails as a whole: each
// result carries its own errors.
func (p *Pool) Check(ctx context.Context, targets []CheckTarget) []CheckResult {
	results := make([]CheckResult, len(targets))
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i, ct := range targets {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			results[i] = p.check(ctx, ct)
		})
	}
	wg.Wait()
	return results
}

func (p *Pool) check(ctx context.Context, ct CheckTarget) CheckResult {
	r := CheckResult{Target: ct.Target, HostKey: HostKeyUnchecked}
	cl, err := p.client(ct.Target)
	if err != nil {
		r.Err = err
		return r
	}
	cn, err := cl.get(ctx)
	if err != nil {
		r.Err = err
		var unknown *UnknownHostKeyError
		var changed *HostKeyChangedError
		switch {
		case errors.As(err, &unknown) && unknown.Host == ct.Target.String():
			r.HostKey, r.Fingerprint = HostKeyUnknown, ssh.FingerprintSHA256(unknown.Key)
		case errors.As(err, &changed) && changed.Host == ct.Target.String():
			r.HostKey, r.Fingerprint = HostKeyChanged, ssh.FingerprintSHA256(changed.Key)
		}
		return r
	}
	r.Reachable, r.HostKey = true, HostKeyKnown
	if cn.key != nil {
		r.Fingerprint = ssh.FingerprintSHA256(cn.key)
	}
	start := time.Now()
	if err := cn.ping(5 * time.Second); err != nil {
		r.Reachable, r.Err = false, cl.connErr("ping", err)
		return r
	}
	r.RTT = time.Since(start)
	if ct.Members != nil {
		out, err := p.Output(ctx, ct.Target, *ct.Members)
		r.MembersErr = err
		for l := range strings.SplitSeq(string(out), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				r.Members = append(r.Members, l)
			}
		}
	}
	return r
}
