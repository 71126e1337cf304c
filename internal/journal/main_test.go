package journal_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if a journal's flusher or a replay's workers
// outlive their test.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
