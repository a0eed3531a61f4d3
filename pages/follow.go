package pages

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/clusterops/operator/history"
)

const (
	// keepAlive is how often an idle event stream gets a comment, so that
	// proxies and browsers do not take it for dead.
	keepAlive = 15 * time.Second
	// pollEvery is how often a running deploy this process cannot
	// subscribe to (one run by another operator process sharing the
	// state_dir) is read again for new lines.
	pollEvery = 500 * time.Millisecond
	// recordEvery bounds how often a running deploy's record is sent
	// again: its phases and nodes change as the operator logs its own
	// lines, which can come many a second.
	recordEvery = time.Second
	// catchUpPage is how many lines one catch-up read takes.
	catchUpPage = 1000
)

// writeWait bounds each write of an event stream, in place of the server's
// WriteTimeout: that one counts from the request, and would cut the
// stream of a deploy that runs longer; this one counts from each write, so
// a reader that stops taking the stream, and does not hang up, is let go
// after it rather than held for the rest of the deploy. A variable so that
// tests can shorten it.
var writeWait = 30 * time.Second

// endEvent is the data of the stream's last event: the deploy's result
// and its record as the page renders it.
type endEvent struct {
	Seq         int64          `json:"seq"` // the last line sent
	Result      history.Result `json:"result"`
	Description string         `json:"description"`
	HTML        string         `json:"html"` // the #record section
}

// recordEvent is the data of a "record" event: the #record section anew.
type recordEvent struct {
	HTML string `json:"html"`
}

// events serves GET /deploys/{id}/events, a text/event-stream of the
// deploy's log lines numbered above ?after= (or the Last-Event-ID the
// browser sends when it reconnects): "line" events, each a line as JSON
// with its seq as the event's id; "record" events with the record section
// re-rendered while the deploy runs; and, once the deploy has ended and
// every line is sent, one "end" event, after which the stream closes.
//
// Lines come from history.Store.Subscribe, without polling, read in the
// order its doc gives for a log without gaps: subscribe, catch up with
// LogLines, then take from the channel the lines above the last one read.
// When the channel closes with the deploy still running (this reader fell
// behind, or another process runs the deploy) it catches up and
// subscribes again, pausing pollEvery between rounds.
//
// The stream lasts as long as the deploy, longer than a server's
// WriteTimeout: it clears the server's deadline and gives each write its
// own, writeWait.
func (h *handler) events(w http.ResponseWriter, r *http.Request) {
	d, ok := h.lookup(w, r)
	if !ok {
		return
	}
	after, err := afterOf(r)
	if err != nil {
		h.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Accel-Buffering", "no") // nginx: pass events on as they come
	f := &follower{h: h, w: w, rc: http.NewResponseController(w), id: d.ID, after: after}
	// The server's write deadline goes; each write sets one of its own.
	if err := f.rc.SetWriteDeadline(time.Time{}); err != nil {
		h.o.Log.Warn("follow deploy: the server's write timeout will cut the stream", "deploy", d.ID, "err", err)
	} else {
		f.deadlines = true
	}
	w.WriteHeader(http.StatusOK)

	// A reader going away ends its stream; nothing to report then. Else
	// the history failed mid-stream, where only the log can tell.
	if err := f.run(r); err != nil && r.Context().Err() == nil {
		h.o.Log.Warn("follow deploy", "deploy", d.ID, "err", err)
	}
}

// afterOf is the last line the client has: the reconnecting browser's
// Last-Event-ID, else ?after=, else 0.
func afterOf(r *http.Request) (int64, error) {
	v, name := r.Header.Get("Last-Event-ID"), "Last-Event-ID"
	if v == "" {
		v, name = r.URL.Query().Get("after"), "after"
	}
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%s %q: want the number of the last line read, 0 or more", name, v)
	}
	return n, nil
}

// follower is one event stream.
type follower struct {
	h     *handler
	w     io.Writer
	rc    *http.ResponseController
	id    int64
	after int64 // the last line sent
	// deadlines says the connection takes write deadlines: each write
	// and flush sets one writeWait ahead.
	deadlines bool
	// dirty is set by a line of the operator's own since the last record
	// sent: the record may have changed with it.
	dirty      bool
	lastRecord time.Time
}

