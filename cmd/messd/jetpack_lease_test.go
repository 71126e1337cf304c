package main

import (
	"net/http"
	"testing"
)

// cloudflareLease speaks to the lease API as Jetpack's CloudflareMailBus
// does once its lease stub is routed to messd: POST acquire, release and
// status under /leases/, with the bodies of jetpack-clients.md. Its
// release carries no token, and it reads no status code.
type cloudflareLease struct {
	t       *testing.T
	ts      *testServer
	key     string
	agentID string
}

func (c cloudflareLease) call(op string, body map[string]any) map[string]any {
	var out map[string]any
	c.ts.do(c.t, http.MethodPost, c.ts.api("jpcf")+"/leases/"+op, c.key, body, &out)
	return out
}

func (c cloudflareLease) acquire(file string, ttl int) bool {
	acquired, _ := c.call("acquire", map[string]any{"file": file, "agentId": c.agentID, "ttlMs": ttl})["acquired"].(bool)
	return acquired
}

func (c cloudflareLease) release(file string) {
	c.call("release", map[string]any{"file": file, "agentId": c.agentID})
}

func (c cloudflareLease) isLeased(file string) map[string]any {
	return c.call("status", map[string]any{"file": file})
}

// The holder's token-less release hands the file over at once; anyone
// else's release leaves it where it is.
func TestJetpack_CloudflareMailBusLeases(t *testing.T) {
	ts := startServer(t)
	a := cloudflareLease{t, ts, ts.register(t, "jpcf", "agent-a"), "agent-a"}
	b := cloudflareLease{t, ts, ts.register(t, "jpcf", "agent-b"), "agent-b"}
	const file = "src/index.ts"
	if !a.acquire(file, 120000) {
		t.Fatal("a could not acquire a free file")
	}
	if b.acquire(file, 120000) {
		t.Fatal("b acquired a's file")
	}
	b.release(file) // not the holder: nothing changes
	if st := b.isLeased(file); st["isLeased"] != true || st["agentId"] != "agent-a" {
		t.Fatalf("after b's release of a's file: %v", st)
	}
	a.release(file)
	if st := b.isLeased(file); st["isLeased"] != false {
		t.Fatalf("after a's token-less release: %v, want free", st)
	}
	if !b.acquire(file, 120000) {
		t.Fatal("b could not take the file a released")
	}
}
