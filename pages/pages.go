// Package pages is the operator's web pages: GET / (the environment, its
// lock, what is deploying, each node's commit and the recent deploys) and
// GET /deploys/{id} (one deploy's record and the end of its log, earlier
// lines a page back at a time with ?before=, the end followed live while
// the deploy runs through the server-sent events of
// GET /deploys/{id}/events).
//
// The pages are complete without JavaScript: everything is rendered on the
// server by html/template, which escapes every value that comes from git
// or a host. The one small script only appends the lines logged after the
// page was served. The stylesheet and the script are embedded and inlined,
// and a Content-Security-Policy allows exactly those two, so a line of log
// that slipped past escaping still could not run.
//
// The pages show only what the deploy history holds and the environment,
// repository and branch they are given: never a secret.
package pages

import (
	"bufio"
	"bytes"
	"cmp"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"iter"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/clusterops/operator/history"
)

// Options configures the pages.
type Options struct {
	// History is the deploy record the pages show.
	History *history.Store
	// Status tells what the worker is doing now. Nil shows the lock and
	// the running deploy as the history records them.
	Status func() Status
	// Env, Repo and Branch name what this operator deploys. A password or
	// token in Repo's URL is never shown.
	Env, Repo, Branch string
	// PublicURL is where users reach the operator; its path, if any, is
	// the prefix of every link, for an operator served under a path by a
	// reverse proxy that strips it.
	PublicURL string
	// Log receives the errors the pages cannot show (the history failing).
	// Nil logs to slog.Default().
	Log *slog.Logger
}

// Status is what the worker is doing, as the index page shows it.
type Status struct {
	// Running is the deploy in progress, if any.
	Running *RunningDeploy
	// Pending is the number of triggers waiting behind it.
	Pending int
	// Lock is the environment's lock, if any.
	Lock *history.Lock
	// Failed is the commit whose deploy failed and that is not retried
	// until a new commit lands or someone asks.
	Failed string
	// Nodes is each node's commit as the worker last saw it on the hosts.
	// Nil takes them from the history instead.
	Nodes []NodeState
}

// RunningDeploy is the deploy in progress. It is an alias of an unnamed
// struct so that the wiring layer can convert its own such type (say
// reconcile.RunningDeploy) with a plain conversion.
type RunningDeploy = struct {
	ID     int64
	Commit string
}

// NodeState is the commit one node runs.
type NodeState struct {
	Name   string
	Commit string // "" when the node runs no release
}

// recentDeploys is how many deploys the index lists, and searches for
// each node's last recorded commit.
const recentDeploys = 50

//go:embed templates/*.html style.css follow.js
var files embed.FS

// The page sets: one per page, each the layout with its content.
var (
	indexTmpl  = parsePage("templates/index.html")
	deployTmpl = parsePage("templates/deploy.html")
	errorTmpl  = parsePage("templates/error.html")
)

var (
	styleCSS = mustRead("style.css")
	followJS = mustRead("follow.js")
	// csp allows the inlined stylesheet and script by their hashes and
	// nothing else but connections back to the operator (the log's
	// events): markup that reached a page unescaped could neither run a
	// script nor load anything.
	csp = "default-src 'none'; " +
		"style-src '" + hash(styleCSS) + "'; " +
		"script-src '" + hash(followJS) + "'; " +
		"connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

func mustRead(name string) string {
	b, err := files.ReadFile(name)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func hash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256-" + base64.StdEncoding.EncodeToString(sum[:])
}

var funcs = template.FuncMap{
	"short":        short,
	"when":         when,
	"clock":        clock,
	"dur":          dur,
	"took":         took,
	"resultClass":  resultClass,
	"outcomeClass": outcomeClass,
	"spent":        spent,
	"percent":      func(f float64) string { return fmt.Sprintf("%.0f%%", f*100) },
}

func parsePage(name string) *template.Template {
	return template.Must(template.New("").Funcs(funcs).ParseFS(files, "templates/layout.html", name))
}

// New returns the pages as one handler, for the server to mount on GET /.
func New(o Options) http.Handler {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	h := &handler{o: o, base: basePath(o.PublicURL), repo: redactRepo(o.Repo)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", h.index)
	mux.HandleFunc("GET /deploys/{id}", h.deploy)
	mux.HandleFunc("GET /deploys/{id}/events", h.events)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h.fail(w, r, http.StatusNotFound, "There is no page here.")
	})
	return mux
}

