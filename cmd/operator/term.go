package main

import (
	"io"
	"strings"
	"sync"
	"unicode/utf8"
)

// printable is text from outside the operator (commit subjects, deploy
// logs, what hosts print, errors quoting any of these) made safe to print
// on a terminal: a control character other than newline and tab, which a
// terminal would obey (ESC starts the sequences that retitle the window,
// clear the screen or rewrite what is shown, and U+009B is ESC [ on some),
// is shown as its Unicode picture (␛, ␇, ␍, ␡) or, for the C1 controls
// U+0080 to U+009F which have none, as U+FFFD; so is each byte that is not
// UTF-8. Each becomes one character, so columns stay aligned.
func printable(s string) string {
	if isPrintable(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		switch {
		case r == utf8.RuneError && size == 1:
			b.WriteRune(utf8.RuneError)
		case r == '\n' || r == '\t':
			b.WriteRune(r)
		case r < 0x20:
			b.WriteRune(0x2400 + r) // ␀ … ␟
		case r == 0x7f:
			b.WriteRune('␡')
		case 0x80 <= r && r <= 0x9f:
			b.WriteRune(utf8.RuneError)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// isPrintable reports whether printable would return s unchanged.
func isPrintable(s string) bool {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 && c != '\n' && c != '\t' || c == 0x7f {
				return false
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || r <= 0x9f {
			return false
		}
		i += size
	}
	return true
}

// terminal is what every command prints through (run wraps its stdout and
// stderr): all it writes passes through printable, so that no printer can
// forget to. A character split across two writes (io.Copy of a log in
// chunks) is held until its end arrives; Flush writes what is left.
type terminal struct {
	w    io.Writer
	mu   sync.Mutex
	tail []byte // the start of a character whose end has not come yet
}

func newTerminal(w io.Writer) *terminal { return &terminal{w: w} }

// Write writes printable(p), and reports all of p written when that
// succeeds.
func (t *terminal) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	data := p
	if len(t.tail) > 0 {
		data = append(t.tail, p...)
		t.tail = nil
	}
	if n := incompleteTail(data); n > 0 {
		t.tail = append([]byte(nil), data[len(data)-n:]...)
		data = data[:len(data)-n]
	}
	if _, err := io.WriteString(t.w, printable(string(data))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush writes a character left incomplete by the last write, as the bytes
// that are not UTF-8 it turned out to be.
func (t *terminal) Flush() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.tail) == 0 {
		return nil
	}
	_, err := io.WriteString(t.w, printable(string(t.tail)))
	t.tail = nil
	return err
}

// incompleteTail is the length of the start of a UTF-8 character that b
// ends with, 0 when b ends on a whole character.
func incompleteTail(b []byte) int {
	for n := 1; n < utf8.UTFMax && n <= len(b); n++ {
		c := b[len(b)-n]
		if c < utf8.RuneSelf {
			return 0
		}
		if utf8.RuneStart(c) {
			if utf8.FullRune(b[len(b)-n:]) {
				return 0
			}
			return n
		}
	}
	return 0
}

// unwrapTerminal returns the writer under t, for a logger: its handlers
// quote what they print themselves (JSON escapes control characters, tint
// quotes them), and tint colours only a terminal it can see.
func unwrapTerminal(w io.Writer) io.Writer {
	if t, ok := w.(*terminal); ok {
		return t.w
	}
	return w
}
