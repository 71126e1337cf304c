// Package examples holds runnable programs that use the module's packages;
// its test builds and runs every one of them.
package examples

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	// The examples are built from these packages. Importing them makes a
	// change to any of them a change to this test, so go test's cache does
	// not keep an old pass; reading the examples' sources below does the
	// same for the examples themselves.
	_ "github.com/meatspace-exchange/mess/lease"
	_ "github.com/meatspace-exchange/mess/mailbus"
	_ "github.com/meatspace-exchange/mess/mess"
	_ "github.com/meatspace-exchange/mess/notify"
	_ "github.com/meatspace-exchange/mess/storage"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// want lists, for every program under examples/, lines its output must
// contain. A new example needs an entry here, so none goes untested.
var want = map[string][]string{
	"embed": {
		"agent registered (owner: true)",
		"alice registered (owner: false)",
		"agent asked for help: pending",
		`alice's webhook: thread_created "Check the front door"`,
		"alice: claimed",
		"alice holds the lease on doors/front: true (token 1)",
		`agent's inbox: alice says "on my way"`,
		"request completed by alice with 2 messages",
	},
	"lease-editors": {
		"alice holds docs/notes.md with token 1",
		"bob holds docs/notes.md with token 2",
		"alice write: write refused: stale fencing token (1 < 2)",
	},
	"mailbus-agents": {
		"coordinator: T1 completed",
		"coordinator: T2 completed",
		"coordinator: T3 completed",
		"coordinator: T4 completed",
		"coordinator: T5 completed",
	},
}

// Ensure every example builds, exits 0 by itself within a minute and
// prints what it should.
func TestExamples(t *testing.T) {
	ents, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+string(filepath.Separator), "./...")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./examples/...: %v\n%s", err, out)
	}
	ran := 0
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		name := e.Name()
		srcs, _ := filepath.Glob(filepath.Join(name, "*.go"))
		for _, f := range srcs {
			if _, err := os.ReadFile(f); err != nil {
				t.Fatal(err)
			}
		}
		t.Run(name, func(t *testing.T) {
			lines, ok := want[name]
			if !ok {
				t.Fatalf("no expected output for examples/%s: add it to want", name)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, filepath.Join(bin, name))
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Run(); err != nil {
				t.Fatalf("examples/%s: %v (timed out: %v)\n%s", name, err, ctx.Err() != nil, out.String())
			}
			for _, l := range lines {
				if !strings.Contains(out.String(), l+"\n") {
					t.Errorf("examples/%s did not print %q; it printed:\n%s", name, l, out.String())
				}
			}
		})
		ran++
	}
	if ran != len(want) {
		t.Errorf("ran %d examples, expected output for %d", ran, len(want))
	}
}
