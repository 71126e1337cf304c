package lease_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if goroutines outlive the tests: every Manager,
// waiter and client connection must be shut down.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func decodeJSON(resp *http.Response, v any) error { return json.NewDecoder(resp.Body).Decode(v) }
