package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testdata is the manifests package's: validate must agree with Parse on it.
const testdata = "../../manifests/testdata"

func TestValidate(t *testing.T) {
	several, err := os.ReadFile(filepath.Join(testdata, "invalid", "several.errors"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		deploy     string // the file copied to deploy.yaml, under testdata
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{
			name:       "valid",
			args:       []string{"--manifest", "full.yaml"},
			wantCode:   0,
			wantStdout: "full.yaml: valid (app chat, 1 environment, 4 hosts)\n",
		},
		{
			name:       "default file",
			wantCode:   0,
			wantStdout: "deploy.yaml: valid (app chat, 1 environment, 1 host)\n",
		},
		{
			name:       "invalid",
			deploy:     "invalid/several.yaml",
			args:       []string{"-manifest", "deploy.yaml", "--config", "elsewhere.yaml"},
			wantCode:   1,
			wantStderr: string(several),
		},
		{
			name:       "missing file",
			args:       []string{"--manifest", "nope.yaml"},
			wantCode:   1,
			wantStderr: "operator validate: open nope.yaml: no such file or directory\n",
		},
		{
			name:       "extra argument",
			args:       []string{"deploy.yaml"},
			wantCode:   2,
			wantStderr: `operator validate: unexpected argument "deploy.yaml"`,
		},
		{
			name:       "bad flag",
			args:       []string{"--nope"},
			wantCode:   2,
			wantStderr: "flag provided but not defined: -nope",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.deploy == "" {
				tt.deploy = "valid/minimal.yaml"
			}
			dir := t.TempDir()
			copyFile(t, filepath.Join(testdata, "valid", "full.yaml"), filepath.Join(dir, "full.yaml"))
			copyFile(t, filepath.Join(testdata, tt.deploy), filepath.Join(dir, "deploy.yaml"))
			t.Chdir(dir)

			var stdout, stderr bytes.Buffer
			code := run(t.Context(), append([]string{"validate"}, tt.args...), &stdout, &stderr)
			if code != tt.wantCode {
				t.Errorf("exit code = %d, want %d (stderr: %s)", code, tt.wantCode, stderr.String())
			}
			if got := stdout.String(); got != tt.wantStdout {
				t.Errorf("stdout = %q, want %q", got, tt.wantStdout)
			}
			if got := stderr.String(); tt.wantCode == 2 {
				if !strings.Contains(got, tt.wantStderr) {
					t.Errorf("stderr = %q, want it to contain %q", got, tt.wantStderr)
				}
			} else if got != tt.wantStderr {
				t.Errorf("stderr = %q, want %q", got, tt.wantStderr)
			}
		})
	}
}

func TestDispatch(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string // a substring
		wantStderr string // a substring
	}{
		{name: "no command", wantCode: 2, wantStderr: "usage: operator <command>"},
		{name: "unknown command", args: []string{"deploy"}, wantCode: 2, wantStderr: `unknown command "deploy"`},
		{name: "help", args: []string{"help"}, wantCode: 0, wantStdout: "validate   check a manifest"},
		{name: "version", args: []string{"version"}, wantCode: 0, wantStdout: "operator dev ("},
		{name: "version with config", args: []string{"version", "--config", "x.yaml"}, wantCode: 0, wantStdout: "operator "},
		{name: "command help", args: []string{"validate", "-h"}, wantCode: 0, wantStderr: "-manifest file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(t.Context(), tt.args, &stdout, &stderr)
			if code != tt.wantCode {
				t.Errorf("exit code = %d, want %d", code, tt.wantCode)
			}
			if !strings.Contains(stdout.String(), tt.wantStdout) {
				t.Errorf("stdout = %q, want it to contain %q", stdout.String(), tt.wantStdout)
			}
			if !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("stderr = %q, want it to contain %q", stderr.String(), tt.wantStderr)
			}
		})
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
