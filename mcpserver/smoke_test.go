package mcpserver_test

import (
	"context"
	"testing"
)

func TestSmoke(t *testing.T) {
	e := newEnv(t)
	key := e.register(t, "ex1", "alice")
	cs := connect(t, e.URL, key, nil)
	for tl, err := range cs.Tools(context.Background(), nil) {
		if err != nil {
			t.Fatal(err)
		}
		t.Log(tl.Name)
	}
	out := call[map[string]any](t, cs, "create_request", map[string]any{"intent": "check the door"})
	t.Log(out)
	got := call[map[string]any](t, cs, "get_request", map[string]any{"ref": out["ref"]})
	t.Log(got)
	t.Log(callErr(t, cs, "get_request", map[string]any{"ref": "2025-01-01-AAAA"}))
	t.Log(callErr(t, cs, "get_request", map[string]any{}))
}
