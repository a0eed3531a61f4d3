package hosts

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/clusterops/operator/manifests"
	"github.com/klauspost/compress/gzip"
)

// Index lists what a release holds as its artifact has it: every directory
// and regular file by path (relative, clean, without "./"), with its mode
// and, for a file, the hex SHA-256 of its bytes. It is kept beside the
// release on each node (Layout.IndexPath), so that the next release can be
// sent as a delta against it (Deltas, Layout.ReceiveDelta). Shared links
// are not in it, and a node's kept index leaves out the paths of its
// rendered files (release.files), which it makes after: an index says
// which files of a node's release hold the artifact's bytes.
type Index map[string]IndexEntry

// IndexEntry is one path of an Index.
type IndexEntry struct {
	Dir  bool
	Mode fs.FileMode
	// Sum is the hex SHA-256 of a file's bytes; "" for a directory.
	Sum string
}

const indexHeader = "operator-release-index 1"

// Marshal writes the index as text, one path a line in path order:
// "d <mode> <path>" or "f <mode> <sha256> <path>", the mode's 12 bits as
// the artifact has them (setuid, setgid and sticky included: ParseIndex
// reads them back, as fuzzing found it must).
func (ix Index) Marshal() []byte {
	var b bytes.Buffer
	b.WriteString(indexHeader + "\n")
	for _, p := range slices.Sorted(maps.Keys(ix)) {
		e := ix[p]
		if e.Dir {
			fmt.Fprintf(&b, "d %04o %s\n", e.Mode&0o7777, p)
		} else {
			fmt.Fprintf(&b, "f %04o %s %s\n", e.Mode&0o7777, e.Sum, p)
		}
	}
	return b.Bytes()
}

// ParseIndex reads what Marshal wrote. An index it cannot read in full is
// an error: a delta against a base known only in part could keep a file
// that changed.
func ParseIndex(data []byte) (Index, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	if !sc.Scan() || sc.Text() != indexHeader {
		return nil, fmt.Errorf("release index: want first line %q", indexHeader)
	}
	ix := Index{}
	for n := 2; sc.Scan(); n++ {
		line := sc.Text()
		kind, rest, _ := strings.Cut(line, " ")
		mode, rest, _ := strings.Cut(rest, " ")
		m, err := strconv.ParseUint(mode, 8, 32)
		if err != nil || m > 0o7777 {
			return nil, fmt.Errorf("release index line %d: mode %q", n, mode)
		}
		e := IndexEntry{Mode: fs.FileMode(m)}
		switch kind {
		case "d":
			e.Dir = true
		case "f":
			if e.Sum, rest, _ = strings.Cut(rest, " "); !validSum(e.Sum) {
				return nil, fmt.Errorf("release index line %d: sha256 %q", n, e.Sum)
			}
		default:
			return nil, fmt.Errorf("release index line %d: kind %q, want d or f", n, kind)
		}
		if p, ok := manifests.CleanIndexPath(rest); !ok || p != rest {
			return nil, fmt.Errorf("release index line %d: path %q", n, rest)
		}
		ix[rest] = e
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("release index: %w", err)
	}
	return ix, nil
}

// ErrNoDelta says an artifact holds something a delta does not carry (a
// symbolic or hard link, a device, an unusual name): it is staged whole.
var ErrNoDelta = errors.New("artifact cannot be sent as a delta")

// Delta is what one node needs to make the release from its base release:
// the payload ReceiveDelta reads on stdin.
type Delta struct {
	// Payload is a gzipped tarball: the files that differ from the base
	// (and every directory) under release/, and under operator/ the new
	// index, the list of files to link from the base, and the check list.
	Payload []byte
	// IndexSum is the hex SHA-256 of the new index, for ReceiveDelta.
	IndexSum string
	// Sent and Linked count the files sent and those taken from the base.
	Sent, Linked int
	// SentBytes is the size of the files sent, before compression.
	SentBytes int64
}

// DeltaLimits bounds the memory Deltas uses.
type DeltaLimits struct {
	// File is the largest file kept in memory to be sent; a larger file
	// that a base lacks sends that base's nodes the whole artifact.
	File int64
	// Payload is the largest payload per base, uncompressed.
	Payload int64
}

// DefaultDeltaLimits keeps a few releases' worth of changes in memory.
var DefaultDeltaLimits = DeltaLimits{File: 64 << 20, Payload: 256 << 20}

