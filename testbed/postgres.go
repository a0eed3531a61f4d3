package testbed

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// PostgresPort is the port StartPostgres listens on, on the host's bed
// address only.
const PostgresPort = 5432

const (
	postgresBin = "/usr/lib/postgresql/15/bin"
	// postgresRun is in the host's private /run (a tmpfs of its own mount
	// namespace): the socket directory, where Debian's psql looks by
	// default, and the data directory below it. The data must be
	// traversable by the postgres user, which the bed's own directories
	// (t.TempDir, 0700 root) are not; /run is 0755, private to the host, in
	// memory, and it goes away with the host's last process, so the bed's
	// teardown removes the database with everything else running there.
	postgresRun  = "/run/postgresql"
	postgresData = postgresRun + "/15-data"
	// postgresTemplates keeps initdb's output between runs, like NPMCache:
	// initdb costs about a second, a copy of its result a tenth of that.
	postgresTemplates = "/var/cache/operator-testbed/postgres"
)

// initdbArgs are initdb's arguments besides the data directory; they are
// part of the template's key, as is the server's version.
var initdbArgs = []string{"-U", "postgres", "-E", "UTF8", "--locale=C.UTF-8", "--auth-local=peer", "--auth-host=scram-sha-256", "--no-sync"}

// PostgresOptions configures StartPostgres.
type PostgresOptions struct {
	// User and Database name the app's role and the database it owns; both
	// default to "chat". Lowercase letters, digits and _ only.
	User, Database string
	// Password is the role's password (required). It logs in with
	// scram-sha-256, over TCP from the bed's subnet only.
	Password string
}

// Postgres is Debian's PostgreSQL 15 server running on a host of the bed,
// as the postgres OS user, with one database for an app.
type Postgres struct {
	Host *Host
	// Addr is the only TCP address it listens on: the host's, port 5432.
	Addr     netip.AddrPort
	User     string
	Database string
	Password string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// StartPostgres runs a PostgreSQL server on h listening on h's bed address
// (port 5432) and on a socket in h's private /run/postgresql, with a role
// and database for an app as opts say, and returns once it accepts queries.
// The data directory is a copy of a template made once per machine by
// initdb. The bed's teardown stops the server and removes its data.
func (h *Host) StartPostgres(ctx context.Context, opts PostgresOptions) (*Postgres, error) {
	if opts.User == "" {
		opts.User = "chat"
	}
	if opts.Database == "" {
		opts.Database = "chat"
	}
	for _, name := range []string{opts.User, opts.Database} {
		if !sqlName.MatchString(name) || name == "postgres" {
			return nil, fmt.Errorf("testbed: postgres on %s: name %q: want lowercase letters, digits and _, not postgres", h.Name, name)
		}
	}
	if opts.Password == "" {
		return nil, fmt.Errorf("testbed: postgres on %s: a password is required", h.Name)
	}
	p := &Postgres{
		Host: h, Addr: netip.AddrPortFrom(h.Addr, PostgresPort),
		User: opts.User, Database: opts.Database, Password: opts.Password,
	}
	tmpl, err := postgresTemplate(ctx, h.bed.logf)
	if err != nil {
		return nil, fmt.Errorf("testbed: postgres on %s: %w", h.Name, err)
	}
	start := time.Now()
	subnet := netip.PrefixFrom(h.bed.Gateway, 24).Masked()
	hba := "# TYPE DATABASE USER ADDRESS METHOD (written by the test bed)\n" +
		"local all postgres peer\n" +
		fmt.Sprintf("host %s %s %s scram-sha-256\n", opts.Database, opts.User, subnet)
	if _, err := h.Sh(ctx, strings.Join([]string{
		"set -e",
		"test ! -e " + postgresData + " || { echo 'a server was started here before' >&2; exit 1; }",
		"mkdir -p " + postgresRun,
		"chown postgres:postgres " + postgresRun,
		"cp -a " + shellQuote(tmpl) + " " + postgresData,
		"printf %s " + shellQuote(hba) + " > " + postgresData + "/pg_hba.conf",
		"chown postgres:postgres " + postgresData + "/pg_hba.conf",
	}, "\n")); err != nil {
		return nil, fmt.Errorf("testbed: postgres on %s: data directory: %w", h.Name, err)
	}
	copied := time.Now()
	if err := p.Start(ctx); err != nil {
		return nil, err
	}
	ready := time.Now()
	setup := fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD %s;\nCREATE DATABASE %s OWNER %s;\n",
		opts.User, sqlLiteral(opts.Password), opts.Database, opts.User)
	if _, err := p.psql(ctx, "postgres", setup); err != nil {
		return nil, fmt.Errorf("testbed: postgres on %s: role and database: %w", h.Name, err)
	}
	h.bed.logf("testbed: postgres on %s (%s): template copied in %v, ready in %v, role and database in %v", h.Name, p.Addr,
		copied.Sub(start).Round(time.Millisecond), ready.Sub(copied).Round(time.Millisecond), time.Since(ready).Round(time.Millisecond))
	return p, nil
}