type handler struct {
	o    Options
	base string // the link prefix, from PublicURL: "" or "/path"
	repo string // o.Repo without credentials
}

// page is what the layout needs; each page's data embeds it.
type page struct {
	Title  string
	Env    string
	Repo   string
	Branch string
	Base   string
	CSS    template.CSS
	JS     template.JS
	// Reload makes the page reload itself every few seconds when
	// JavaScript is off: a running deploy's page.
	Reload bool
	// Follow inlines the script that follows the log live.
	Follow bool
}

func (h *handler) page(title string) page {
	if h.o.Env != "" {
		title += " · " + h.o.Env
	}
	return page{Title: title + " · operator", Env: h.o.Env, Repo: h.repo, Branch: h.o.Branch, Base: h.base,
		CSS: template.CSS(styleCSS), JS: template.JS(followJS)}
}

type indexPage struct {
	page
	Status  Status
	Nodes   []nodeRow
	Deploys []*history.Deploy
	// NodesFromHistory says the nodes' commits come from the deploy
	// record, not from the worker.
	NodesFromHistory bool
}

// nodeRow is a node on the index, with the deploy that recorded its commit
// when it comes from the history.
type nodeRow struct {
	Name   string
	Commit string
	Deploy int64
}

func (h *handler) index(w http.ResponseWriter, r *http.Request) {
	deploys, err := h.o.History.List(recentDeploys)
	if err != nil {
		h.broken(w, r, err)
		return
	}
	for _, d := range deploys {
		tidy(d)
	}
	p := indexPage{page: h.page("Deploys"), Deploys: deploys}
	if h.o.Status != nil {
		p.Status = h.o.Status()
	} else if p.Status, err = h.statusFromHistory(deploys); err != nil {
		h.broken(w, r, err)
		return
	}
	if p.Status.Nodes != nil {
		for _, n := range p.Status.Nodes {
			p.Nodes = append(p.Nodes, nodeRow{Name: n.Name, Commit: n.Commit})
		}
	} else {
		p.Nodes, p.NodesFromHistory = h.nodesFromHistory(deploys), true
	}
	h.render(w, r, http.StatusOK, indexTmpl, &p)
}

// statusFromHistory is the Status when no worker tells it: the lock, and
// the newest deploy if it is running.
func (h *handler) statusFromHistory(deploys []*history.Deploy) (Status, error) {
	var s Status
	if h.o.Env != "" {
		l, err := h.o.History.LockOf(h.o.Env)
		if err != nil {
			return s, err
		}
		s.Lock = l
	}
	for _, d := range deploys {
		if d.Result == history.Running && (h.o.Env == "" || d.Env == h.o.Env) {
			s.Running = &RunningDeploy{ID: d.ID, Commit: d.Commit}
			break
		}
	}
	return s, nil
}

// nodesFromHistory returns each node's commit as the newest finished deploy
// of this environment that reached it recorded it. Looking past the last
// deploy, not only at it, keeps the nodes in view after a deploy that
// failed before its rollout or had nothing to do.
func (h *handler) nodesFromHistory(deploys []*history.Deploy) []nodeRow {
	var rows []nodeRow
	seen := map[string]bool{}
	for _, d := range deploys { // newest first
		if d.Result == history.Running || (h.o.Env != "" && d.Env != h.o.Env) {
			continue
		}
		for _, n := range d.Nodes {
			if !seen[n.Host] {
				seen[n.Host] = true
				rows = append(rows, nodeRow{Name: n.Host, Commit: n.To, Deploy: d.ID})
			}
		}
	}
	slices.SortStableFunc(rows, func(a, b nodeRow) int { return cmp.Compare(a.Name, b.Name) })
	return rows
}

