package notify_test

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if goroutines outlive the tests: a Service's
// deriver, scheduler, workers and idle HTTP connections must all stop at
// Close. The MinIO server some tests share is stopped first.
func TestMain(m *testing.M) {
	code := m.Run()
	stopMinio()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}
