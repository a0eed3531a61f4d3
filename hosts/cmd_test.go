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
			`cd -P '/srv/chat/current' && export 'MIX_ENV=prod' 'RELEASE_NODE=chat@10.0.1.11' && exec 'bin/chat' 'pid'`},
		{"hostile args", Cmd{Args: []string{"echo", "it's", "$(id)", "`id`", "a\nb", "-n", "\xff"}},
			"exec 'echo' 'it'\\''s' '$(id)' '`id`' 'a\nb' '-n' '\xff'"},
		{"hostile env", Cmd{Args: []string{"env"}, Env: map[string]string{"A": "x'; rm -rf / #", "B": "$(id)\n`id`"}},
			"export 'A=x'\\''; rm -rf / #' 'B=$(id)\n`id`' && exec 'env'"},
		{"relative dir", Cmd{Args: []string{"ls"}, Dir: "build/chat"}, `cd -P './build/chat' && exec 'ls'`},
		{"dir with leading dash", Cmd{Args: []string{"ls"}, Dir: "-x"}, `cd -P './-x' && exec 'ls'`},
		{"dir with quote and newline", Cmd{Args: []string{"ls"}, Dir: "/srv/it's\nhere"}, "cd -P '/srv/it'\\''s\nhere' && exec 'ls'"},
		{"program with leading dash", Cmd{Args: []string{"-weird", "x"}}, `command -- '-weird' 'x'`},
		{"release command", ShellCmd("/srv/chat/releases/abc", `bin/chat eval 'Chat.Release.migrate()'`, map[string]string{"RELEASE_NODE": "chat@n1"}),
			`cd -P '/srv/chat/releases/abc' && export 'RELEASE_NODE=chat@n1' && exec 'sh' '-c' 'bin/chat eval '\''Chat.Release.migrate()'\'''`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.cmd.String(); got != tt.want {
				t.Errorf("got  %q\nwant %q", got, tt.want)
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

// TestCmdStringRunsInShell runs rendered commands through /bin/sh and checks
// that the program sees exactly its arguments, environment and directory.
func TestCmdStringRunsInShell(t *testing.T) {
	dir := t.TempDir() + "/it's $(x) `y`\n-z\xff"
	if out, err := exec.Command("mkdir", "-p", "--", dir).CombinedOutput(); err != nil {
		t.Fatalf("mkdir: %v: %s", err, out)
	}
	env := map[string]string{}
	var names []string
	for i, v := range hostile {
		k := "V" + string(rune('A'+i))
		env[k] = v
		names = append(names, `"$`+k+`"`)
	}
	c := Cmd{
		Args: append([]string{"sh", "-c", `pwd; printf "[%s]" "$@"; echo; printf "<%s>" ` + strings.Join(names, " "), "sh"}, hostile...),
		Env:  env,
		Dir:  dir,
	}
	out, err := exec.Command("/bin/sh", "-c", c.String()).Output()
	if err != nil {
		t.Fatalf("sh -c %s: %v", c, err)
	}
	var want bytes.Buffer
	want.WriteString(dir + "\n")
	for _, v := range hostile {
		want.WriteString("[" + v + "]")
	}
	want.WriteString("\n")
	for _, v := range hostile {
		want.WriteString("<" + v + ">")
	}
	if got := string(out); got != want.String() {
		t.Errorf("got  %q\nwant %q", got, want.String())
	}
}
