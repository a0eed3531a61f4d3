package main

import (
	"encoding"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/clusterops/operator/config"
	"github.com/clusterops/operator/gitsrc"
	"github.com/clusterops/operator/history"
	"github.com/clusterops/operator/hosts"
	"github.com/clusterops/operator/reconcile"
	"github.com/lmittmann/tint"
	"golang.org/x/term"
)

// The operator's parts satisfy what reconcile consumes.
var (
	_ reconcile.Fleet    = (*hosts.Pool)(nil)
	_ reconcile.Source   = (*gitsrc.Mirror)(nil)
	_ reconcile.Reporter = (*statusReporter)(nil)
)

// opFlags are the flags of every command that runs the operator: --config,
// every key of operator.yaml, and logging.
type opFlags struct {
	fs         *flag.FlagSet
	configPath *string
	config     *config.Flags
	logFormat  *string
	logLevel   *string
}

func newOpFlags(name string, stderr io.Writer) *opFlags {
	fs, cfg := newFlagSet(name, stderr)
	return &opFlags{
		fs: fs, configPath: cfg,
		config:    config.RegisterFlags(fs),
		logFormat: fs.String("log-format", "auto", "log format: text, json, or auto (text on a terminal, JSON otherwise)"),
		logLevel:  fs.String("log-level", "info", "log level: debug, info, warn, error"),
	}
}

// load reads the config (the file is required only when --config was given)
// and makes the logger.
func (f *opFlags) load(stderr io.Writer) (*config.Config, *slog.Logger, error) {
	explicit := false
	f.fs.Visit(func(fl *flag.Flag) { explicit = explicit || fl.Name == "config" })
	cfg, err := config.Load(*f.configPath, explicit, f.config)
	if err != nil {
		return nil, nil, err
	}
	log, err := newLogger(stderr, *f.logFormat, *f.logLevel)
	return cfg, log, err
}

// open loads the config and wires the operator for command name. On
// failure it says why on stderr and returns the exit code: 2 for a bad
// config, 1 when the operator cannot be set up.
func (f *opFlags) open(name string, stderr io.Writer) (*operator, int) {
	cfg, log, err := f.load(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "operator %s: %v\n", name, err)
		return nil, 2
	}
	op, err := wire(cfg, log)
	if err != nil {
		fmt.Fprintf(stderr, "operator %s: %v\n", name, err)
		return nil, 1
	}
	return op, 0
}

// openHere wires the operator for a deploy in this process, without a
// daemon, and takes the environment's deploy lock; release frees it and
// closes the operator. A nil op comes with the exit code, the reason
// already printed.
func openHere(cfg *config.Config, log *slog.Logger, name string, stderr io.Writer) (op *operator, release func(), code int) {
	op, err := wire(cfg, log)
	if err != nil {
		fmt.Fprintf(stderr, "operator %s: %v\n", name, err)
		return nil, nil, 1
	}
	unlock, err := op.lockEnv()
	if err != nil {
		op.Close()
		fmt.Fprintf(stderr, "operator %s: %v\n", name, err)
		return nil, nil, 1
	}
	return op, func() { unlock(); op.Close() }, 0
}

// printDeploy says how a deploy run in this process ended, and where its
// log is.
func printDeploy(stdout io.Writer, d *history.Deploy) {
	fmt.Fprintf(stdout, "deploy %d: %s in %v (log: operator logs %d)\n", d.ID, d.Result, d.Ended.Sub(d.Started).Round(100*time.Millisecond), d.ID)
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	// The handlers write what they format themselves: JSON escapes control
	// characters, and the text handler's values go through printable (see
	// printableAttr) while its own colours reach the terminal.
	w = unwrapTerminal(w)
	if format == "auto" {
		format = "json"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			format = "text"
		}
	}
	switch format {
	case "text":
		return slog.New(tint.NewHandler(w, &tint.Options{Level: lv, TimeFormat: time.TimeOnly, ReplaceAttr: printableAttr})), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lv})), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text, json or auto", format)
}

// printableAttr passes the message and every attribute's value through
// printable for the text handler, which quotes a value holding control
// characters but, colouring, writes its ESC as it is. The time, level and
// source it formats itself are left to it.
func printableAttr(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey || a.Key == slog.SourceKey) {
		return a
	}
	switch a.Value.Kind() {
	case slog.KindString:
		if s := a.Value.String(); !isPrintable(s) {
			a.Value = slog.StringValue(printable(s))
		}
	case slog.KindAny:
		v := a.Value.Any()
		if _, ok := v.(encoding.TextMarshaler); ok {
			break // times, addresses: the operator's own values
		}
		if s := fmt.Sprintf("%+v", v); !isPrintable(s) {
			a.Value = slog.StringValue(printable(s))
		}
	}
	return a
}

// operator is every part of a running operator, wired.
type operator struct {
	cfg     *config.Config
	log     *slog.Logger
	mirror  *gitsrc.Mirror
	pool    *hosts.Pool
	history *history.Store
	rec     *reconcile.Reconciler
}

func wire(cfg *config.Config, log *slog.Logger) (*operator, error) {
	if err := os.MkdirAll(cfg.StateDir, 0o750); err != nil {
		return nil, fmt.Errorf("state_dir: %w", err)
	}
	mirror, err := gitsrc.Open(gitsrc.Options{URL: cfg.Repo, Branch: cfg.Branch, Dir: filepath.Join(cfg.StateDir, "mirror")})
	if err != nil {
		return nil, err
	}
	pc := hosts.Config{
		Identity:    cfg.SSH.Identity,
		AgentSocket: os.Getenv("SSH_AUTH_SOCK"),
		KnownHosts:  cfg.SSH.KnownHosts,
		Logger:      log,
	}
	if cfg.SSH.Jump != "" {
		host, port, _ := net.SplitHostPort(cfg.SSH.Jump)
		n, _ := strconv.Atoi(port)
		pc.Jump = &hosts.Target{Name: "jump", Address: host, Port: n}
	}
	pool, err := hosts.NewPool(pc)
	if err != nil {
		return nil, err
	}
	hist, err := history.Open(cfg.StateDir)
	if err != nil {
		pool.Close()
		return nil, err
	}
	return &operator{
		cfg: cfg, log: log, mirror: mirror, pool: pool, history: hist,
		rec: &reconcile.Reconciler{
			Env: cfg.Environment, ManifestPath: cfg.Manifest,
			Source: mirror, Fleet: pool, History: hist, Log: log,
		},
	}, nil
}

func (o *operator) Close() {
	o.pool.Close()
	o.history.Close()
}

// errLocked is returned when another deploy of the environment runs.
var errLocked = errors.New("another deploy of this environment is running")

// lockEnv takes the environment's deploy lock in state_dir, so that one
// deploy per environment runs at a time on this machine. The kernel frees
// it when the process dies, so a killed operator leaves no stale lock.
func (o *operator) lockEnv() (release func(), err error) {
	path := filepath.Join(o.cfg.StateDir, "deploy-"+o.cfg.Environment+".lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w (%s)", errLocked, path)
	}
	return func() { f.Close() }, nil
}
