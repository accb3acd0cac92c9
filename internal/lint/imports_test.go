package lint

import (
	"go/build"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

const module = "github.com/walrelay/walrelay"

// allowed lists, for each package, the project packages it may import.
// Imports flow one way: cmd -> relay, failover -> topology; walstream ->
// internal leaves. relay and failover are peers; topology never imports the
// data plane; walstream knows nothing about trees.
var allowed = map[string][]string{
	"cmd/walrelay":       {"relay", "walstream", "topology", "failover", "internal/pgcluster", "internal/feed"},
	"relay":              {"walstream", "internal/vfs", "internal/waltest", "internal/testcert", "internal/feed", "internal/units"},
	"failover":           {"topology", "walstream"},
	"topology":           {"walstream", "internal/testcert", "internal/feed"},
	"walstream":          {"internal/vfs", "internal/waltest"},
	"internal/vfs":       {},
	"internal/units":     {},
	"internal/feed":      {"walstream", "internal/units"},
	"internal/waltest":   {},
	"internal/testcert":  {},
	"internal/pgcluster": {},
	"e2e":                {"internal/pgcluster", "internal/testcert", "internal/feed", "walstream", "relay", "topology"},
	"internal/lint":      {},
}

func TestImportDirections(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	for pkg, ok := range allowed {
		dir := filepath.Join(root, pkg)
		if _, err := os.Stat(dir); os.IsNotExist(err) {
			continue // a package still to come
		}
		bp, err := build.ImportDir(dir, build.ImportComment)
		if err != nil {
			t.Fatalf("%s: %v", pkg, err)
		}
		imports := append(append(bp.Imports, bp.TestImports...), bp.XTestImports...)
		for _, imp := range imports {
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			rel := strings.TrimPrefix(imp, module+"/")
			permitted := rel == pkg // an external test package of its own
			for _, a := range ok {
				if rel == a {
					permitted = true
				}
			}
			if !permitted {
				t.Errorf("%s imports %s: not allowed (see STYLE: imports flow one way)", pkg, rel)
			}
		}
	}
}

// Every package must have a rule, so a new one cannot slip past the check.
func TestEveryPackageHasARule(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
	filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		if name := d.Name(); path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "bin") {
			return filepath.SkipDir
		}
		if gos, _ := filepath.Glob(filepath.Join(path, "*.go")); len(gos) == 0 {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		if _, ok := allowed[filepath.ToSlash(rel)]; !ok {
			t.Errorf("package %s has no import rule in internal/lint", rel)
		}
		return nil
	})
}