// tailLines is how many lines of its log a deploy's page shows: the last
// ones, or those before the line its ?before= names. A build can log tens
// of thousands; a page of all of them costs its reader's browser, and the
// server, too much.
const tailLines = 500

// logPage is how many lines the page reads from the history at a time,
// writing each page out before reading the next.
const logPage = 100

type deployPage struct {
	page
	D *history.Deploy
	// Lines yields the log lines the page shows, read from the history as
	// the page is written.
	Lines iter.Seq[line]
	// Seq is the last line's number: the script asks for the lines after it.
	Seq int64
	// Span is where the lines shown lie in the log; Before is the ?before=
	// they were asked with, 0 for the end of the log.
	Span   history.LogSpan
	Before int64
	// Later is the ?before= of the page after this one.
	Later int64
	// LogErr is the error that cut the log short, set once Lines ends.
	LogErr error
}

func (h *handler) deploy(w http.ResponseWriter, r *http.Request) {
	d, ok := h.lookup(w, r)
	if !ok {
		return
	}
	before, err := beforeOf(r)
	if err != nil {
		h.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	// The record is read before the log, so a deploy that ends in between
	// shows as running with its log to the last line then, and its script
	// gets the rest and the end at once; never as ended with its last
	// lines missing.
	span, err := h.o.History.LogTail(d.ID, before, tailLines)
	if err != nil {
		h.broken(w, r, err)
		return
	}
	p := &deployPage{page: h.page(fmt.Sprintf("Deploy %d", d.ID)), D: d, Seq: span.Last, Span: span, Before: before}
	if span.Later {
		p.Later = span.Last + 1 + tailLines
	}
	p.Lines = h.logLines(d.ID, span, p)
	// Only the end of the log follows the deploy: lines appended to an
	// earlier page would leave a hole.
	p.Reload = d.Result == history.Running && before == 0
	p.Follow = p.Reload
	h.stream(w, r, deployTmpl, p)
	if p.LogErr != nil {
		h.o.Log.Error("page", "path", r.URL.Path, "err", p.LogErr)
	}
}

// beforeOf is the ?before= line number, 0 when there is none.
func beforeOf(r *http.Request) (int64, error) {
	v := r.URL.Query().Get("before")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("before %q: want the number of a line of the log, 1 or more", v)
	}
	return n, nil
}

// logLines yields the lines of deploy id's log in span, read a page at a
// time as they are written, and sets p.LogErr when the history fails.
func (h *handler) logLines(id int64, span history.LogSpan, p *deployPage) iter.Seq[line] {
	return func(yield func(line) bool) {
		for after := span.First - 1; after < span.Last; {
			lines, err := h.o.History.LogLines(id, after, int(min(logPage, span.Last-after)))
			if err != nil {
				p.LogErr = err
				return
			}
			if len(lines) == 0 {
				return
			}
			for _, l := range lines {
				if l.Seq > span.Last || !yield(viewLine(l)) {
					return
				}
				after = l.Seq
			}
		}
	}
}

// lookup returns the deploy the request's {id} names, or answers 400, 404
// or 500 itself.
func (h *handler) lookup(w http.ResponseWriter, r *http.Request) (*history.Deploy, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 1 {
		h.fail(w, r, http.StatusBadRequest, fmt.Sprintf("%q is not a deploy ID: IDs are positive numbers.", r.PathValue("id")))
		return nil, false
	}
	d, err := h.o.History.Get(id)
	if errors.Is(err, history.ErrNotFound) {
		h.fail(w, r, http.StatusNotFound, fmt.Sprintf("There is no deploy %d.", id))
		return nil, false
	}
	if err != nil {
		h.broken(w, r, err)
		return nil, false
	}
	return tidy(d), true
}

