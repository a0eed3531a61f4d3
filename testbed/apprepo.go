package testbed

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// AppRepo is an app in a real git repository on this machine: a bare
// repository (what the operator watches, as it would watch GitHub) and a
// work tree that commits and pushes to it, as a developer does.
type AppRepo struct {
	Bare string
	Work string
}

// exampleAddrs are the placeholder addresses of the example app's
// deploy.yaml, by host name; NewAppRepo points them at the bed's hosts.
var exampleAddrs = []struct{ name, addr string }{
	{"build", "10.77.0.10"}, {"n1", "10.77.0.11"}, {"n2", "10.77.0.12"}, {"n3", "10.77.0.13"}, {"lb", "10.77.0.2"},
	{"db", "10.77.0.14"},
}

// NewAppRepo copies the app at src into a new repository under dir, with
// its deploy.yaml pointing at the bed's hosts of the same names, and makes
// the first commit on main.
func NewAppRepo(ctx context.Context, bed *Bed, src, dir string) (*AppRepo, error) {
	a := &AppRepo{Bare: filepath.Join(dir, "app.git"), Work: filepath.Join(dir, "app")}
	if err := CopyApp(src, a.Work); err != nil {
		return nil, err
	}
	manifest := filepath.Join(a.Work, "deploy.yaml")
	data, err := os.ReadFile(manifest)
	if err != nil {
		return nil, err
	}
	text := string(data)
	for _, e := range exampleAddrs {
		// Whole addresses only: 10.77.0.1 must not match inside 10.77.0.10.
		text = replaceAddr(text, e.addr, bed.Host(e.name).Addr.String())
	}
	if err := os.WriteFile(manifest, []byte(text), 0o644); err != nil {
		return nil, err
	}
	if err := a.git(ctx, dir, "init", "-q", "--bare", "-b", "main", a.Bare); err != nil {
		return nil, err
	}
	if err := a.git(ctx, a.Work, "init", "-q", "-b", "main"); err != nil {
		return nil, err
	}
	if err := a.git(ctx, a.Work, "remote", "add", "origin", a.Bare); err != nil {
		return nil, err
	}
	if _, err := a.Commit(ctx, "first commit", nil); err != nil {
		return nil, err
	}
	return a, nil
}

func replaceAddr(text, old, new string) string {
	var b strings.Builder
	for {
		i := strings.Index(text, old)
		if i < 0 {
			b.WriteString(text)
			return b.String()
		}
		end := i + len(old)
		if end < len(text) && text[end] >= '0' && text[end] <= '9' {
			b.WriteString(text[:end])
			text = text[end:]
			continue
		}
		b.WriteString(text[:i] + new)
		text = text[end:]
	}
}

// Commit runs edit on the work tree (nil for none), commits everything as
// msg and pushes to the bare repository's main. It returns the commit.
func (a *AppRepo) Commit(ctx context.Context, msg string, edit func(work string) error) (string, error) {
	if edit != nil {
		if err := edit(a.Work); err != nil {
			return "", err
		}
	}
	for _, args := range [][]string{{"add", "-A"}, {"commit", "-q", "--allow-empty", "-m", msg}, {"push", "-q", "-f", "origin", "HEAD:refs/heads/main"}} {
		if err := a.git(ctx, a.Work, args...); err != nil {
			return "", err
		}
	}
	return a.Head(ctx)
}

// Head is the commit at the tip of the work tree.
func (a *AppRepo) Head(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "git", "-C", a.Work, "rev-parse", "HEAD").Output()
	return strings.TrimSpace(string(out)), err
}

// AppendLine appends line to the file at rel in the work tree: a one-line change.
func AppendLine(rel, line string) func(string) error {
	return func(work string) error {
		f, err := os.OpenFile(filepath.Join(work, rel), os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = fmt.Fprintln(f, line)
		return err
	}
}

func (a *AppRepo) git(ctx context.Context, dir string, args ...string) error {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=Dev", "GIT_AUTHOR_EMAIL=dev@example.test",
		"GIT_COMMITTER_NAME=Dev", "GIT_COMMITTER_EMAIL=dev@example.test", "GIT_CONFIG_GLOBAL=/dev/null")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// SeedShared does on each node what an administrator does once before the
// first deploy: puts the cluster's cookie in <deployTo>/shared/releases/COOKIE.
func SeedShared(ctx context.Context, nodes []*Host, deployTo, cookie string) error {
	for _, h := range nodes {
		dir := deployTo + "/shared/releases"
		if _, err := h.Sh(ctx, "mkdir -p "+shellQuote(dir)+" && printf %s "+shellQuote(cookie)+" > "+shellQuote(dir+"/COOKIE")+" && chmod 400 "+shellQuote(dir+"/COOKIE")); err != nil {
			return err
		}
	}
	return nil
}
