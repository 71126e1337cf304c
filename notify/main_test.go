package notify_test

import (
	"testing"

	"github.com/meatspace-exchange/mess/internal/backends"
)

// TestMain fails the run if goroutines outlive the tests: a Service's
// deriver, scheduler, workers and idle HTTP connections must all stop at
// Close. The MinIO server some tests share is stopped first.
func TestMain(m *testing.M) { backends.Main(m) }