// tidy cleans, in place, the parts of a deploy's record that come from
// git or hosts (a subject, an error's text) as cleanText does log lines,
// so that a page is valid UTF-8 whatever the bytes. html/template escapes
// them either way.
func tidy(d *history.Deploy) *history.Deploy {
	d.Subject, d.Description, d.Trigger = cleanText(d.Subject), cleanText(d.Description), cleanText(d.Trigger)
	for i := range d.Phases {
		d.Phases[i].Outcome = cleanText(d.Phases[i].Outcome)
	}
	for i := range d.Nodes {
		d.Nodes[i].Host, d.Nodes[i].Outcome = cleanText(d.Nodes[i].Host), cleanText(d.Nodes[i].Outcome)
	}
	return d
}

type errorPage struct {
	page
	Code    int
	Status  string
	Message string
}

// fail answers with an error page.
func (h *handler) fail(w http.ResponseWriter, r *http.Request, code int, msg string) {
	h.render(w, r, code, errorTmpl, &errorPage{page: h.page(http.StatusText(code)), Code: code, Status: http.StatusText(code), Message: msg})
}

// broken answers 500 for an error of the history, logged here and not
// shown: it may name files of the operator's machine.
func (h *handler) broken(w http.ResponseWriter, r *http.Request, err error) {
	h.o.Log.Error("page", "path", r.URL.Path, "err", err)
	h.fail(w, r, http.StatusInternalServerError, "The deploy history could not be read; the operator's log says why.")
}

// render executes the page into a buffer first, so a template error is a
// clean 500 rather than half a page.
func (h *handler) render(w http.ResponseWriter, r *http.Request, code int, t *template.Template, data any) {
	var b bytes.Buffer
	if err := t.ExecuteTemplate(&b, "layout", data); err != nil {
		h.o.Log.Error("render page", "path", r.URL.Path, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	setHeaders(w.Header())
	w.WriteHeader(code)
	w.Write(b.Bytes())
}

// stream executes a page straight to the client, for a page too big to
// hold in memory (a deploy's log): a template error cannot be a clean 500
// then; it cuts the page short, and is logged.
func (h *handler) stream(w http.ResponseWriter, r *http.Request, t *template.Template, data any) {
	setHeaders(w.Header())
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 32<<10)
	err := t.ExecuteTemplate(bw, "layout", data)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil && r.Context().Err() == nil {
		h.o.Log.Warn("render page", "path", r.URL.Path, "err", err)
	}
}

// setHeaders sets the headers of every page.
func setHeaders(hd http.Header) {
	hd.Set("Content-Type", "text/html; charset=utf-8")
	hd.Set("Content-Security-Policy", csp)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "same-origin")
	hd.Set("Cache-Control", "no-store") // every page shows live state
}

// line is a log line as the pages show it, in the page and in the events.
type line struct {
	Seq    int64     `json:"seq"`
	Time   time.Time `json:"time"`
	Clock  string    `json:"clock"` // Time as the page shows it
	Host   string    `json:"host"`
	Stream string    `json:"stream"`
	Class  string    `json:"class"` // the CSS class of its stream
	Text   string    `json:"text"`
}

func viewLine(l history.LogLine) line {
	return line{Seq: l.Seq, Time: l.Time, Clock: clock(l.Time), Host: cleanText(l.Host), Stream: cleanText(l.Stream),
		Class: streamClass(l.Stream), Text: cleanText(l.Text)}
}

// streamClass sets apart the operator's own lines and error output from a
// command's ordinary output.
func streamClass(stream string) string {
	switch stream {
	case "op", "progress", "stderr":
		return stream
	}
	return "out"
}

// ansiCSI matches the terminal escape sequences (colours, cursor moves)
// that build tools print even when not on a terminal.
var ansiCSI = regexp.MustCompile("\x1b\\[[0-?]*[ -/]*[@-~]")

