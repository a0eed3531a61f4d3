package hosts

import (
	"context"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clusterops/operator/testbed"
)

// TestRunInputEndsAsCommandEnds runs commands whose input ends as they
// end, as a delta session does when the node has nothing to offer: it
// prints "none" and exits, and the operator, having read that, closes
// the input. Run's copy of the input and Run itself then both end the
// session's stdin; x/crypto's channel is not safe for that (nor for a
// write beside it), and go test -race reported it from the reconcile tests.
// Without -race the test shows only that the outcome is right.
func TestRunInputEndsAsCommandEnds(t *testing.T) {
	b := testbed.Start(t, "n1")
	p := newPool(t, b, nil)
	n1 := target(b, "n1")
	for range 20 {
		pr, pw := io.Pipe()
		out := &closeOnOutput{w: pw}
		err := p.Run(t.Context(), n1, Cmd{Args: []string{"echo", "none"}}, Exec{Stdin: pr, Stdout: out})
		if err != nil {
			t.Fatal(err)
		}
		if got := out.String(); got != "none\n" {
			t.Fatalf("got %q, want %q", got, "none\n")
		}
	}
	// Cancelled while the input is still being copied: stop ends stdin
	// beside the copy's write.
	for range 5 {
		ctx, cancel := context.WithCancel(t.Context())
		out := &closeOnOutput{cancel: cancel}
		err := p.Run(ctx, n1, ShellCmd("", "echo started; cat >/dev/null", nil), Exec{Stdin: endless{}, Stdout: out})
		cancel()
		if got := outcome(err); got != "canceled" {
			t.Fatalf("got %s (%v), want canceled", got, err)
		}
	}
}

// closeOnOutput keeps what it is written, and at the first write closes w
// or calls cancel.
type closeOnOutput struct {
	mu     sync.Mutex
	buf    strings.Builder
	w      io.Closer
	cancel func()
}

func (c *closeOnOutput) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.buf.Len() == 0 {
		if c.w != nil {
			c.w.Close()
		}
		if c.cancel != nil {
			c.cancel()
		}
	}
	return c.buf.Write(p)
}

func (c *closeOnOutput) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// endless reads as an input that never ends.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	return len(p), nil
}

// TestRunKeepsEnvOffCommandLines runs long commands with a secret in their
// environment, with and without input, and while they run reads the
// command line of every process on the host: the secret is in none (the
// shell sshd starts, its watchdog, the command), and the command has it in
// its environment, as it has every hostile value and its input whole.
func TestRunKeepsEnvOffCommandLines(t *testing.T) {
	b := testbed.Start(t, "n1")
	p := newPool(t, b, nil)
	n1, h := target(b, "n1"), b.Host("n1")
	var names []string
	for i := range hostile {
		names = append(names, `"$V`+string(rune('A'+i))+`"`)
	}
	// Each prints its input (if any), the secret and every hostile value,
	// then sleeps, as a start or a migration would run a while.
	print := `printf "%s|" "$SECRET" ` + strings.Join(names, " ") + `; echo; sleep 5`
	for _, tt := range []struct {
		name  string
		line  string
		stdin io.Reader
	}{
		{"no input", print, nil},
		{"input", `read -r x; printf "%s\n" "$x"; ` + print, strings.NewReader("the input, whole\n")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// Its own, as a watchdog outlives its cancelled command for
			// the grace period.
			secret := "s3cr3t-" + strconv.FormatInt(time.Now().UnixNano(), 36)
			env := map[string]string{"SECRET": secret}
			for i, v := range hostile {
				env["V"+string(rune('A'+i))] = v
			}
			want := ""
			if tt.stdin != nil {
				want = "the input, whole\n"
			}
			want += secret + "|"
			for _, v := range hostile {
				want += v + "|"
			}
			want += "\n"
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			var out syncBuffer
			errc := make(chan error, 1)
			go func() {
				errc <- p.Run(ctx, n1, ShellCmd("/srv", tt.line, env), Exec{Stdin: tt.stdin, Stdout: &out})
			}()
			if !waitFor(10*time.Second, func() bool { return strings.HasSuffix(out.String(), "\n") && strings.Contains(out.String(), secret) }) {
				cancel()
				t.Fatalf("the command never printed its environment: %q (%v)", out.String(), <-errc)
			}
			if got := out.String(); got != want {
				t.Errorf("the command printed\n %q\nwant %q", got, want)
			}
			// Every process's command line, NULs made spaces; the script
			// names no secret, so it cannot find itself.
			lines, err := h.Sh(t.Context(), `for f in /proc/[0-9]*/cmdline; do tr "\0" " " <"$f" 2>/dev/null; echo; done`)
			if err != nil {
				t.Fatal(err)
			}
			sessions := 0
			for _, l := range strings.Split(lines, "\n") {
				if strings.Contains(l, "sleep 5") {
					sessions++
				}
				if strings.Contains(l, secret) {
					t.Errorf("a command line on the host shows the secret: %q", l)
				}
			}
			if sessions == 0 {
				t.Error("no process of the command seen: the look proves nothing")
			}
			cancel()
			if err := <-errc; outcome(err) != "canceled" {
				t.Errorf("got %v, want canceled", err)
			}
		})
	}
}

// syncBuffer is a strings.Builder safe for a writer and a reader.
type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
