package manifests

import (
	"errors"
	"os"
	"testing"
)

// FuzzParse checks that no input makes Parse panic, that every failure is a
// non-empty list of located problems, that the output does not depend on map
// iteration order, and that whatever Parse accepts, Validate accepts too.
func FuzzParse(f *testing.F) {
	for _, dir := range []string{"valid", "invalid"} {
		for _, file := range testdataFiles(f, dir) {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse("deploy.yaml", data)
		_, again := Parse("deploy.yaml", data)
		if (err == nil) != (again == nil) || (err != nil && err.Error() != again.Error()) {
			t.Fatalf("Parse is not deterministic:\n%v\n---\n%v", err, again)
		}
		if err != nil {
			if m != nil {
				t.Errorf("Parse returned a manifest with an error")
			}
			var errs *Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse error is %T, want *Errors: %v", err, err)
			}
			if len(errs.Problems) == 0 {
				t.Fatal("Parse returned *Errors without problems")
			}
			for _, p := range errs.Problems {
				if p.Line < 1 || p.File != "deploy.yaml" || p.Msg == "" {
					t.Errorf("badly located problem %+v", p)
				}
			}
			return
		}
		if m == nil {
			t.Fatal("Parse returned neither a manifest nor an error")
		}
		if err := m.Validate(); err != nil {
			t.Errorf("Validate rejects what Parse accepted: %v", err)
		}
	})
}
