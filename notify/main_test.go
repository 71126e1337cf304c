package notify_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if goroutines outlive the tests: a Service's
// deriver, scheduler, workers and idle HTTP connections must all stop at
// Close.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
