package manifests

import (
	"errors"
	"fmt"
	"strings"
	"text/template"
)

// TemplateData is what templates (release.env values, health.url and the
// files of release.files) see. Its field names are part of the manifest's
// contract: users write them as {{.Node}} or {{.Host.Address}}.
type TemplateData struct {
	App        string
	Env        string // environment name
	Commit     string // full SHA of the release acted on
	Node       string // this host's Erlang node name
	Peers      []string
	Host       TemplateHost
	DeployTo   string
	ReleaseDir string
}

// TemplateHost is the host a template is rendered for. It holds only what
// templates may rely on, not the SSH login.
type TemplateHost struct {
	Name    string // its key in hosts
	Address string
}

// templateFuncs are the functions templates may call beyond text/template's
// builtins: join makes lists such as .Peers easy to write into vm.args.
var templateFuncs = template.FuncMap{"join": strings.Join}

func newTemplate(name, text string) (*template.Template, error) {
	return template.New(name).Option("missingkey=error").Funcs(templateFuncs).Parse(text)
}

// Render executes tmpl with data. It fails on a field that TemplateData does
// not have rather than printing "<no value>" into a node's config.
func Render(tmpl string, data TemplateData) (string, error) {
	t, err := newTemplate("template", tmpl)
	if err != nil {
		return "", fmt.Errorf("parse template: %w", err)
	}
	var b strings.Builder
	if err := t.Execute(&b, data); err != nil {
		return "", fmt.Errorf("render template: %w", err)
	}
	return b.String(), nil
}

// sampleData stands in for a real node when a template is checked at parse
// time, so that a misspelt field fails `operator validate`, not a rollout.
func sampleData(app string) TemplateData {
	return TemplateData{
		App:        app,
		Env:        "production",
		Commit:     strings.Repeat("0", 40),
		Node:       app + "@10.0.0.1",
		Peers:      []string{app + "@10.0.0.2"},
		Host:       TemplateHost{Name: "node1", Address: "10.0.0.1"},
		DeployTo:   "/srv/" + app,
		ReleaseDir: "/srv/" + app + "/releases/" + strings.Repeat("0", 40),
	}
}

// checkTemplate parses text and executes it against sample, returning the
// rendered sample. Its error reads without text/template's "template: NAME:"
// prefix, since the problem already names the key.
func checkTemplate(text string, sample TemplateData) (string, error) {
	const name = "t"
	var b strings.Builder
	t, err := newTemplate(name, text)
	if err == nil {
		err = t.Execute(&b, sample)
	}
	if err != nil {
		msg := err.Error()
		msg = strings.Replace(msg, `executing "`+name+`" `, "", 1)
		msg = strings.Replace(msg, "template: "+name+":", "template: line ", 1)
		return "", errors.New(msg)
	}
	return b.String(), nil
}