// cleanText makes text from a host fit to show: terminal colour codes
// dropped, bytes that are not UTF-8 replaced by U+FFFD (a log line is
// whatever bytes a command printed), and other control characters shown
// as their Unicode pictures rather than passed to the browser.
func cleanText(s string) string {
	if strings.IndexByte(s, 0x1b) >= 0 {
		s = ansiCSI.ReplaceAllString(s, "")
	}
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\t':
			return r
		case r < 0x20:
			return 0x2400 + r // ␀ … ␟
		case r == 0x7f:
			return '␡'
		}
		return r
	}, s)
}

// short is a commit's short SHA, as the pages and git show it.
func short(sha string) string {
	if len(sha) > 12 {
		return sha[:12]
	}
	return sha
}

// when is a point in time, in UTC: the server cannot know the reader's
// zone, and the CLI shows UTC too.
func when(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// clock is the time of day of a log line or phase, as `operator logs`
// shows it.
func clock(t time.Time) string { return t.UTC().Format("15:04:05.000") }

// dur is a duration rounded for reading: milliseconds under a second,
// tenths of a second under a minute, seconds above.
func dur(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// took is how long a deploy took, or has taken so far.
func took(d *history.Deploy) string {
	if d.Ended.IsZero() {
		if d.Result == history.Running {
			return dur(time.Since(d.Started)) + " so far"
		}
		return ""
	}
	return dur(d.Ended.Sub(d.Started))
}

// resultClass is the CSS class of a result's badge.
func resultClass(r history.Result) string {
	switch r {
	case history.Success, history.Failure, history.Error, history.Running, history.Interrupted:
		return "r-" + string(r)
	}
	return "r-other" // noop, and results added later
}

// outcomeClass colours a phase's or node's outcome.
func outcomeClass(o string) string {
	switch {
	case o == "ok" || o == "updated":
		return "o-ok"
	case o == "" || o == "unchanged" || o == "untouched" || strings.HasPrefix(o, "skipped"):
		return "o-skip"
	}
	return "o-bad"
}

// spentRow is one kind of work and its time, with its share of the
// deploy's duration when the deploy has ended.
type spentRow struct {
	Kind     string
	Duration time.Duration
	Share    float64
}

// spent lists where the deploy's time went, longest first, and the
// operator's own overhead: what the listed kinds leave of the duration.
// Nodes rolled out in parallel can add up to more than the duration; then
// there is no overhead to show.
func spent(d *history.Deploy) []spentRow {
	var rows []spentRow
	var sum time.Duration
	for k, v := range d.Spent {
		rows = append(rows, spentRow{Kind: k, Duration: v})
		sum += v
	}
	slices.SortFunc(rows, func(a, b spentRow) int {
		return cmp.Or(cmp.Compare(b.Duration, a.Duration), cmp.Compare(a.Kind, b.Kind))
	})
	if d.Ended.IsZero() || len(rows) == 0 {
		return rows
	}
	total := d.Ended.Sub(d.Started)
	if rest := total - sum; rest > 0 {
		rows = append(rows, spentRow{Kind: "operator overhead", Duration: rest})
	}
	if total > 0 {
		for i := range rows {
			rows[i].Share = min(1, float64(rows[i].Duration)/float64(total))
		}
	}
	return rows
}

// basePath is the path of the public URL, the prefix of every link: "" at
// the root.
func basePath(publicURL string) string {
	u, err := url.Parse(publicURL)
	if err != nil {
		return ""
	}
	return strings.TrimRight(u.EscapedPath(), "/")
}

// redactRepo is the repository as the pages show it: without the user
// part of an http(s) URL (where a token goes) or any URL's password. An
// SSH user such as git@ is kept; it is not a secret.
func redactRepo(repo string) string {
	u, err := url.Parse(repo)
	if err != nil || u.User == nil || u.Scheme == "" {
		return repo
	}
	switch {
	case u.Scheme == "http" || u.Scheme == "https":
		u.User = nil
	default:
		if _, ok := u.User.Password(); ok {
			u.User = url.User(u.User.Username())
		}
	}
	return u.String()
}
