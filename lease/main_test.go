package lease_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/meatspace-exchange/mess/internal/backends"
)

// TestMain fails the run if goroutines outlive the tests: every Manager,
// waiter and client connection must be shut down. The MinIO server some
// tests share is stopped first.
func TestMain(m *testing.M) { backends.Main(m) }

func decodeJSON(resp *http.Response, v any) error { return json.NewDecoder(resp.Body).Decode(v) }
