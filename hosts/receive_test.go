package hosts

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestReceiveBuilder(t *testing.T) {
	if strings.Contains(receiveScript, "'") {
		t.Fatal("receive script holds a single quote")
	}
	const sha = "0123456789abcdef0123456789abcdef01234567"
	const sum = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	evil := Layout{DeployTo: "/srv/it's $(x)\n`y`\xff/"}
	c, err := evil.Receive("-rf $(id)", sum, []string{"-x", "a b/it's", "./f//g/"})
	if err != nil {
		t.Fatal(err)
	}
	want := sh(receiveScript, "'/srv/it'\\''s $(x)\n`y`\xff/releases/-rf $(id)' '"+sum+"' '/srv/it'\\''s $(x)\n`y`\xff/shared' '-x' 'a b/it'\\''s' 'f/g'")
	if got := c.String(); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	plain := Layout{DeployTo: "/srv/chat"}
	for name, build := range map[string]func() (Cmd, error){
		"relative deploy_to":  func() (Cmd, error) { return Layout{DeployTo: "srv"}.Receive(sha, sum, nil) },
		"release with slash":  func() (Cmd, error) { return plain.Receive("a/b", sum, nil) },
		"hidden release":      func() (Cmd, error) { return plain.Receive(".x", sum, nil) },
		"short sum":           func() (Cmd, error) { return plain.Receive(sha, "abc", nil) },
		"link leaving":        func() (Cmd, error) { return plain.Receive(sha, sum, []string{"../etc/passwd"}) },
		"link absolute":       func() (Cmd, error) { return plain.Receive(sha, sum, []string{"/etc/passwd"}) },
		"uppercase hex sum":   func() (Cmd, error) { return plain.Receive(sha, strings.ToUpper(sum), nil) },
		"release with a NUL":  func() (Cmd, error) { return plain.Receive("a\x00b", sum, nil) },
		"link with a newline": func() (Cmd, error) { return plain.Receive(sha, sum, []string{"a\x00"}) },
	} {
		if _, err := build(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestReceiveRuns runs the script here with sh, the way a host does: only
// whole, verified releases with every link get their name.
func TestReceiveRuns(t *testing.T) {
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "bin", "chat"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(src, "releases"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "releases", "COOKIE"), []byte("from the tarball"), 0o644); err != nil {
		t.Fatal(err)
	}
	tarball, err := exec.Command("tar", "-czf", "-", "-C", src, ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(tarball)
	sum := hex.EncodeToString(h[:])

	setup := func(t *testing.T) Layout {
		l := Layout{DeployTo: filepath.Join(t.TempDir(), "it's $(x)")}
		if err := os.MkdirAll(filepath.Join(l.Shared(), "releases"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(l.Releases(), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(l.Shared(), "releases", "COOKIE"), []byte("shared"), 0o600); err != nil {
			t.Fatal(err)
		}
		return l
	}
	run := func(t *testing.T, l Layout, sum string, links []string, in []byte) error {
		c, err := l.Receive("abc", sum, links)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(c.Args[0], c.Args[1:]...)
		cmd.Stdin = bytes.NewReader(in)
		out, err := cmd.CombinedOutput()
		t.Logf("receive: %v: %s", err, out)
		return err
	}
	// nothing but the releases: no temporary directory is left behind.
	entries := func(t *testing.T, l Layout) []string { return entriesOf(t, l.Releases()) }

	t.Run("whole", func(t *testing.T) {
		l := setup(t)
		if err := run(t, l, sum, []string{"releases/COOKIE"}, tarball); err != nil {
			t.Fatal(err)
		}
		if got := entries(t, l); len(got) != 1 || got[0] != "abc" {
			t.Errorf("releases/ holds %q, want [abc]", got)
		}
		target, err := os.Readlink(filepath.Join(l.ReleaseDir("abc"), "releases", "COOKIE"))
		if want := filepath.Join(l.Shared(), "releases", "COOKIE"); err != nil || target != want {
			t.Errorf("COOKIE links to %q (%v), want %q", target, err, want)
		}
		if _, err := os.Stat(filepath.Join(l.ReleaseDir("abc"), "bin", "chat")); err != nil {
			t.Error(err)
		}
		// Again: the release stays as it is.
		if err := os.WriteFile(filepath.Join(l.ReleaseDir("abc"), "mark"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := run(t, l, sum, nil, tarball); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(l.ReleaseDir("abc"), "mark")); err != nil {
			t.Errorf("an existing release was replaced: %v", err)
		}
	})
	for _, tt := range []struct {
		name  string
		sum   string
		links []string
		in    []byte
	}{
		{"another sum", strings.Repeat("0", 64), nil, tarball},
		{"cut short", sum, nil, tarball[:len(tarball)/2]},
		{"not a tarball", hex.EncodeToString(func() []byte { h := sha256.Sum256([]byte("junk")); return h[:] }()), nil, []byte("junk")},
		{"missing shared file", sum, []string{"config/prod.secret.exs"}, tarball},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := setup(t)
			if err := run(t, l, tt.sum, tt.links, tt.in); err == nil {
				t.Error("succeeded")
			}
			if got := entries(t, l); len(got) != 0 {
				t.Errorf("releases/ holds %q, want nothing", got)
			}
		})
	}
}

// TestReadOfferGrowsWithTheBytes: an offer declaring the largest index
// and sending a few bytes costs a few KiB, not the 128 MiB declared, and
// fails saying the index was cut short; an index that arrives whole, past
// the first buffer's size, comes back byte for byte, and what follows it is
// left to read.
func TestReadOfferGrowsWithTheBytes(t *testing.T) {
	declared := "base v1 " + strconv.Itoa(maxIndex) + "\n" + indexHeader + "\nd 0755 bin\n"
	var err error
	allocated := allocatedBy(func() {
		_, err = ReadOffer(bufio.NewReader(strings.NewReader(declared)))
	})
	if !errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(err.Error(), "index of v1") {
		t.Errorf("got %v, want an index of v1 cut short", err)
	}
	if allocated > 256<<10 {
		t.Errorf("reading %d bytes of an offer allocated %d KiB", len(declared), allocated>>10)
	}
	t.Logf("an offer declaring %d MiB and sending %d bytes allocated %d bytes", maxIndex>>20, len(declared), allocated)

	var ix bytes.Buffer
	ix.WriteString(indexHeader + "\n")
	for i := 0; ix.Len() < 5*indexChunk+17; i++ {
		fmt.Fprintf(&ix, "f 0644 %s lib/m%d.beam\n", strings.Repeat("ab", 32), i)
	}
	r := bufio.NewReader(strings.NewReader("base v1 " + strconv.Itoa(ix.Len()) + "\n" + ix.String() + "link\n"))
	offer, err := ReadOffer(r)
	if err != nil || offer.Base != "v1" || !bytes.Equal(offer.Index, ix.Bytes()) {
		t.Fatalf("offer of %d bytes: base %q, %d bytes, %v", ix.Len(), offer.Base, len(offer.Index), err)
	}
	if rest, _ := io.ReadAll(r); string(rest) != "link\n" {
		t.Errorf("left %q after the index, want %q", rest, "link\n")
	}
	if _, err := ReadOffer(bufio.NewReader(strings.NewReader("base v1 " + strconv.Itoa(maxIndex+1) + "\n"))); err == nil {
		t.Error("took an index larger than the limit")
	}
}

// allocatedBy returns how many bytes fn allocated on the heap.
func allocatedBy(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestDropIndexed: the script function that takes rendered paths out of a
// kept index matches whole paths, spaces and look-alikes included, and
// leaves every other line as it was.
func TestDropIndexed(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	ix := Index{
		"b":                         {Mode: 0o644, Sum: sum},
		"a b":                       {Mode: 0o644, Sum: sum},
		" b":                        {Mode: 0o644, Sum: sum},
		"releases/0.1.0/vm.args":    {Mode: 0o644, Sum: sum},
		"releases/0.1.0/vm.args.in": {Mode: 0o644, Sum: sum},
		"releases":                  {Dir: true, Mode: 0o755},
		"it's $(x) `y`":             {Mode: 0o600, Sum: sum},
	}
	file := filepath.Join(t.TempDir(), "it's.index")
	if err := os.WriteFile(file, ix.Marshal(), 0o644); err != nil {
		t.Fatal(err)
	}
	c := script(dropIndexed+"\ndrop_indexed \"$1\" \"$2\"", file, "./b\nreleases/0.1.0/vm.args\nit's $(x) `y`")
	runHere(t, c, nil)
	got, err := ParseIndex(mustRead(t, file))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"b", "releases/0.1.0/vm.args", "it's $(x) `y`"} {
		delete(ix, p)
	}
	if diff := cmp.Diff(ix, got); diff != "" {
		t.Errorf("index (-want +got):\n%s", diff)
	}
	if string(mustRead(t, file)) != string(ix.Marshal()) {
		t.Errorf("the lines kept changed:\n%s", mustRead(t, file))
	}
}
