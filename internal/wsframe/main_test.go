package wsframe

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if a connection's goroutines outlive their test.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
