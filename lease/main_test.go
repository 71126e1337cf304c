package lease_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if goroutines outlive the tests: every Manager,
// waiter and client connection must be shut down. The MinIO server some
// tests share is stopped first.
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

func decodeJSON(resp *http.Response, v any) error { return json.NewDecoder(resp.Body).Decode(v) }
