package deploy_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// repoRoot is the module root: the build context of the Dockerfile.
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("no go.mod above deploy/: %v", err)
	}
	return root
}

// s3Env is the S3 backend's configuration, read by cmd/messd with
// STORAGE_TYPE=s3.
var s3Env = []string{"S3_ENDPOINT", "S3_BUCKET", "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_REGION", "S3_PREFIX", "S3_USE_SSL"}

var envName = regexp.MustCompile(`^[A-Z][A-Z0-9]*(_[A-Z0-9]+)+$|^(PORT|ADDR)$`)

// messdEnv is every environment variable name cmd/messd can read: the
// string constants of its non-test sources that look like one, and the S3
// settings. The Dockerfile, the Compose file and the chart may set no other,
// so a misspelt name fails a test instead of being silently ignored.
func messdEnv(t testing.TB) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	for _, n := range s3Env {
		names[n] = true
	}
	files, err := filepath.Glob(filepath.Join(repoRoot(t), "cmd", "messd", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, err := strconv.Unquote(lit.Value); err == nil && envName.MatchString(s) {
					names[s] = true
				}
			}
			return true
		})
	}
	for _, must := range []string{"PORT", "STORAGE_TYPE", "STORAGE_PATH", "MESS_REGISTRATION_TOKEN"} {
		if !names[must] {
			t.Fatalf("found no %s in cmd/messd: the scan is broken (found %v)", must, names)
		}
	}
	return names
}
