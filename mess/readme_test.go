package mess_test

import (
	"os"
	"strings"
	"testing"
)

// Ensure the README's embedding snippet is Example's body, so it compiles
// and does what its output says.
func TestREADMESnippet(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(readme), "\n```go\n")
	if !ok {
		t.Fatal("README.md has no Go snippet")
	}
	snippet, _, _ := strings.Cut(after, "```\n")

	src, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	_, body, _ := strings.Cut(string(src), "\nfunc Example() {\n")
	body, _, _ = strings.Cut(body, "\t// Output:")
	var want strings.Builder
	for line := range strings.Lines(body) {
		want.WriteString(strings.TrimPrefix(line, "\t"))
	}
	if snippet != want.String() {
		t.Errorf("README.md's Go snippet differs from Example's body in example_test.go.\nREADME:\n%s\nExample:\n%s", snippet, want.String())
	}
}
