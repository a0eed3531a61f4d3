package hosts

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// sh renders what a builder's script command must look like; the scripts
// hold no single quote (TestScriptsHoldNoSingleQuote), so quoting them is
// wrapping them, and each want below spells its data arguments out by hand.
func sh(script, quotedArgs string) string {
	return "exec 'sh' '-c' '" + script + "' 'sh' " + quotedArgs
}

func TestScriptsHoldNoSingleQuote(t *testing.T) {
	for name, s := range map[string]string{
		"unpack": unpackScript, "link": linkScript, "write": writeScript, "writeRendered": writeRenderedScript, "sum": sumScript,
		"switchThen": switchThenScript, "prune": pruneScript,
		"receive": receiveScript, "receiveDelta": receiveDeltaScript, "observe": observeScript, "recordAfter": recordAfterScript,
	} {
		if strings.Contains(s, "'") {
			t.Errorf("%s script holds a single quote", name)
		}
	}
}

func TestLayoutBuilders(t *testing.T) {
	plain := Layout{DeployTo: "/srv/chat"}
	// A deploy_to with a space, a quote, a substitution, a newline, a
	// backtick and a non-UTF-8 byte, and a trailing slash to clean.
	evil := Layout{DeployTo: "/srv/it's $(x)\n`y`\xff/"}
	const sha = "0123456789abcdef0123456789abcdef01234567"
	const sum = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	build := func(c Cmd, err error) func() (Cmd, error) { return func() (Cmd, error) { return c, err } }
	tests := []struct {
		name  string
		build func() (Cmd, error)
		want  string
	}{
		{"prepare", build(plain.Prepare()), `exec 'mkdir' '-p' '--' '/srv/chat/releases' '/srv/chat/shared'`},
		{"prepare hostile", build(evil.Prepare()), "exec 'mkdir' '-p' '--' '/srv/it'\\''s $(x)\n`y`\xff/releases' '/srv/it'\\''s $(x)\n`y`\xff/shared'"},
		{"unpack", build(plain.Unpack(sha, "/srv/chat/releases/"+sha+".tar.gz")),
			sh(unpackScript, "'/srv/chat/releases/"+sha+"' '/srv/chat/releases/"+sha+".tar.gz'")},
		{"unpack hostile release and relative tarball with a dash", build(evil.Unpack("-rf $(id)", "-x.tar.gz")),
			sh(unpackScript, "'/srv/it'\\''s $(x)\n`y`\xff/releases/-rf $(id)' './-x.tar.gz'")},
		{"link shared", build(plain.LinkShared(sha, []string{"releases/COOKIE", "config/prod.secret.exs"})),
			sh(linkScript, "'/srv/chat/releases/"+sha+"' '/srv/chat/shared' 'releases/COOKIE' 'config/prod.secret.exs'")},
		{"link shared hostile paths", build(plain.LinkShared(sha, []string{"-x", "a b/it's", "c/$(d)/`e`\n\xff", "./f//g/"})),
			sh(linkScript, "'/srv/chat/releases/"+sha+"' '/srv/chat/shared' '-x' 'a b/it'\\''s' 'c/$(d)/`e`\n\xff' 'f/g'")},
		{"write file", build(plain.WriteFile(sha, "releases/vm.args", 0o644, sum)),
			sh(writeRenderedScript, "'/srv/chat/releases/"+sha+"/releases/vm.args' '0644' '"+sum+"' '/srv/chat/releases/"+sha+".index' 'releases/vm.args'")},
		{"write file hostile", build(evil.WriteFile(sha, "-a/it's $(x)", 0o600, sum)),
			sh(writeRenderedScript, "'/srv/it'\\''s $(x)\n`y`\xff/releases/"+sha+"/-a/it'\\''s $(x)' '0600' '"+sum+"' '/srv/it'\\''s $(x)\n`y`\xff/releases/"+sha+".index' '-a/it'\\''s $(x)'")},
		{"write file no index can list", build(evil.WriteFile(sha, "-a/it's\n", 0o600, sum)),
			sh(writeRenderedScript, "'/srv/it'\\''s $(x)\n`y`\xff/releases/"+sha+"/-a/it'\\''s\n' '0600' '"+sum+"' '' '-a/it'\\''s\n'")},
		{"switch then start", build(plain.SwitchThen(sha, "", "", ShellCmd(plain.Current(), "bin/chat daemon", nil))),
			sh(switchThenScript, "'/srv/chat' '/srv/chat/releases/"+sha+"' '' '' '/srv/chat/current' 'sh' '-c' 'bin/chat daemon'")},
		{"switch from previous then start with env", build(plain.SwitchThen(sha, "a", "/srv/chat/.operator//previous", ShellCmd(plain.Current(), "bin/chat daemon", map[string]string{"SECRET": "s"}))),
			sh(switchThenScript, "'/srv/chat' '/srv/chat/releases/"+sha+"' 'a' '/srv/chat/.operator/previous' '/srv/chat/current' 'sh' '-c' 'bin/chat daemon'")},
		{"switch hostile then relative dir", build(evil.SwitchThen("`x` y", "", "", Cmd{Args: []string{"-x", "it's\n$y"}, Dir: "-d"})),
			sh(switchThenScript, "'/srv/it'\\''s $(x)\n`y`\xff' '/srv/it'\\''s $(x)\n`y`\xff/releases/`x` y' '' '' './-d' '-x' 'it'\\''s\n$y'")},
		{"observe", build(plain.Observe("/srv/chat/.operator/previous")), sh(observeScript, "'/srv/chat' '/srv/chat/releases' '/srv/chat/.operator/previous'")},
		{"prune", build(plain.Prune([]string{"a", "b"})),
			sh(pruneScript, "'/srv/chat/releases' '/srv/chat/current' 'a' 'a.tar.gz' 'a.index' 'b' 'b.tar.gz' 'b.index'")},
		{"prune hostile keep", build(plain.Prune([]string{"it's $(x)"})),
			sh(pruneScript, "'/srv/chat/releases' '/srv/chat/current' 'it'\\''s $(x)' 'it'\\''s $(x).tar.gz' 'it'\\''s $(x).index'")},
		{"write any file", build(WriteFile("-x/y", 0o640, sum), nil), sh(writeScript, "'./-x/y' '0640' '"+sum+"'")},
		{"write any file without a slash", build(WriteFile("f", 0o640, sum), nil), sh(writeScript, "'./f' '0640' '"+sum+"'")},
		{"sum", build(Sum("/srv/a b.tar.gz"), nil), sh(sumScript, "'/srv/a b.tar.gz'")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.build()
			if err != nil {
				t.Fatal(err)
			}
			if got := c.String(); got != tt.want {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
	// The start's environment is the switch's, exported before its script
	// (and off its command line: Cmd.String).
	c, err := plain.SwitchThen(sha, "", "", ShellCmd(plain.Current(), "bin/chat daemon", map[string]string{"SECRET": "s"}))
	if err != nil || !cmp.Equal(c.Env, map[string]string{"SECRET": "s"}) {
		t.Errorf("switch then start with env: Env %q (%v), want SECRET=s", c.Env, err)
	}
}

func TestLayoutRefuses(t *testing.T) {
	l := Layout{DeployTo: "/srv/chat"}
	start := ShellCmd(l.Current(), "bin/chat daemon", nil)
	tests := []struct {
		name  string
		build func() (Cmd, error)
		want  string
	}{
		{"relative deploy_to", func() (Cmd, error) { return Layout{DeployTo: "chat"}.Prepare() }, `deploy_to "chat" is not an absolute path`},
		{"empty deploy_to", func() (Cmd, error) { return Layout{}.Observe() }, `deploy_to "" is not an absolute path`},
		{"release with slash", func() (Cmd, error) { return l.SwitchThen("abc/../../etc", "", "", start) }, "holds a slash"},
		{"release dot-dot slash", func() (Cmd, error) { return l.SwitchThen("../a", "", "", start) }, "starts with a dot"},
		{"previous dot-dot slash", func() (Cmd, error) { return l.SwitchThen("b", "../a", "/srv/chat/.operator/previous", start) }, "starts with a dot"},
		{"relative record", func() (Cmd, error) { return l.SwitchThen("b", "a", "previous", start) }, `switch record "previous": want an absolute path`},
		{"previous without record", func() (Cmd, error) { return l.SwitchThen("b", "a", "", start) }, `switch record "": want an absolute path`},
		{"record without previous", func() (Cmd, error) { return l.SwitchThen("b", "", "/srv/chat/.operator/previous", start) }, "previous release name is empty"},
		{"switch then nothing", func() (Cmd, error) { return l.SwitchThen("b", "", "", Cmd{Dir: "/srv/chat/current"}) }, "no program"},
		{"release dot-dot", func() (Cmd, error) { return l.Unpack("..", "/x") }, "starts with a dot"},
		{"hidden release", func() (Cmd, error) { return l.Unpack(".abc", "/x") }, "starts with a dot"},
		{"empty release", func() (Cmd, error) { return l.SwitchThen("", "", "", start) }, "empty"},
		{"link escaping", func() (Cmd, error) { return l.LinkShared("abc", []string{"a/../../x"}) }, "leaves the release"},
		{"link absolute", func() (Cmd, error) { return l.LinkShared("abc", []string{"/etc/passwd"}) }, "is absolute"},
		{"link dot", func() (Cmd, error) { return l.LinkShared("abc", []string{"a/.."}) }, "leaves the release"},
		{"file escaping", func() (Cmd, error) { return l.WriteFile("abc", "../x", 0o644, "") }, "leaves the release"},
		{"keep with slash", func() (Cmd, error) { return l.Prune([]string{"a/b"}) }, "holds a slash"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.build()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestParseCurrent(t *testing.T) {
	l := Layout{DeployTo: "/srv/chat"}
	tests := []struct {
		out, want, err string
	}{
		{"", "", ""},
		{"/srv/chat/releases/abc\n", "abc", ""},
		{"releases/abc\n", "abc", ""},
		{"/srv/chat/releases/abc/\n", "abc", ""},
		{"/opt/other/abc\n", "", "outside /srv/chat/releases"},
		{"/srv/chat/releases/.abc\n", "", "starts with a dot"},
	}
	for _, tt := range tests {
		t.Run(tt.out, func(t *testing.T) {
			got, err := l.ParseCurrent([]byte(tt.out))
			if got != tt.want || (err == nil) != (tt.err == "") || (err != nil && !strings.Contains(err.Error(), tt.err)) {
				t.Errorf("got %q, %v; want %q, error containing %q", got, err, tt.want, tt.err)
			}
		})
	}
}

func TestParseReleases(t *testing.T) {
	got, err := ParseReleases([]byte("100 b\n300 a\n100 a b\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Release{{"a", time.Unix(300, 0)}, {"a b", time.Unix(100, 0)}, {"b", time.Unix(100, 0)}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("releases (-want +got):\n%s", diff)
	}
	if _, err := ParseReleases([]byte("garbage\n")); err == nil {
		t.Error("a malformed line parsed")
	}
}

func TestSwitchThenLabel(t *testing.T) {
	plain := Layout{DeployTo: "/srv/chat"}
	evil := Layout{DeployTo: "/srv/it's $(x)\n"}
	start := func(l Layout) Cmd {
		return ShellCmd(l.Current(), "bin/chat daemon", map[string]string{"SECRET": "s'$(x)"})
	}
	tests := []struct {
		name             string
		l                Layout
		previous, record string
		want             string
	}{
		{"first switch", plain, "", "",
			"switch '/srv/chat' '/srv/chat/releases/b' && cd -P '/srv/chat/current' && export 'SECRET=…' && exec 'sh' '-c' 'bin/chat daemon'"},
		{"from previous", plain, "a", "/srv/chat/.operator/previous",
			"switch '/srv/chat' '/srv/chat/releases/b' from 'a' '/srv/chat/.operator/previous' && cd -P '/srv/chat/current' && export 'SECRET=…' && exec 'sh' '-c' 'bin/chat daemon'"},
		{"hostile deploy_to", evil, "", "",
			"switch '/srv/it'\\''s $(x)\n' '/srv/it'\\''s $(x)\n/releases/b' && cd -P '/srv/it'\\''s $(x)\n/current' && export 'SECRET=…' && exec 'sh' '-c' 'bin/chat daemon'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.l.SwitchThen("b", tt.previous, tt.record, start(tt.l))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Redacted(); got != tt.want {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

// TestSwitchThenRuns runs the switch and its command here, rendered as the
// runner sends it: the command runs in the new release only after a
// switch that succeeded, and only a failed switch fails the result.
func TestSwitchThenRuns(t *testing.T) {
	hostile := "it's \"q\"\n$(x) `y` $HOME"
	start := func(line string, args ...string) []string { return append([]string{"sh", "-c", line, "sh"}, args...) }
	tests := []struct {
		name    string
		from    string   // where current points before, and the previous release recorded ("" for none)
		release string   // the release to switch to; only a and b are staged
		then    []string // the command run after the switch
		dir     string   // its directory, relative to deploy_to; "" for current
		fails   bool
		current string // where current points after
		ran     string // what the command wrote to $OUT; "" when it must not have run
		stderr  string // what stderr holds; "" for nothing
	}{
		{name: "switch from previous then start", from: "a", release: "b",
			then: start(`printf "%s\n" "$PWD" "$X" >"$OUT"`), current: "b", ran: "<b>\n`x` $y 'q'\n"},
		{name: "first switch then start", release: "b",
			then: start(`printf "%s\n" "$PWD" >"$OUT"`), current: "b", ran: "<b>\n"},
		{name: "release not staged", from: "a", release: "c",
			then: start(`echo ran >"$OUT"`), fails: true, current: "a", stderr: "c is not staged"},
		{name: "start exits 3", from: "a", release: "b",
			then: start(`echo ran >"$OUT"; exit 3`), current: "b", ran: "ran\n", stderr: "start: exit status 3"},
		{name: "start argument arrives intact", from: "a", release: "b",
			then: start(`printf "%s" "$1" >"$OUT"`, hostile), current: "b", ran: hostile},
		{name: "directory missing", from: "a", release: "b", dir: "missing",
			then: start(`echo ran >"$OUT"`), current: "b", stderr: "start: cannot enter"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmp, err := filepath.EvalSymlinks(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			l := Layout{DeployTo: filepath.Join(tmp, "it's $(x)")}
			for _, rel := range []string{"a", "b"} {
				if err := os.MkdirAll(l.ReleaseDir(rel), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if tt.from != "" {
				if err := os.Symlink(l.ReleaseDir(tt.from), l.Current()); err != nil {
					t.Fatal(err)
				}
			}
			record, out := "", filepath.Join(l.DeployTo, "out $(x)")
			if tt.from != "" {
				record = filepath.Join(l.DeployTo, ".operator", "previous")
			}
			then := Cmd{Args: tt.then, Dir: l.Current(), Env: map[string]string{"OUT": out, "X": "`x` $y 'q'"}}
			if tt.dir != "" {
				then.Dir = filepath.Join(l.DeployTo, tt.dir)
			}
			c, err := l.SwitchThen(tt.release, tt.from, record, then)
			if err != nil {
				t.Fatal(err)
			}
			cmd := shellHere(c, nil)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Run(); (err != nil) != tt.fails {
				t.Errorf("exit: %v, want failure %v; stderr %q", err, tt.fails, stderr.String())
			}
			if got := stderr.String(); (tt.stderr == "" && got != "") || !strings.Contains(got, tt.stderr) {
				t.Errorf("stderr %q, want %q", got, tt.stderr)
			}
			if got, err := os.Readlink(l.Current()); err != nil || got != l.ReleaseDir(tt.current) {
				t.Errorf("current -> %q (%v), want %s", got, err, l.ReleaseDir(tt.current))
			}
			got, err := os.ReadFile(out)
			switch want := strings.ReplaceAll(tt.ran, "<b>", l.ReleaseDir("b")); {
			case want == "" && err == nil:
				t.Errorf("the command ran and wrote %q", got)
			case want != "" && string(got) != want:
				t.Errorf("the command wrote %q (%v), want %q", got, err, want)
			}
			got, err = os.ReadFile(filepath.Join(l.DeployTo, ".operator", "previous"))
			switch {
			case tt.from != "" && !tt.fails && string(got) != tt.from+"\n":
				t.Errorf("previous record %q (%v), want %s", got, err, tt.from)
			case (tt.from == "" || tt.fails) && err == nil:
				t.Errorf("previous record %q written", got)
			}
		})
	}
}

// TestObserveRuns runs the observation here with sh: current, the
// releases and each record, in one command.
func TestObserveRuns(t *testing.T) {
	l := Layout{DeployTo: filepath.Join(t.TempDir(), "it's $(x)")}
	record := filepath.Join(l.DeployTo, ".operator", "previous")
	marker := filepath.Join(l.DeployTo, ".operator", "migrated", "b")
	observe := func() (Observed, error) {
		c, err := l.Observe(record, marker)
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(c.Args[0], c.Args[1:]...).Output()
		if err != nil {
			t.Fatalf("observe: %v", err)
		}
		return l.ParseObserve(out, 2)
	}
	// A host never deployed to.
	o, err := observe()
	if err != nil || o.Current != "" || len(o.Releases) != 0 || !cmp.Equal(o.Records, []string{"", ""}) {
		t.Errorf("empty host: %+v, %v", o, err)
	}
	for _, rel := range []string{"a", "b"} {
		if err := os.MkdirAll(l.ReleaseDir(rel), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(l.ReleaseDir("a"), old, old); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(l.ReleaseDir("b"), l.Current()); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(marker), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(record, []byte("a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	o, err = observe()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range o.Releases {
		names = append(names, r.Name)
	}
	if o.Current != "b" || !cmp.Equal(names, []string{"b", "a"}) || !cmp.Equal(o.Records, []string{"a", ""}) {
		t.Errorf("deployed host: current %q, releases %q, records %q", o.Current, names, o.Records)
	}
	if _, err := l.ParseObserve([]byte("\n--\n"), 1); err == nil {
		t.Error("ParseObserve took a missing record line")
	}
	if _, err := l.Observe("relative"); err == nil {
		t.Error("Observe took a relative record path")
	}
}

// TestRecordAfterRuns: the record is written when the command succeeds,
// and only then; the command's exit status is the result's.
func TestRecordAfterRuns(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "it's", "migrated", "b")
	for _, tt := range []struct {
		line   string
		status int
	}{{"exit 3", 3}, {"echo migrated", 0}} {
		c := RecordAfter(ShellCmd(dir, tt.line, map[string]string{"X": "y"}), marker, "time b")
		err := shellHere(c, nil).Run()
		var ee *exec.ExitError
		switch {
		case tt.status == 0 && err != nil:
			t.Errorf("%s: %v", tt.line, err)
		case tt.status != 0 && (!errors.As(err, &ee) || ee.ExitCode() != tt.status):
			t.Errorf("%s: got %v, want exit status %d", tt.line, err, tt.status)
		}
		got, err := os.ReadFile(marker)
		if tt.status != 0 && err == nil {
			t.Errorf("%s: recorded %q after a failure", tt.line, got)
		}
		if tt.status == 0 && string(got) != "time b\n" {
			t.Errorf("%s: recorded %q (%v)", tt.line, got, err)
		}
	}
	if c := RecordAfter(ShellCmd(dir, "migrate", map[string]string{"SECRET": "s"}), marker, "x"); strings.Contains(c.Redacted(), "SECRET=s") {
		t.Errorf("redacted command shows the environment: %s", c.Redacted())
	}
}
