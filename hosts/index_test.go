package hosts

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestIndexRoundTrip(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	ix := Index{
		"bin":          {Dir: true, Mode: 0o755},
		"bin/chat":     {Mode: 0o755, Sum: sum},
		"lib/a b.beam": {Mode: 0o644, Sum: sum},
	}
	got, err := ParseIndex(ix.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ix, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	for name, text := range map[string]string{
		"no header":       "f 0644 " + sum + " a\n",
		"unknown kind":    indexHeader + "\nl 0777 a\n",
		"bad mode":        indexHeader + "\nd 9 a\n",
		"short sum":       indexHeader + "\nf 0644 abc a\n",
		"leaving path":    indexHeader + "\nf 0644 " + sum + " ../a\n",
		"absolute path":   indexHeader + "\nd 0755 /etc\n",
		"unclean path":    indexHeader + "\nd 0755 ./a\n",
		"backslash path":  indexHeader + "\nd 0755 a\\b\n",
		"missing path":    indexHeader + "\nd 0755\n",
		"sum and no path": indexHeader + "\nf 0644 " + sum + "\n",
	} {
		if _, err := ParseIndex([]byte(text)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// release writes files (path → content; a name ending in "*" is
// executable) under a new directory and returns it with its gzipped
// tarball, made by tar as a build's would be, and the tarball's sha256.
func release(t *testing.T, files map[string]string) (dir string, tarball []byte, sum string) {
	t.Helper()
	dir = t.TempDir()
	for name, content := range files {
		mode := fs.FileMode(0o644)
		if strings.HasSuffix(name, "*") {
			name, mode = strings.TrimSuffix(name, "*"), 0o755
		}
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	tarball, err := exec.Command("tar", "-czf", "-", "-C", dir, ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(tarball)
	return dir, tarball, hex.EncodeToString(h[:])
}

var links = []string{"releases/COOKIE"}

var v1Files = map[string]string{
	"bin/chat*":                      "#!/bin/sh\necho v1\n",
	"lib/chat/ebin/Elixir.Chat.beam": "chat v1",
	"lib/chat/ebin/Elixir.Gone.beam": "gone in v2",
	"lib/kernel/ebin/kernel.beam":    "kernel",
	"releases/COOKIE":                "from the tarball",
	"releases/0.1.0/start.boot":      "boot",
}

var v2Files = map[string]string{
	"bin/chat*":                      "#!/bin/sh\necho v1\n",
	"lib/chat/ebin/Elixir.Chat.beam": "chat v2",
	"lib/chat/ebin/Elixir.New.beam":  "new in v2",
	"lib/kernel/ebin/kernel.beam":    "kernel",
	"releases/COOKIE":                "from the tarball",
	"releases/0.1.0/start.boot*":     "boot", // same bytes, now executable
}

func TestDeltas(t *testing.T) {
	_, tar1, sum1 := release(t, v1Files)
	_, tar2, sum2 := release(t, v2Files)
	base, none, err := Deltas(bytes.NewReader(tar1), KnownSum(sum1), nil, links, DefaultDeltaLimits)
	if err != nil || len(none) != 0 {
		t.Fatalf("index of v1: %v, %d deltas", err, len(none))
	}
	if e := base["lib/chat/ebin/Elixir.Chat.beam"]; e.Sum != sha256hex("chat v1") || e.Mode != 0o644 || e.Dir {
		t.Errorf("v1's chat beam indexed as %+v", e)
	}
	if e := base["bin/chat"]; e.Mode != 0o755 {
		t.Errorf("v1's bin/chat indexed with mode %o", e.Mode)
	}

	ix, deltas, err := Deltas(bytes.NewReader(tar2), KnownSum(sum2), map[string]Index{"v1": base}, links, DefaultDeltaLimits)
	if err != nil {
		t.Fatal(err)
	}
	d := deltas["v1"]
	if d == nil {
		t.Fatal("no delta against v1")
	}
	// Sent: the changed beam, the new one, the boot file whose mode changed.
	if d.Sent != 3 || d.Linked != 2 {
		t.Errorf("sent %d, linked %d files; want 3 and 2 (COOKIE is a shared link)", d.Sent, d.Linked)
	}
	if h := sha256.Sum256(ix.Marshal()); d.IndexSum != hex.EncodeToString(h[:]) {
		t.Errorf("index sum %s does not match the index", d.IndexSum)
	}

	t.Run("another sum", func(t *testing.T) {
		if _, _, err := Deltas(bytes.NewReader(tar2), KnownSum(sum1), map[string]Index{"v1": base}, links, DefaultDeltaLimits); err == nil {
			t.Error("accepted an artifact whose bytes hash to another sum")
		}
	})
	t.Run("sum that fails", func(t *testing.T) {
		kept := errors.New("artifact not kept")
		read := false
		sum := func() (string, error) {
			read = true
			return "", kept
		}
		if _, _, err := Deltas(bytes.NewReader(tar2), sum, map[string]Index{"v1": base}, links, DefaultDeltaLimits); !errors.Is(err, kept) {
			t.Errorf("got %v, want the sum's error", err)
		}
		if !read {
			t.Error("sum not asked for")
		}
	})
	t.Run("limits", func(t *testing.T) {
		_, deltas, err := Deltas(bytes.NewReader(tar2), KnownSum(sum2), map[string]Index{"v1": base, "empty": {}}, links, DeltaLimits{File: 1 << 20, Payload: 20})
		if err != nil {
			t.Fatal(err)
		}
		if deltas["empty"] != nil {
			t.Error("a delta from nothing passed a 20-byte payload limit")
		}
		if deltas["v1"] == nil {
			t.Error("no delta against v1, whose changes fit in 20 bytes")
		}
	})
	t.Run("symlink", func(t *testing.T) {
		dir, _, _ := release(t, v2Files)
		if err := os.Symlink("chat", filepath.Join(dir, "bin", "link")); err != nil {
			t.Fatal(err)
		}
		tarball, err := exec.Command("tar", "-czf", "-", "-C", dir, ".").Output()
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(tarball)
		if _, _, err := Deltas(bytes.NewReader(tarball), KnownSum(hex.EncodeToString(h[:])), nil, links, DefaultDeltaLimits); !errors.Is(err, ErrNoDelta) {
			t.Errorf("got %v, want ErrNoDelta", err)
		}
	})
}

// TestReceiveDeltaRuns runs the delta script here with sh, the way a node
// does: the release it makes is the artifact's, byte for byte, sharing
// the unchanged files with its base; anything wrong leaves no release.
func TestReceiveDeltaRuns(t *testing.T) {
	_, tar1, sum1 := release(t, v1Files)
	dir2, tar2, sum2 := release(t, v2Files)
	base, _, err := Deltas(bytes.NewReader(tar1), KnownSum(sum1), nil, links, DefaultDeltaLimits)
	if err != nil {
		t.Fatal(err)
	}
	// setup stages v1 whole, as a first deploy does, with its index.
	setup := func(t *testing.T) Layout {
		l := Layout{DeployTo: filepath.Join(t.TempDir(), "it's $(x)")}
		if err := os.MkdirAll(filepath.Join(l.Shared(), "releases"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(l.Shared(), "releases", "COOKIE"), []byte("shared"), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, step := range []struct {
			build func() (Cmd, error)
			in    []byte
		}{
			{func() (Cmd, error) { return l.Receive("v1", sum1, links) }, tar1},
			{func() (Cmd, error) { return l.WriteIndex("v1", sha256hex(string(base.Marshal()))) }, base.Marshal()},
		} {
			c, err := step.build()
			if err != nil {
				t.Fatal(err)
			}
			runHere(t, c, step.in)
		}
		// v1 ran: its node wrote a rendered file and a log into it.
		if err := os.WriteFile(filepath.Join(l.ReleaseDir("v1"), "releases", "vm.args"), []byte("-name v1"), 0o644); err != nil {
			t.Fatal(err)
		}
		return l
	}
	receive := func(t *testing.T, l Layout, d *Delta, extra ...[]byte) error {
		c, err := l.ReceiveDelta("v2", []string{"v1"}, links)
		if err != nil {
			t.Fatal(err)
		}
		offer, err := session(t, c, func(Offer) *Delta { return d }, extra...)
		if err == nil && offer.Base != "v1" {
			t.Errorf("offered %+v, want base v1", offer)
		}
		return err
	}
	delta := func(t *testing.T) *Delta {
		_, deltas, err := Deltas(bytes.NewReader(tar2), KnownSum(sum2), map[string]Index{"v1": base}, links, DefaultDeltaLimits)
		if err != nil || deltas["v1"] == nil {
			t.Fatalf("delta: %v", err)
		}
		return deltas["v1"]
	}

	t.Run("made", func(t *testing.T) {
		l := setup(t)
		d := delta(t)
		// The node's own files follow: a rendered vm.args, and one over a
		// file the release shares with its base.
		files, err := NodeFiles(map[string][]byte{"releases/vm.args": []byte("-name v2"), "lib/kernel/ebin/kernel.beam": []byte("rendered")})
		if err != nil {
			t.Fatal(err)
		}
		if err := receive(t, l, d, files); err != nil {
			t.Fatal(err)
		}
		for name, want := range map[string]string{"releases/vm.args": "-name v2", "lib/kernel/ebin/kernel.beam": "rendered"} {
			if got, err := os.ReadFile(filepath.Join(l.ReleaseDir("v2"), name)); err != nil || string(got) != want {
				t.Errorf("%s holds %q (%v), want %q", name, got, err, want)
			}
		}
		if got, err := os.ReadFile(filepath.Join(l.ReleaseDir("v1"), "lib/kernel/ebin/kernel.beam")); err != nil || string(got) != "kernel" {
			t.Errorf("the base's kernel.beam became %q (%v)", got, err)
		}
		if _, err := NodeFiles(map[string][]byte{"../x": nil}); err == nil {
			t.Error("NodeFiles took a path leaving the release")
		}
		// What follows checks the release without the node's files.
		l = setup(t)
		if err := receive(t, l, d); err != nil {
			t.Fatal(err)
		}
		rel := l.ReleaseDir("v2")
		for name := range v2Files {
			name = strings.TrimSuffix(name, "*")
			want, _ := os.Stat(filepath.Join(dir2, name))
			got, err := os.Lstat(filepath.Join(rel, name))
			if name == "releases/COOKIE" {
				if err != nil || got.Mode()&fs.ModeSymlink == 0 {
					t.Errorf("%s is not the shared link: %v", name, err)
				}
				continue
			}
			if err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			if got.Mode() != want.Mode() {
				t.Errorf("%s has mode %v, want %v", name, got.Mode(), want.Mode())
			}
			b, _ := os.ReadFile(filepath.Join(rel, name))
			w, _ := os.ReadFile(filepath.Join(dir2, name))
			if !bytes.Equal(b, w) {
				t.Errorf("%s holds %q, want %q", name, b, w)
			}
		}
		for _, gone := range []string{"lib/chat/ebin/Elixir.Gone.beam", "releases/vm.args"} {
			if _, err := os.Lstat(filepath.Join(rel, gone)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s came along from the base: %v", gone, err)
			}
		}
		if a, b := inode(t, filepath.Join(rel, "lib/kernel/ebin/kernel.beam")), inode(t, filepath.Join(l.ReleaseDir("v1"), "lib/kernel/ebin/kernel.beam")); a != b {
			t.Error("an unchanged file was copied, not linked")
		}
		if a, b := inode(t, filepath.Join(rel, "releases/0.1.0/start.boot")), inode(t, filepath.Join(l.ReleaseDir("v1"), "releases/0.1.0/start.boot")); a == b {
			t.Error("a file whose mode changed shares its base's inode")
		}
		kept, err := os.ReadFile(l.IndexPath("v2"))
		if err != nil {
			t.Fatal(err)
		}
		if got := sha256hex(string(kept)); got != d.IndexSum {
			t.Errorf("kept index has sha256 %s, want %s", got, d.IndexSum)
		}
		if got := entriesOf(t, l.Releases()); !cmp.Equal(got, []string{"v1", "v1.index", "v2", "v2.index"}) {
			t.Errorf("releases/ holds %q", got)
		}
	})
	// A delta the node must refuse leaves releases/ as it was.
	for _, tt := range []struct {
		name, why string
		spoil     func(*testing.T, *Delta)
	}{
		{"sent file not as indexed", "a sent file whose bytes are not the index's", func(t *testing.T, d *Delta) {
			d.Payload = rewrite(t, d.Payload, "release/lib/chat/ebin/Elixir.Chat.beam", "tampered")
		}},
		{"wrong index sum", "an index of another sum", func(_ *testing.T, d *Delta) { d.IndexSum = strings.Repeat("0", 64) }},
		{"cut short", "half a payload", func(_ *testing.T, d *Delta) { d.Payload = d.Payload[:len(d.Payload)/2] }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := setup(t)
			d := delta(t)
			tt.spoil(t, d)
			if err := receive(t, l, d); err == nil {
				t.Fatal("accepted " + tt.why)
			}
			if got := entriesOf(t, l.Releases()); !cmp.Equal(got, []string{"v1", "v1.index"}) {
				t.Errorf("releases/ holds %q", got)
			}
		})
	}
	t.Run("member twice", func(t *testing.T) {
		// Mix writes bin/ and then its overlays: the last copy wins, in the
		// payload as when tar extracts the artifact.
		l := setup(t)
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		tw := tar.NewWriter(zw)
		for _, m := range []struct{ name, content string }{
			{"./bin/chat", "an older copy"},
			{"./lib/kernel/ebin/kernel.beam", "kernel"},
			{"./bin/chat", "#!/bin/sh\necho v1\n"},
			{"./lib/kernel/ebin/kernel.beam", "kernel, overlaid"},
		} {
			if err := tw.WriteHeader(&tar.Header{Name: m.name, Mode: 0o755, Size: int64(len(m.content)), Typeflag: tar.TypeReg}); err != nil {
				t.Fatal(err)
			}
			tw.Write([]byte(m.content))
		}
		tw.Close()
		zw.Close()
		h := sha256.Sum256(buf.Bytes())
		_, deltas, err := Deltas(bytes.NewReader(buf.Bytes()), KnownSum(hex.EncodeToString(h[:])), map[string]Index{"v1": base}, links, DefaultDeltaLimits)
		if err != nil || deltas["v1"] == nil {
			t.Fatalf("delta: %v", err)
		}
		if err := receive(t, l, deltas["v1"]); err != nil {
			t.Fatal(err)
		}
		for name, want := range map[string]string{"bin/chat": "#!/bin/sh\necho v1\n", "lib/kernel/ebin/kernel.beam": "kernel, overlaid"} {
			if got, err := os.ReadFile(filepath.Join(l.ReleaseDir("v2"), name)); err != nil || string(got) != want {
				t.Errorf("%s holds %q (%v), want %q", name, got, err, want)
			}
		}
	})
	t.Run("base gone", func(t *testing.T) {
		l := setup(t)
		if err := os.RemoveAll(l.ReleaseDir("v1")); err != nil {
			t.Fatal(err)
		}
		c, err := l.ReceiveDelta("v2", []string{"v1"}, links)
		if err != nil {
			t.Fatal(err)
		}
		offer, err := session(t, c, func(Offer) *Delta { return delta(t) })
		if err != nil || offer.Base != "" || offer.Have {
			t.Errorf("offered %+v (%v) without its base, want nothing", offer, err)
		}
		if got := entriesOf(t, l.Releases()); !cmp.Equal(got, []string{"v1.index"}) {
			t.Errorf("releases/ holds %q", got)
		}
	})
}

func runHere(t *testing.T, c Cmd, in []byte) {
	t.Helper()
	cmd := exec.Command(c.Args[0], c.Args[1:]...)
	cmd.Stdin = bytes.NewReader(in)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", c.Label, err, out)
	}
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func entriesOf(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// TestReceiveDeltaOffers runs the delta script here up to its offer: the
// first release named that has an index, whether or not it is the first
// named; nothing is left behind when the operator declines.
func TestReceiveDeltaOffers(t *testing.T) {
	l := Layout{DeployTo: filepath.Join(t.TempDir(), "it's $(x)")}
	for _, d := range []string{"a", "b", "c", "have"} {
		if err := os.MkdirAll(filepath.Join(l.ReleaseDir(d), "bin"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"b", "c", "gone"} {
		if err := os.WriteFile(l.IndexPath(name), []byte(indexHeader+"\nd 0755 bin\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		release string
		bases   []string
		want    Offer
	}{
		{"new", []string{"a", "b", "c"}, Offer{Base: "b"}},
		{"new", []string{"c", "b"}, Offer{Base: "c"}},
		{"new", []string{"gone", "a"}, Offer{}},
		{"new", nil, Offer{}},
		{"have", []string{"b"}, Offer{Have: true}},
	} {
		c, err := l.ReceiveDelta(tt.release, tt.bases, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := session(t, c, func(Offer) *Delta { return nil })
		if err != nil {
			t.Fatalf("%v: %v", tt.bases, err)
		}
		if got.Base != tt.want.Base || got.Have != tt.want.Have {
			t.Errorf("%s from %v: offered %+v, want %+v", tt.release, tt.bases, got, tt.want)
		}
		if got.Base != "" {
			if ix, err := ParseIndex(got.Index); err != nil || !ix["bin"].Dir {
				t.Errorf("%v: index %v (%v)", tt.bases, ix, err)
			}
		}
		if es := entriesOf(t, l.Releases()); len(es) != 7 {
			t.Errorf("releases/ holds %q after a declined offer", es)
		}
	}
	if _, err := l.ReceiveDelta("a", []string{"a"}, nil); err == nil {
		t.Error("a release was offered as its own base")
	}
	if _, err := ReadOffer(bufio.NewReader(strings.NewReader("base ../x 3\nabc"))); err == nil {
		t.Error("ReadOffer took a base name with a slash")
	}
	if _, err := ReadOffer(bufio.NewReader(strings.NewReader("base x 10\nabc"))); err == nil {
		t.Error("ReadOffer took an index cut short")
	}
}

// session runs a ReceiveDelta command here with sh, the way a node does,
// answering its offer (when it makes one) with what answer returns.
func session(t *testing.T, c Cmd, answer func(Offer) *Delta, extra ...[]byte) (Offer, error) {
	t.Helper()
	cmd := exec.Command(c.Args[0], c.Args[1:]...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	offer, err := ReadOffer(bufio.NewReader(stdout))
	if err == nil && offer.Base != "" {
		if d := answer(offer); d != nil {
			if err = SendLink(stdin); err == nil {
				err = SendDelta(stdin, d, bytes.Join(extra, nil))
			}
		} else {
			err = SendDelta(stdin, nil, nil)
		}
	}
	stdin.Close()
	io.Copy(io.Discard, stdout)
	if werr := cmd.Wait(); err == nil {
		err = werr
	}
	t.Logf("receive-delta: %v: %s", err, stderr.Bytes())
	return offer, err
}

// rewrite returns the gzipped tarball payload with member name's content
// replaced.
func rewrite(t *testing.T, payload []byte, name, content string) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	found := false
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		data, _ := io.ReadAll(tr)
		if h.Name == name {
			data, found = []byte(content), true
			h.Size = int64(len(data))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	tw.Close()
	zw.Close()
	if !found {
		t.Fatalf("payload has no %s", name)
	}
	return buf.Bytes()
}

// TestReceiveDeltaOverRenderedFiles stages releases as a deploy does, with
// a rendered file (release.files) over a file of the artifact, a Mix
// release's vm.args, which changes between the releases: v1 whole (its
// index, then the rendered file), v2 as a delta against v1 with the
// node's rendering of it, v3, which renders nothing and whose vm.args is
// v2's, as a delta against v2. Each release holds the rendered file when
// it has one and the artifact's bytes elsewhere, and its kept index lists
// no rendered path: a delta never keeps another release's rendering.
func TestReceiveDeltaOverRenderedFiles(t *testing.T) {
	const vmArgs = "releases/0.1.0/vm.args"
	files := func(vm string) map[string]string {
		return map[string]string{"bin/chat*": "#!/bin/sh\n", "lib/chat.beam": "chat " + vm, vmArgs: vm, "releases/COOKIE": "c"}
	}
	_, tar1, sum1 := release(t, files("-name artifact v1"))
	_, tar2, sum2 := release(t, files("-name artifact v2"))
	_, tar3, sum3 := release(t, files("-name artifact v2"))
	l := Layout{DeployTo: filepath.Join(t.TempDir(), "it's $(x)")}
	if err := os.MkdirAll(filepath.Join(l.Shared(), "releases"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(l.Shared(), "releases", "COOKIE"), []byte("shared"), 0o600); err != nil {
		t.Fatal(err)
	}
	// v1 whole: received, its index kept, then its rendered file written.
	ix1, _, err := Deltas(bytes.NewReader(tar1), KnownSum(sum1), nil, links, DefaultDeltaLimits)
	if err != nil {
		t.Fatal(err)
	}
	c, err := l.Receive("v1", sum1, links)
	if err != nil {
		t.Fatal(err)
	}
	runHere(t, c, tar1)
	if c, err = l.WriteIndex("v1", sha256hex(string(ix1.Marshal()))); err != nil {
		t.Fatal(err)
	}
	runHere(t, c, ix1.Marshal())
	rendered := "-name chat@n1 v1"
	if c, err = l.WriteFile("v1", vmArgs, 0o644, sha256hex(rendered)); err != nil {
		t.Fatal(err)
	}
	runHere(t, c, []byte(rendered))

	// receive makes release name as a delta against base, with the node's
	// files, from the index the node offers.
	receive := func(name, base string, tarball []byte, sum string, nodeFiles map[string][]byte) {
		t.Helper()
		c, err := l.ReceiveDelta(name, []string{base}, links)
		if err != nil {
			t.Fatal(err)
		}
		extra, err := NodeFiles(nodeFiles)
		if err != nil {
			t.Fatal(err)
		}
		var sent *Delta
		offer, err := session(t, c, func(o Offer) *Delta {
			ix, err := ParseIndex(o.Index)
			if err != nil {
				t.Errorf("offered index: %v", err)
				return nil
			}
			_, deltas, err := Deltas(bytes.NewReader(tarball), KnownSum(sum), map[string]Index{base: ix}, links, DefaultDeltaLimits)
			if err != nil {
				t.Errorf("delta: %v", err)
			}
			sent = deltas[base]
			return sent
		}, extra)
		if err != nil || offer.Base != base || sent == nil {
			t.Fatalf("%s from %s: offer %q, %v", name, base, offer.Base, err)
		}
	}
	want := func(name string, files map[string]string) {
		t.Helper()
		for p, content := range files {
			if got, err := os.ReadFile(filepath.Join(l.ReleaseDir(name), p)); err != nil || string(got) != content {
				t.Errorf("%s: %s holds %q (%v), want %q", name, p, got, err, content)
			}
		}
		data, err := os.ReadFile(l.IndexPath(name))
		if err != nil {
			t.Fatal(err)
		}
		ix, err := ParseIndex(data)
		if err != nil {
			t.Fatal(err)
		}
		for p, e := range ix {
			if e.Dir {
				continue
			}
			if got, err := os.ReadFile(filepath.Join(l.ReleaseDir(name), p)); err != nil || sha256hex(string(got)) != e.Sum {
				t.Errorf("%s's index says %s has sha256 %s, it holds %q (%v)", name, p, e.Sum, got, err)
			}
		}
	}
	want("v1", map[string]string{vmArgs: rendered, "lib/chat.beam": "chat -name artifact v1"})
	if ix, err := ParseIndex(mustRead(t, l.IndexPath("v1"))); err != nil || ix[vmArgs] != (IndexEntry{}) || ix["lib/chat.beam"].Sum == "" {
		t.Errorf("v1's index: %v; want no %s, the rest as the artifact's (%v)", ix, vmArgs, err)
	}

	// v2: the artifact's vm.args changed, and the node renders its own.
	rendered = "-name chat@n1 v2"
	receive("v2", "v1", tar2, sum2, map[string][]byte{vmArgs: []byte(rendered)})
	want("v2", map[string]string{vmArgs: rendered, "lib/chat.beam": "chat -name artifact v2"})
	// Whole or as a delta, nodes keep the same index: one delta serves them.
	whole := ix1
	delete(whole, vmArgs)
	ix2, _, err := Deltas(bytes.NewReader(tar2), KnownSum(sum2), nil, links, DefaultDeltaLimits)
	if err != nil {
		t.Fatal(err)
	}
	delete(ix2, vmArgs)
	if got := mustRead(t, l.IndexPath("v2")); string(got) != string(ix2.Marshal()) {
		t.Errorf("v2's index:\n%s\nwant\n%s", got, ix2.Marshal())
	}
	if got := mustRead(t, l.IndexPath("v1")); string(got) != string(whole.Marshal()) {
		t.Errorf("v1's index:\n%s\nwant\n%s", got, whole.Marshal())
	}

	// v3 renders nothing; its vm.args is v2's artifact's, not v2's node's.
	receive("v3", "v2", tar3, sum3, nil)
	want("v3", map[string]string{vmArgs: "-name artifact v2", "lib/chat.beam": "chat -name artifact v2"})
	if got := entriesOf(t, l.Releases()); !cmp.Equal(got, []string{"v1", "v1.index", "v2", "v2.index", "v3", "v3.index"}) {
		t.Errorf("releases/ holds %q", got)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