var sqlName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// URL is how the app reaches the database: postgres://user:password@addr:5432/database.
func (p *Postgres) URL() string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(p.User, p.Password), Host: p.Addr.String(), Path: "/" + p.Database}
	return u.String()
}

// Query runs sql (one or more statements, stopping at the first error) as
// the postgres superuser in the app's database, with psql over the host's
// socket, and returns what it printed: unaligned, tuples only, columns
// separated by |, one row a line, trimmed.
func (p *Postgres) Query(ctx context.Context, sql string) (string, error) {
	return p.psql(ctx, p.Database, sql)
}

func (p *Postgres) psql(ctx context.Context, db, sql string) (string, error) {
	cmd := p.Host.Command("setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--",
		postgresBin+"/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", postgresRun, "-p", fmt.Sprint(PostgresPort), "-d", db, "-f", "-")
	cmd.Env = append(cmd.Env, "PGOPTIONS=-c client_min_messages=warning")
	cmd.Stdin = strings.NewReader(sql)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := runCmdIO(ctx, cmd); err != nil {
		return stdout.String(), fmt.Errorf("psql on %s: %w: %s", p.Host.Name, err, tail(stderr.String(), 1000))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// Start starts the server (StartPostgres does; again after Stop) and waits
// until it accepts queries: until postmaster.pid says "ready", as pg_ctl -w
// waits, but polled every 5 ms rather than every 100.
func (p *Postgres) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.Host
	if p.cmd != nil {
		return fmt.Errorf("testbed: postgres on %s: already running", h.Name)
	}
	logPath := filepath.Join(h.Dir, "postgres.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := h.Command("setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--",
		postgresBin+"/postgres", "-D", postgresData,
		"-c", "listen_addresses="+h.Addr.String(),
		"-c", fmt.Sprint("port=", PostgresPort),
		"-c", "unix_socket_directories="+postgresRun,
		// A throwaway database in memory: durability buys nothing here.
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("testbed: postgres on %s: %w", h.Name, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	p.cmd, p.exited = cmd, exited
	// The keeper's view of /run is the host's.
	pidFile := fmt.Sprintf("/proc/%d/root%s/postmaster.pid", h.keeper.Process.Pid, postgresData)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if data, err := os.ReadFile(pidFile); err == nil {
			// Line 8 is the postmaster's status (PostgreSQL 10 and later).
			if lines := strings.Split(string(data), "\n"); len(lines) > 7 && strings.TrimSpace(lines[7]) == "ready" {
				return nil
			}
		}
		select {
		case <-exited:
			p.cmd = nil
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("testbed: postgres on %s exited at start: %s", h.Name, tail(string(log), 1000))
		case <-ctx.Done():
			cmd.Process.Kill()
			p.cmd = nil
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			p.cmd = nil
			return fmt.Errorf("testbed: postgres on %s not ready after 30s", h.Name)
		}
	}
}

// Stop shuts the server down (PostgreSQL's fast shutdown: sessions are
// ended) and waits until it has exited, as a database going away under
// the app: for tests of what the app does then.
func (p *Postgres) Stop(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return nil
	}
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.exited:
		p.cmd = nil
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

var pgTemplate struct {
	mu  sync.Mutex
	dir string
}

// postgresTemplate returns a data directory made by initdb, kept under
// postgresTemplates by a key of the server's version and initdbArgs, so a
// machine runs initdb once per version rather than once per bed. It is
// made under a temporary name and renamed into place, so a run that dies
// halfway leaves no half template, and runs racing to make it both use the
// one renamed first.
func postgresTemplate(ctx context.Context, logf func(string, ...any)) (string, error) {
	pgTemplate.mu.Lock()
	defer pgTemplate.mu.Unlock()
	if pgTemplate.dir != "" {
		return pgTemplate.dir, nil
	}
	version, err := exec.CommandContext(ctx, postgresBin+"/postgres", "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s/postgres (scripts/install-deps.sh installs it): %w", postgresBin, err)
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(string(version)) + "\n" + strings.Join(initdbArgs, "\n")))
	dir := filepath.Join(postgresTemplates, hex.EncodeToString(sum[:8]))
	data := filepath.Join(dir, "data")
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); err == nil {
		pgTemplate.dir = data
		return data, nil
	}
	if err := os.MkdirAll(postgresTemplates, 0o755); err != nil {
		return "", err
	}
	removeStaleStaging(logf)
	start := time.Now()
	staging, err := os.MkdirTemp(postgresTemplates, ".initdb-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(staging) // gone once renamed
	if err := chownPostgres(ctx, staging); err != nil {
		return "", err
	}
	args := append([]string{"--reuid=postgres", "--regid=postgres", "--clear-groups", "--", postgresBin + "/initdb", "-D", filepath.Join(staging, "data")}, initdbArgs...)
	cmd := exec.CommandContext(ctx, "setpriv", args...)
	cmd.Dir = "/"
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("initdb: %w: %s", err, tail(string(out), 1000))
	}
	// initdb ran with --no-sync: flush the template once, since every later
	// run trusts it.
	if out, err := exec.CommandContext(ctx, "sync", "-f", staging).CombinedOutput(); err != nil {
		return "", fmt.Errorf("sync %s: %w: %s", staging, err, out)
	}
	// A run that raced us there renamed its own first: use that one.
	if err := os.Rename(staging, dir); err != nil && !errors.Is(err, syscall.EEXIST) && !errors.Is(err, syscall.ENOTEMPTY) {
		return "", fmt.Errorf("keep postgres template: %w", err)
	}
	logf("testbed: postgres template made by initdb in %v (%s)", time.Since(start).Round(time.Millisecond), dir)
	pgTemplate.dir = data
	return data, nil
}

// removeStaleStaging removes what runs killed while making a template left.
func removeStaleStaging(logf func(string, ...any)) {
	old, _ := filepath.Glob(filepath.Join(postgresTemplates, ".initdb-*"))
	for _, d := range old {
		if fi, err := os.Stat(d); err == nil && time.Since(fi.ModTime()) > 10*time.Minute {
			logf("testbed: removing %s left by an earlier run", d)
			os.RemoveAll(d)
		}
	}
}

func chownPostgres(ctx context.Context, path string) error {
	if out, err := exec.CommandContext(ctx, "chown", "postgres:postgres", path).CombinedOutput(); err != nil {
		return fmt.Errorf("chown %s (is the postgresql package installed?): %w: %s", path, err, out)
	}
	return nil
}

// sqlLiteral quotes s as an SQL string literal.
func sqlLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// runCmdIO runs cmd with the I/O it was given, killing it when ctx ends.
func runCmdIO(ctx context.Context, cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		cmd.Process.Kill()
		<-done
		return ctx.Err()
	}
}
