// Package config is the operator's own configuration, operator.yaml: where
// the app repo is, which environment of its manifest to deploy, where state
// lives, how to reach hosts and GitHub. Every key can also be set by a flag,
// which wins over the file. It lives with the operator, never in the app
// repo; secrets come only from the environment (see Secrets).
package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/robfig/cron/v3"
	"go.yaml.in/yaml/v3"
)

// Config is operator.yaml with defaults filled in.
type Config struct {
	Repo        string `yaml:"repo"`
	Branch      string `yaml:"branch"`
	Environment string `yaml:"environment"`
	Manifest    string `yaml:"manifest"`
	StateDir    string `yaml:"state_dir"`
	Listen      string `yaml:"listen"`
	PublicURL   string `yaml:"public_url"`
	// Poll is a robfig/cron spec; "" turns polling off. A file without the
	// key polls every minute.
	Poll   *string `yaml:"poll"`
	SSH    SSH     `yaml:"ssh"`
	GitHub GitHub  `yaml:"github"`
}

// SSH says how the operator reaches hosts.
type SSH struct {
	Identity   string `yaml:"identity"`    // private key file; ssh-agent is used too
	KnownHosts string `yaml:"known_hosts"` // default ~/.ssh/known_hosts
	Jump       string `yaml:"jump"`        // optional bastion, host:port
}

// GitHub says where commit statuses go.
type GitHub struct {
	APIURL        string `yaml:"api_url"`
	Repository    string `yaml:"repository"`     // owner/name; derived from a GitHub repo URL
	StatusContext string `yaml:"status_context"` // default deploy/<environment>
}

// Defaults PRODUCT.md gives for keys left out.
const (
	DefaultBranch      = "main"
	DefaultEnvironment = "production"
	DefaultManifest    = "deploy.yaml"
	DefaultStateDir    = "/var/lib/operator"
	DefaultListen      = "127.0.0.1:8080"
	DefaultPoll        = "@every 1m"
	DefaultGitHubAPI   = "https://api.github.com/"
)

// Flags holds the command-line overrides of every key. Register it on a
// FlagSet before parsing, then pass it to Load.
type Flags struct {
	fs *flag.FlagSet
}

// flagKey ties a flag to its key in operator.yaml and to the field it sets.
type flagKey struct {
	flag, key, help string
	field           func(*Config) *string
}

// flagKeys lists a flag for every key of operator.yaml.
var flagKeys = []flagKey{
	{"repo", "repo", "the app repository: git@host:owner/name.git, https://…, file://… or a local path", func(c *Config) *string { return &c.Repo }},
	{"branch", "branch", "tracked branch (default main)", func(c *Config) *string { return &c.Branch }},
	{"environment", "environment", "manifest environment to deploy (default production)", func(c *Config) *string { return &c.Environment }},
	{"manifest", "manifest", "manifest path inside the repo (default deploy.yaml)", func(c *Config) *string { return &c.Manifest }},
	{"state-dir", "state_dir", "mirror, database and deploy logs (default /var/lib/operator)", func(c *Config) *string { return &c.StateDir }},
	{"listen", "listen", "address of the webhook, API, UI and metrics (default 127.0.0.1:8080)", func(c *Config) *string { return &c.Listen }},
	{"public-url", "public_url", "base of status links (default http://<listen>)", func(c *Config) *string { return &c.PublicURL }},
	{"poll", "poll", `cron spec for polling the repo; "" turns polling off (default "@every 1m")`, func(c *Config) *string {
		if c.Poll == nil {
			c.Poll = new(string)
		}
		return c.Poll
	}},
	{"ssh-identity", "ssh.identity", "SSH private key file", func(c *Config) *string { return &c.SSH.Identity }},
	{"ssh-known-hosts", "ssh.known_hosts", "known_hosts file (default ~/.ssh/known_hosts)", func(c *Config) *string { return &c.SSH.KnownHosts }},
	{"ssh-jump", "ssh.jump", "jump host, host:port", func(c *Config) *string { return &c.SSH.Jump }},
	{"github-api-url", "github.api_url", "GitHub API base URL", func(c *Config) *string { return &c.GitHub.APIURL }},
	{"github-repository", "github.repository", "owner/name for commit statuses", func(c *Config) *string { return &c.GitHub.Repository }},
	{"github-status-context", "github.status_context", "commit status context (default deploy/<environment>)", func(c *Config) *string { return &c.GitHub.StatusContext }},
}

// RegisterFlags adds a flag for every key of operator.yaml to fs.
func RegisterFlags(fs *flag.FlagSet) *Flags {
	for _, k := range flagKeys {
		fs.String(k.flag, "", k.help)
	}
	return &Flags{fs: fs}
}

// apply sets the fields of the flags given on the command line: a flag
// given, even empty (--poll ""), wins over the file.
func (f *Flags) apply(c *Config) {
	if f == nil {
		return
	}
	f.fs.Visit(func(fl *flag.Flag) {
		for _, k := range flagKeys {
			if k.flag == fl.Name {
				*k.field(c) = fl.Value.String()
			}
		}
	})
}