// Deltas reads a gzipped release tarball (the artifact) once and returns
// its Index and, for each base given by name, the Delta that turns that
// base into the release. Paths under links (release.links) are left out of
// both, index and delta: the node makes them shared links, so an index
// says what a node's release holds from the artifact. A base whose delta
// would pass the limits is left out of the map: its nodes get the whole
// artifact. The bytes read must hash to the hex SHA-256 that sum returns,
// or nothing is returned: a payload is only ever made from the artifact
// that was kept. Deltas calls sum once, when it has read every byte, so
// the sum may come from work done meanwhile (the build host keeping the
// artifact while the operator reads it); an error from sum is returned. An
// artifact a delta cannot carry returns ErrNoDelta (its index too is nil).
func Deltas(r io.Reader, sum func() (string, error), bases map[string]Index, links []string, limits DeltaLimits) (Index, map[string]*Delta, error) {
	h := sha256.New()
	zr, err := gzip.NewReader(io.TeeReader(r, h))
	if err != nil {
		return nil, nil, fmt.Errorf("read artifact: %w", err)
	}
	out := map[string]*deltaBuilder{}
	for name, base := range bases {
		b := &deltaBuilder{base: base, delta: &Delta{}, keep: map[string]bool{}, sent: map[string]bool{}}
		b.zw, _ = gzip.NewWriterLevel(&b.buf, gzip.BestSpeed)
		b.tw = tar.NewWriter(b.zw)
		out[name] = b
	}
	// One goroutine inflates and parses, the other hashes and compares: on
	// two cores the hashing costs no time.
	members := make(chan member, 16)
	done := make(chan struct{})
	defer close(done)
	go readMembers(zr, links, limits, members, done)
	ix := Index{}
	for m := range members {
		if m.err != nil {
			return nil, nil, m.err
		}
		hdr, p := m.hdr, m.path
		// A member may appear twice (Mix adds overlays after bin/): the
		// last one wins, as when tar extracts.
		if prev, dup := ix[p]; dup && (prev.Dir || hdr.Typeflag == tar.TypeDir) {
			return nil, nil, fmt.Errorf("%w: member %q appears twice, once as a directory", ErrNoDelta, hdr.Name)
		}
		mode := fs.FileMode(hdr.Mode & 0o7777)
		if hdr.Typeflag == tar.TypeDir {
			ix[p] = IndexEntry{Dir: true, Mode: mode}
			for _, b := range out {
				if err := b.add(hdr, p, nil); err != nil {
					return nil, nil, err
				}
			}
			continue
		}
		if m.held {
			h := sha256.Sum256(m.content)
			m.sum = hex.EncodeToString(h[:])
		}
		e := IndexEntry{Mode: mode, Sum: m.sum}
		ix[p] = e
		for _, b := range out {
			if b.failed {
				continue
			}
			// A path sent once is sent again: the later copy must
			// overwrite the earlier in the payload.
			if old, ok := b.base[p]; ok && !old.Dir && old == e && !b.sent[p] {
				b.keep[p] = true
				continue
			}
			delete(b.keep, p)
			b.sent[p] = true
			if !m.held || b.raw+hdr.Size > limits.Payload {
				b.failed = true
				continue
			}
			if err := b.add(hdr, p, m.content); err != nil {
				return nil, nil, err
			}
			b.raw += hdr.Size
			b.delta.Sent++
			b.delta.SentBytes += hdr.Size
		}
	}
	// Read to the end of the gzip stream and beyond, so the hash covers
	// every byte of the artifact.
	if _, err := io.Copy(io.Discard, zr); err != nil {
		return nil, nil, fmt.Errorf("read artifact: %w", err)
	}
	if _, err := io.Copy(h, r); err != nil {
		return nil, nil, fmt.Errorf("read artifact: %w", err)
	}
	want, err := sum()
	if err != nil {
		return nil, nil, err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return nil, nil, fmt.Errorf("artifact read has sha256 %s, want %s", got, want)
	}
	index := ix.Marshal()
	isum := sha256.Sum256(index)
	deltas := map[string]*Delta{}
	for name, b := range out {
		if b.failed {
			continue
		}
		d, err := b.finish(ix, index, hex.EncodeToString(isum[:]))
		if err != nil {
			return nil, nil, err
		}
		deltas[name] = d
	}
	return ix, deltas, nil
}

// KnownSum is the sum for Deltas when it is known before the read.
func KnownSum(sum string) func() (string, error) {
	return func() (string, error) { return sum, nil }
}

// linked reports whether p is one of links or under one.
func linked(p string, links []string) bool {
	for _, l := range links {
		l = path.Clean(l)
		if p == l || strings.HasPrefix(p, l+"/") {
			return true
		}
	}
	return false
}

