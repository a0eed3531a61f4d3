package hosts

import (
	"bufio"
	"bytes"
	"io"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// hostile are values that break naive quoting: shell syntax, whitespace,
// quotes, substitutions, newlines, leading dashes, non-UTF-8 bytes.
var hostile = []string{
	"",
	"plain",
	"with space",
	"it's",
	`"double"`,
	"$(touch /tmp/pwned)",
	"`id`",
	"${HOME}",
	"a\nb",
	"-rf",
	"--",
	"\xff\xfe",
	"'",
	"''",
	`\'`,
	"*",
	"~",
	"tab\there",
	"; rm -rf / #",
	"!$",
}

func TestQuote(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", `''`},
		{"plain", `'plain'`},
		{"with space", `'with space'`},
		{"it's", `'it'\''s'`},
		{"$(id)", `'$(id)'`},
		{"`id`", "'`id`'"},
		{"a\nb", "'a\nb'"},
		{"-rf", `'-rf'`},
		{"\xff", "'\xff'"},
		{"'", `''\'''`},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := Quote(tt.in); got != tt.want {
				t.Errorf("Quote(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// TestQuoteThroughShell proves every hostile value survives a real shell as
// one argument.
func TestQuoteThroughShell(t *testing.T) {
	for _, s := range hostile {
		t.Run(s, func(t *testing.T) {
			if got := shellPrintf(t, s); got != s {
				t.Errorf("sh printf %%s %s = %q, want %q", Quote(s), got, s)
			}
		})
	}
}

// shellPrintf runs printf %s <Quote(s)> in a real /bin/sh and returns what
// it printed. One shell, fed commands on stdin, serves every call: the
// fuzzer then tries inputs by the thousand instead of forking a shell each.
// Each result ends with a NUL byte, which no input holds. A quoting mistake
// that leaves the shell waiting for a closing quote shows as a timeout.
func shellPrintf(t testing.TB, s string) string {
	t.Helper()
	sharedShell.Lock()
	defer sharedShell.Unlock()
	if sharedShell.sh == nil {
		cmd := exec.Command("/bin/sh")
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sharedShell.sh = &shellProc{cmd: cmd, in: in, out: bufio.NewReader(out)}
	}
	sh := sharedShell.sh
	type result struct {
		out string
		err error
	}
	ch := make(chan result, 1)
	go func() {
		if _, err := io.WriteString(sh.in, "printf %s "+Quote(s)+"; printf \"\\000\"\n"); err != nil {
			ch <- result{err: err}
			return
		}
		out, err := sh.out.ReadString(0)
		ch <- result{strings.TrimSuffix(out, "\x00"), err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			sh.cmd.Process.Kill()
			sh.cmd.Wait()
			sharedShell.sh = nil
			t.Fatalf("sh: printf %%s %s: %v", Quote(s), r.err)
		}
		return r.out
	case <-time.After(5 * time.Second):
		sh.cmd.Process.Kill()
		sh.cmd.Wait()
		sharedShell.sh = nil
		t.Fatalf("sh: printf %%s %s: no answer in 5s (an open quote?)", Quote(s))
		return ""
	}
}

var sharedShell struct {
	sync.Mutex
	sh *shellProc
}

type shellProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

// FuzzQuote checks that any string but one with a NUL byte comes back from
// /bin/sh byte for byte. NUL is skipped: argv strings are NUL-terminated, so
// no quoting can carry one, and Cmd.Validate refuses it.
func FuzzQuote(f *testing.F) {
	for _, s := range hostile {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if strings.IndexByte(s, 0) >= 0 {
			t.Skip("argv cannot hold NUL")
		}
		if got := shellPrintf(t, s); got != s {
			t.Errorf("sh printf %%s %s = %q, want %q", Quote(s), got, s)
		}
	})
}

func TestCmdString(t *testing.T) {
	tests := []struct {
		name string
		cmd  Cmd
		want string
	}{
		{"args only", Cmd{Args: []string{"true"}}, `exec 'true'`},
		{"dir env args", Cmd{Args: []string{"bin/chat", "pid"}, Env: map[string]string{"RELEASE_NODE": "chat@10.0.1.11", "MIX_ENV": "prod"}, Dir: "/srv/chat/current"},
			`cd -P '/srv/chat/current' && exec 'bin/chat' 'pid'`},
		{"hostile args", Cmd{Args: []string{"echo", "it's", "$(id)", "`id`", "a\nb", "-n", "\xff"}},
			"exec 'echo' 'it'\\''s' '$(id)' '`id`' 'a\nb' '-n' '\xff'"},
		{"hostile env", Cmd{Args: []string{"env"}, Env: map[string]string{"A": "x'; rm -rf / #", "B": "$(id)\n`id`"}},
			"exec 'env'"},
		{"relative dir", Cmd{Args: []string{"ls"}, Dir: "build/chat"}, `cd -P './build/chat' && exec 'ls'`},
		{"dir with leading dash", Cmd{Args: []string{"ls"}, Dir: "-x"}, `cd -P './-x' && exec 'ls'`},
		{"dir with quote and newline", Cmd{Args: []string{"ls"}, Dir: "/srv/it's\nhere"}, "cd -P '/srv/it'\\''s\nhere' && exec 'ls'"},
		{"program with leading dash", Cmd{Args: []string{"-weird", "x"}}, `command -- '-weird' 'x'`},
		{"release command", ShellCmd("/srv/chat/releases/abc", `bin/chat eval 'Chat.Release.migrate()'`, map[string]string{"RELEASE_NODE": "chat@n1"}),
			`cd -P '/srv/chat/releases/abc' && exec 'sh' '-c' 'bin/chat eval '\''Chat.Release.migrate()'\'''`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.cmd.String(); got != tt.want {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

// TestCmdEnvLine: the environment is one line of shell code that envReader
// reads from stdin, never part of the command line; every value quoted,
// its newlines spelled outside the quotes.
func TestCmdEnvLine(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"none", nil, ""},
		{"plain, sorted", map[string]string{"RELEASE_NODE": "chat@10.0.1.11", "MIX_ENV": "prod"}, "export 'MIX_ENV=prod' 'RELEASE_NODE=chat@10.0.1.11'\n"},
		{"spaces and quotes", map[string]string{"A": "x'; rm -rf / #", "B": `"q" it's`}, `export 'A=x'\''; rm -rf / #' 'B="q" it'\''s'` + "\n"},
		{"dollars and backticks", map[string]string{"A": "$(id) ${HOME} `id` $"}, "export 'A=$(id) ${HOME} `id` $'\n"},
		{"newlines", map[string]string{"B": "$(id)\n`id`\n"}, `export 'B=$(id)'"$op_nl"'` + "`id`" + `'"$op_nl"''` + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Cmd{Args: []string{"env"}, Env: tt.env, Dir: "/srv"}
			got := c.envLine()
			if got != tt.want {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
			if got != "" && strings.IndexByte(got, '\n') != len(got)-1 {
				t.Errorf("%q is not one line", got)
			}
			if line := c.String(); line != "cd -P '/srv' && exec 'env'" {
				t.Errorf("command line %q, want no environment in it", line)
			}
		})
	}
}

func TestCmdRedacted(t *testing.T) {
	c := Cmd{Args: []string{"bin/chat", "start"}, Env: map[string]string{"RELEASE_COOKIE": "s3cret"}}
	got, want := c.Redacted(), `export 'RELEASE_COOKIE=…' && exec 'bin/chat' 'start'`
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if strings.Contains(got, "s3cret") {
		t.Errorf("redacted command %q shows the secret", got)
	}
	w := WriteFile("/srv/a b.tar.gz", 0o644, emptySum)
	if got, want := w.Redacted(), "write-file '/srv/a b.tar.gz' '0644' '"+emptySum+"'"; got != want {
		t.Errorf("labelled: got %q, want %q", got, want)
	}
}

func TestCmdValidate(t *testing.T) {
	tests := []struct {
		name string
		cmd  Cmd
		want string // "" for valid, else a part of the error
	}{
		{"valid", Cmd{Args: []string{"true"}, Env: map[string]string{"_A1": "x"}}, ""},
		{"no program", Cmd{}, "no program"},
		{"NUL in arg", Cmd{Args: []string{"echo", "a\x00b"}}, "argument 1 holds a NUL byte"},
		{"bad env name", Cmd{Args: []string{"true"}, Env: map[string]string{"A-B": "x"}}, `"A-B" is not a shell variable name`},
		{"env name starting with digit", Cmd{Args: []string{"true"}, Env: map[string]string{"1A": "x"}}, `"1A" is not`},
		{"NUL in env", Cmd{Args: []string{"true"}, Env: map[string]string{"A": "\x00"}}, "value of A holds a NUL"},
		{"NUL in dir", Cmd{Args: []string{"true"}, Dir: "/a\x00"}, "directory holds a NUL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cmd.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("got %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestCmdStringRunsInShell runs rendered commands through /bin/sh as a
// host does (shellHere: the line, and the environment on stdin ahead of
// the command's own input) and checks that the program sees exactly its
// arguments, environment, directory and input, and that no value of the
// environment was on the command line.
func TestCmdStringRunsInShell(t *testing.T) {
	dir := t.TempDir() + "/it's $(x) `y`\n-z\xff"
	if out, err := exec.Command("mkdir", "-p", "--", dir).CombinedOutput(); err != nil {
		t.Fatalf("mkdir: %v: %s", err, out)
	}
	env := map[string]string{}
	var names []string
	for i, v := range append(hostile, "only in the env: 's3cr3t'\n$x") {
		k := "V" + string(rune('A'+i))
		env[k] = v
		names = append(names, `"$`+k+`"`)
	}
	c := Cmd{
		Args: append([]string{"sh", "-c", `cat; pwd; printf "[%s]" "$@"; echo; printf "<%s>" ` + strings.Join(names, " "), "sh"}, hostile...),
		Env:  env,
		Dir:  dir,
	}
	const input = "input\nafter the environment\n"
	cmd := shellHere(c, strings.NewReader(input))
	if line := strings.Join(cmd.Args, " "); strings.Contains(line, "s3cr3t") {
		t.Errorf("the command line holds a value of the environment: %q", line)
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sh -c %s: %v", c, err)
	}
	var want bytes.Buffer
	want.WriteString(input)
	want.WriteString(dir + "\n")
	for _, v := range hostile {
		want.WriteString("[" + v + "]")
	}
	want.WriteString("\n")
	for _, v := range append(hostile, "only in the env: 's3cr3t'\n$x") {
		want.WriteString("<" + v + ">")
	}
	if got := string(out); got != want.String() {
		t.Errorf("got  %q\nwant %q", got, want.String())
	}
	// An environment cut short runs nothing.
	cut := exec.Command("/bin/sh", "-c", envReader+c.String())
	cut.Stdin = strings.NewReader(strings.TrimSuffix(c.envLine(), "\n"))
	if out, err := cut.CombinedOutput(); err == nil || !strings.Contains(string(out), "environment did not arrive") {
		t.Errorf("an environment cut short: %v: %q", err, out)
	}
}