func (f *follower) run(r *http.Request) error {
	ctx := r.Context()
	keep := time.NewTicker(keepAlive)
	defer keep.Stop()
	tick := time.NewTicker(recordEvery)
	defer tick.Stop()
	// The browser waits this long before reconnecting a dropped stream.
	if err := f.write([]byte("retry: 2000\n\n")); err != nil {
		return err
	}
	for {
		lines, cancel := f.h.o.History.Subscribe(f.id)
		err := f.followChannel(ctx, lines, keep.C, tick.C)
		cancel()
		if err != nil {
			return err
		}
		d, err := f.h.o.History.Get(f.id)
		if err != nil {
			return err
		}
		if d.Result != history.Running {
			// Lines committed with the end reached the channel before it
			// closed; a deploy of another process has only been polled.
			if err := f.catchUp(); err != nil {
				return err
			}
			return f.end(d)
		}
		if f.dirty {
			if err := f.record(d); err != nil {
				return err
			}
		}
		if err := f.flush(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollEvery):
		}
	}
}

// followChannel catches up with the stored log, then sends the lines of
// the channel subscribed before it until the channel closes.
func (f *follower) followChannel(ctx context.Context, lines <-chan history.LogLine, keep, tick <-chan time.Time) error {
	if err := f.catchUp(); err != nil {
		return err
	}
	if err := f.flush(); err != nil {
		return err
	}
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				return nil
			}
			if err := f.line(l); err != nil {
				return err
			}
			// Send what else is queued before flushing: one write for a
			// burst of output.
			for n := len(lines); n > 0; n-- {
				if err := f.line(<-lines); err != nil {
					return err
				}
			}
		case <-tick:
			if !f.dirty || time.Since(f.lastRecord) < recordEvery {
				continue
			}
			d, err := f.h.o.History.Get(f.id)
			if err != nil {
				return err
			}
			if err := f.record(d); err != nil {
				return err
			}
		case <-keep:
			if err := f.write([]byte(": keep-alive\n\n")); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := f.flush(); err != nil {
			return err
		}
	}
}

// catchUp sends the stored lines above the last one sent.
func (f *follower) catchUp() error {
	for {
		lines, err := f.h.o.History.LogLines(f.id, f.after, catchUpPage)
		if err != nil {
			return err
		}
		for _, l := range lines {
			if err := f.line(l); err != nil {
				return err
			}
		}
		if len(lines) < catchUpPage {
			return nil
		}
	}
}

// line sends l, unless it was sent already (the channel repeats what the
// catch-up read). Seq may jump: a batch the history failed to commit
// leaves a gap, which no reread would fill.
func (f *follower) line(l history.LogLine) error {
	if l.Seq <= f.after {
		return nil
	}
	if err := f.event("line", l.Seq, viewLine(l)); err != nil {
		return err
	}
	f.after = l.Seq
	if l.Stream == "op" || l.Stream == "progress" {
		f.dirty = true
	}
	return nil
}

// record sends the record section as d now stands.
func (f *follower) record(d *history.Deploy) error {
	html, err := recordHTML(d)
	if err != nil {
		return err
	}
	f.dirty, f.lastRecord = false, time.Now()
	return f.event("record", 0, recordEvent{HTML: html})
}

// end sends the end event and flushes it.
func (f *follower) end(d *history.Deploy) error {
	d = tidy(d)
	html, err := recordHTML(d)
	if err != nil {
		return err
	}
	if err := f.event("end", 0, endEvent{Seq: f.after, Result: d.Result, Description: d.Description, HTML: html}); err != nil {
		return err
	}
	return f.flush()
}

// event writes one event. JSON holds no raw newline, so the data is one
// data: field.
func (f *follower) event(name string, id int64, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "event: %s\n", name)
	if id > 0 {
		fmt.Fprintf(&b, "id: %d\n", id)
	}
	fmt.Fprintf(&b, "data: %s\n\n", data)
	return f.write(b.Bytes())
}

// write sends b, which the server may keep in its buffer until a flush,
// or send at once when the buffer fills: either way under a fresh
// deadline.
func (f *follower) write(b []byte) error {
	f.arm()
	_, err := f.w.Write(b)
	return err
}

func (f *follower) flush() error {
	f.arm()
	return f.rc.Flush()
}

// arm sets the write deadline writeWait ahead.
func (f *follower) arm() {
	if f.deadlines {
		f.rc.SetWriteDeadline(time.Now().Add(writeWait))
	}
}

// recordHTML renders d's record section, as on its page.
func recordHTML(d *history.Deploy) (string, error) {
	var b bytes.Buffer
	p := deployPage{D: tidy(d)}
	p.Follow = d.Result == history.Running
	if err := deployTmpl.ExecuteTemplate(&b, "record", &p); err != nil {
		return "", err
	}
	return b.String(), nil
}