// Load reads the file at path (a missing file is fine when required is
// false: flags alone may configure the operator), applies the flags that
// were set, fills defaults and validates. Problems are reported all at once.
func Load(path string, required bool, flags *Flags) (*Config, error) {
	var c Config
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := decode(path, data, &c); err != nil {
			return nil, err
		}
	case errors.Is(err, os.ErrNotExist) && !required:
	default:
		return nil, fmt.Errorf("config: %w", err)
	}
	flags.apply(&c)
	c.fillDefaults()
	if err := c.validate(path); err != nil {
		return nil, err
	}
	return &c, nil
}

func decode(path string, data []byte, c *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			return fmt.Errorf("%s: %s", filepath.Base(path), strings.Join(te.Errors, "; "))
		}
		return fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	return nil
}

func (c *Config) fillDefaults() {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&c.Branch, DefaultBranch)
	def(&c.Environment, DefaultEnvironment)
	def(&c.Manifest, DefaultManifest)
	def(&c.StateDir, DefaultStateDir)
	def(&c.Listen, DefaultListen)
	def(&c.PublicURL, "http://"+c.Listen)
	c.PublicURL = strings.TrimSuffix(c.PublicURL, "/")
	if c.Poll == nil {
		p := DefaultPoll
		c.Poll = &p
	}
	if c.SSH.KnownHosts == "" {
		if home, err := os.UserHomeDir(); err == nil {
			c.SSH.KnownHosts = filepath.Join(home, ".ssh", "known_hosts")
		}
	}
	def(&c.GitHub.APIURL, DefaultGitHubAPI)
	if !strings.HasSuffix(c.GitHub.APIURL, "/") {
		c.GitHub.APIURL += "/"
	}
	def(&c.GitHub.Repository, GitHubRepository(c.Repo))
	def(&c.GitHub.StatusContext, "deploy/"+c.Environment)
}

var envName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

func (c *Config) validate(path string) error {
	var probs []string
	bad := func(key, format string, args ...any) {
		probs = append(probs, fmt.Sprintf("%s: %s: %s", filepath.Base(path), key, fmt.Sprintf(format, args...)))
	}
	if c.Repo == "" {
		bad("repo", "required (in the file or --repo)")
	}
	if strings.ContainsAny(c.Branch, " ~^:?*[\\") || strings.HasPrefix(c.Branch, "-") {
		bad("branch", "%q is not a branch name", c.Branch)
	}
	if !envName.MatchString(c.Environment) {
		bad("environment", "%q is not an environment name", c.Environment)
	}
	if filepath.IsAbs(c.Manifest) || strings.HasPrefix(filepath.Clean(c.Manifest), "..") {
		bad("manifest", "%q must be a path inside the repo", c.Manifest)
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen", "%q: want host:port", c.Listen)
	}
	if u, err := url.Parse(c.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("public_url", "%q: want an http(s) URL", c.PublicURL)
	}
	if *c.Poll != "" {
		parser := cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)
		if _, err := parser.Parse(*c.Poll); err != nil {
			bad("poll", "%q: %v", *c.Poll, err)
		}
	}
	if c.SSH.Jump != "" {
		if _, _, err := net.SplitHostPort(c.SSH.Jump); err != nil {
			bad("ssh.jump", "%q: want host:port", c.SSH.Jump)
		}
	}
	if u, err := url.Parse(c.GitHub.APIURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		bad("github.api_url", "%q: want an http(s) URL", c.GitHub.APIURL)
	}
	if c.GitHub.Repository != "" && !regexp.MustCompile(`^[\w.-]+/[\w.-]+$`).MatchString(c.GitHub.Repository) {
		bad("github.repository", "%q: want owner/name", c.GitHub.Repository)
	}
	if len(probs) > 0 {
		return errors.New(strings.Join(probs, "\n"))
	}
	return nil
}

var githubURL = regexp.MustCompile(`^(?:git@github\.com:|ssh://git@github\.com/|https://github\.com/)([\w.-]+)/([\w.-]+?)(?:\.git)?/?$`)

// GitHubRepository derives owner/name from a GitHub repository URL, or
// returns "" for any other URL.
func GitHubRepository(repo string) string {
	m := githubURL.FindStringSubmatch(repo)
	if m == nil {
		return ""
	}
	return m[1] + "/" + m[2]
}

// Secrets are the values that come only from the environment, never from a
// file or a flag, so that they stay out of shell history, process lists and
// the repo.
type Secrets struct {
	GitHubToken   string // GITHUB_TOKEN: statuses are off when empty
	WebhookSecret string // OPERATOR_WEBHOOK_SECRET: the webhook route is off when empty
	APIToken      string // OPERATOR_API_TOKEN: bearer token of the API and `operator sync`
}

// SecretsFromEnv reads the secrets from the process environment.
func SecretsFromEnv() Secrets {
	return Secrets{
		GitHubToken:   os.Getenv("GITHUB_TOKEN"),
		WebhookSecret: os.Getenv("OPERATOR_WEBHOOK_SECRET"),
		APIToken:      os.Getenv("OPERATOR_API_TOKEN"),
	}
}

// String never shows a secret, so a Secrets printed by mistake leaks nothing.
func (s Secrets) String() string {
	on := func(v string) string {
		if v == "" {
			return "unset"
		}
		return "set"
	}
	return fmt.Sprintf("GITHUB_TOKEN %s, OPERATOR_WEBHOOK_SECRET %s, OPERATOR_API_TOKEN %s", on(s.GitHubToken), on(s.WebhookSecret), on(s.APIToken))
}

// GoString keeps %#v from printing the secrets.
func (s Secrets) GoString() string { return s.String() }
