package hosts

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"strings"
	"testing"
)

// The fuzz targets of what the operator reads from hosts: every parser of
// a remote command's output, the delta offer a node sends, and the
// artifact's tar stream. Each must refuse bad input with an error, never
// panic, and hand back what it accepted in a form that holds together.
// make fuzz runs each for FUZZTIME; make test for a few seconds.

func FuzzParseStreams(f *testing.F) {
	f.Add([]byte("upgraded 0x1\nstream 0x3 txn=0x9 status=-1 rsp.st=MSG_RPBEFORE\nstream 0x4 txn=0x9 status=200 rsp.st=MSG_DATA\nstream 0x6\n"))
	f.Add([]byte("stream 0x5 txn=0x9 status=101 req.st=MSG_TUNNEL rsp.st=MSG_TUNNEL\n"))
	f.Fuzz(func(t *testing.T, out []byte) {
		s, err := ParseStreams(out)
		if err == nil && (s.InFlight < 0 || s.Answering < 0 || s.Upgraded < 0 || s.InFlight+s.Answering+s.Upgraded > bytes.Count(out, []byte("\n"))+1) {
			t.Errorf("counts %+v for %d lines", s, bytes.Count(out, []byte("\n"))+1)
		}
	})
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte("# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status\nchat,n1,0,0,3,4,,9,0,0,,0,,0,0,0,0,UP\n"))
	f.Fuzz(func(t *testing.T, out []byte) {
		if st, err := ParseStat(out, "chat", "n1"); err == nil && st.Sessions < 0 && !strings.Contains(string(out), "-") {
			t.Errorf("negative sessions %d from %q", st.Sessions, out)
		}
	})
}

func FuzzParseDrained(f *testing.F) {
	f.Add([]byte("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight\n3 chat 1 n1 10.0.0.11 2 8 1\n3 chat 2 n2 10.0.0.12 2 0 1\n"))
	f.Fuzz(func(t *testing.T, out []byte) {
		ParseDrained(out, "chat")
	})
}

func FuzzParseIndex(f *testing.F) {
	ix := Index{"bin": {Dir: true, Mode: 0o755}, "bin/chat": {Mode: 0o755, Sum: strings.Repeat("ab", 32)}, "lib/a b.beam": {Mode: 0o644, Sum: strings.Repeat("01", 32)}}
	f.Add(ix.Marshal())
	f.Add([]byte(indexHeader + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ix, err := ParseIndex(data)
		if err != nil {
			return
		}
		// What it accepted, written again, reads back the same.
		again, err := ParseIndex(ix.Marshal())
		if err != nil {
			t.Fatalf("an accepted index does not read back: %v", err)
		}
		if !maps.Equal(ix, again) {
			t.Errorf("index changed on a round trip: %v, then %v", ix, again)
		}
	})
}

func FuzzParseObserve(f *testing.F) {
	l := Layout{DeployTo: "/srv/chat"}
	sha := strings.Repeat("a", 40)
	cur := "/srv/chat/releases/" + sha
	f.Add([]byte(strings.Join([]string{"31 " + cur, "1700000000 " + sha, "1690000000 " + strings.Repeat("b", 40), "--", "+" + strings.Repeat("b", 40), "-", ""}, "\n")), 2)
	f.Add([]byte("0 \n--\n"), 0)
	f.Fuzz(func(t *testing.T, out []byte, records int) {
		if records < 0 || records > 8 {
			return
		}
		o, err := l.ParseObserve(out, records)
		if err == nil && len(o.Records) != records {
			t.Errorf("%d records, want %d", len(o.Records), records)
		}
	})
}

func FuzzReadOffer(f *testing.F) {
	sha := strings.Repeat("c", 40)
	f.Add([]byte("have\n"))
	f.Add([]byte("none\n"))
	f.Add([]byte("base " + sha + " 5\nabcde"))
	f.Add([]byte("base " + sha + " 134217728\nab"))
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := ReadOffer(bufio.NewReader(bytes.NewReader(data)))
		if err == nil && len(o.Index) > len(data) {
			t.Errorf("an offer of %d bytes holds an index of %d", len(data), len(o.Index))
		}
	})
}

// FuzzDeltas feeds the artifact reader any bytes (seeded with a real
// gzipped tar whose members it must handle: files, a directory, a
// symbolic link): it reads them, or refuses them, within its limits.
func FuzzDeltas(f *testing.F) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755})
	for _, m := range []struct{ name, body string }{{"bin/chat", "#!/bin/sh\n"}, {"lib/chat.beam", "beam"}} {
		tw.WriteHeader(&tar.Header{Name: m.name, Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(m.body))})
		tw.Write([]byte(m.body))
	}
	tw.WriteHeader(&tar.Header{Name: "bin/link", Typeflag: tar.TypeSymlink, Linkname: "chat"})
	tw.Close()
	zw.Close()
	f.Add(buf.Bytes())
	base := Index{"bin": {Dir: true, Mode: 0o755}, "bin/chat": {Mode: 0o755, Sum: strings.Repeat("00", 32)}}
	limits := DeltaLimits{File: 1 << 16, Payload: 1 << 20}
	f.Fuzz(func(t *testing.T, data []byte) {
		sum := sha256.Sum256(data)
		ix, deltas, err := Deltas(bytes.NewReader(data), KnownSum(hex.EncodeToString(sum[:])), map[string]Index{"base": base}, []string{"releases/COOKIE"}, limits)
		if err != nil {
			return
		}
		if _, err := ParseIndex(ix.Marshal()); err != nil {
			t.Errorf("the index of an accepted artifact does not read back: %v", err)
		}
		for name, d := range deltas {
			if d == nil {
				t.Errorf("nil delta for %s", name)
			}
		}
	})
}