// member is one directory or regular file of an artifact, as readMembers
// read it: with its content when held (no larger than DeltaLimits.File),
// else with the hex SHA-256 of its content; or the error that ended the
// reading.
type member struct {
	hdr     *tar.Header
	path    string
	held    bool
	content []byte
	sum     string
	err     error
}

// readMembers reads the tarball's members into members, then closes it;
// it stops early when done closes.
func readMembers(r io.Reader, links []string, limits DeltaLimits, members chan<- member, done <-chan struct{}) {
	defer close(members)
	send := func(m member) bool {
		select {
		case members <- m:
			return true
		case <-done:
			return false
		}
	}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			send(member{err: fmt.Errorf("read artifact: %w", err)})
			return
		}
		p, ok := manifests.CleanIndexPath(hdr.Name)
		if p == "." && hdr.Typeflag == tar.TypeDir {
			continue
		}
		if !ok {
			send(member{err: fmt.Errorf("%w: member %q", ErrNoDelta, hdr.Name)})
			return
		}
		if linked(p, links) {
			continue
		}
		m := member{hdr: hdr, path: p}
		switch hdr.Typeflag {
		case tar.TypeDir:
		case tar.TypeReg:
			if m.held = hdr.Size <= limits.File; m.held {
				m.content = make([]byte, hdr.Size)
				_, err = io.ReadFull(tr, m.content)
			} else {
				h := sha256.New()
				_, err = io.Copy(h, tr)
				m.sum = hex.EncodeToString(h.Sum(nil))
			}
			if err != nil {
				send(member{err: fmt.Errorf("read artifact: %w", err)})
				return
			}
		default:
			send(member{err: fmt.Errorf("%w: member %q is of type %q", ErrNoDelta, hdr.Name, hdr.Typeflag)})
			return
		}
		if !send(m) {
			return
		}
	}
}

// deltaBuilder writes one base's payload as Deltas reads the artifact.
type deltaBuilder struct {
	base   Index
	buf    bytes.Buffer
	zw     *gzip.Writer
	tw     *tar.Writer
	raw    int64
	keep   map[string]bool // files to link from the base
	sent   map[string]bool // files in the payload
	delta  *Delta
	failed bool
}

// finish ends the payload with the new index, the files to keep and the
// check list, and returns the Delta.
func (b *deltaBuilder) finish(ix Index, index []byte, indexSum string) (*Delta, error) {
	// The check list covers the files sent. Those linked from the base
	// were checked when the base was staged, and a release is never
	// written to in place (see ReceiveDelta); hashing them all again
	// would cost more than linking them.
	var keep, check bytes.Buffer
	for _, p := range slices.Sorted(maps.Keys(b.sent)) {
		fmt.Fprintf(&check, "%s  ./%s\n", ix[p].Sum, p)
	}
	for _, p := range slices.Sorted(maps.Keys(b.keep)) {
		keep.WriteString("./" + p + "\x00")
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{"operator/index", index}, {"operator/keep", keep.Bytes()}, {"operator/check", check.Bytes()}} {
		if err := b.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o600, Size: int64(len(f.data))}); err != nil {
			return nil, fmt.Errorf("delta payload: %w", err)
		}
		if _, err := b.tw.Write(f.data); err != nil {
			return nil, fmt.Errorf("delta payload: %w", err)
		}
	}
	if err := b.tw.Close(); err != nil {
		return nil, fmt.Errorf("delta payload: %w", err)
	}
	if err := b.zw.Close(); err != nil {
		return nil, fmt.Errorf("delta payload: %w", err)
	}
	b.delta.Linked = len(b.keep)
	b.delta.Payload = b.buf.Bytes()
	b.delta.IndexSum = indexSum
	return b.delta, nil
}

// add writes a directory (content nil) or a file of the artifact under
// release/, with its mode and time, owned as in the artifact.
func (b *deltaBuilder) add(hdr *tar.Header, p string, content []byte) error {
	if b.failed {
		return nil
	}
	h := &tar.Header{
		Typeflag: hdr.Typeflag, Name: "release/" + p, Mode: hdr.Mode & 0o7777,
		Uid: hdr.Uid, Gid: hdr.Gid, Uname: hdr.Uname, Gname: hdr.Gname,
		ModTime: hdr.ModTime, Size: int64(len(content)),
	}
	if h.Typeflag == tar.TypeDir {
		h.Name += "/"
		h.Size = 0
	}
	if err := b.tw.WriteHeader(h); err != nil {
		return fmt.Errorf("delta payload: %w", err)
	}
	if _, err := b.tw.Write(content); err != nil {
		return fmt.Errorf("delta payload: %w", err)
	}
	return nil
}
