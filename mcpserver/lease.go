package mcpserver

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/meatspace-exchange/mess/lease"
)

type acquireInput struct {
	File   string `json:"file" jsonschema:"The lease's name, usually a file path such as src/app.go (./a//b and a/b are the same lease)."`
	TTLMs  int64  `json:"ttl_ms,omitempty" jsonschema:"How long the lease lasts unless renewed, in milliseconds (default 60000; the server allows 100 ms to 1 h by default)."`
	WaitMs int64  `json:"wait_ms,omitempty" jsonschema:"If another agent holds it, wait up to this many milliseconds for it (first come, first served; capped at 2 minutes). Default 0: fail at once."`
}

type renewInput struct {
	File  string `json:"file" jsonschema:"The lease's name."`
	Token uint64 `json:"token" jsonschema:"The fencing token acquire_lease returned."`
	TTLMs int64  `json:"ttl_ms,omitempty" jsonschema:"New lifetime from now, in milliseconds (default 60000). A renewal never shortens a lease."`
}

type releaseInput struct {
	File  string `json:"file" jsonschema:"The lease's name."`
	Token uint64 `json:"token,omitempty" jsonschema:"The fencing token acquire_lease returned. Optional: without it your current lease on the file is released."`
}

type fileInput struct {
	File string `json:"file" jsonschema:"The lease's name."`
}

type listLeasesInput struct {
	AgentID string `json:"agent_id,omitempty" jsonschema:"Only this agent's leases (your own id for yours). Omit for all."`
}

// grant is a lease as the tools report it. Times are epoch milliseconds,
// as in the HTTP API.
type grant struct {
	File        string `json:"file"`
	AgentID     string `json:"agent_id" jsonschema:"The agent holding it."`
	Token       uint64 `json:"token" jsonschema:"The fencing token: strictly increasing per file. Send it with every write the lease guards; renew_lease and release_lease need it."`
	ExpiresAt   int64  `json:"expires_at" jsonschema:"When it ends unless renewed, epoch milliseconds."`
	RemainingMs int64  `json:"remaining_ms"`
}

func toGrant(g lease.Grant) grant {
	return grant{File: g.Name, AgentID: g.Holder, Token: g.Token, ExpiresAt: g.ExpiresAt.UnixMilli(),
		RemainingMs: max(time.Until(g.ExpiresAt).Milliseconds(), 0)}
}

type releaseOutput struct {
	Released bool `json:"released" jsonschema:"True once the lease is given back. A lease that had expired, passed to another agent or whose token is not the current one is a not_held or stale_token error instead."`
}

type statusOutput struct {
	IsLeased    bool   `json:"is_leased"`
	AgentID     string `json:"agent_id,omitempty"`
	Token       uint64 `json:"token,omitempty"`
	ExpiresAt   int64  `json:"expires_at,omitempty" jsonschema:"Epoch milliseconds."`
	RemainingMs int64  `json:"remaining_ms,omitempty"`
}

type leasesOutput struct {
	Leases []grant `json:"leases"`
}

const defaultTTL = 60 * time.Second

// ms converts a tool's milliseconds; values beyond a year are refused by
// the manager's TTL bounds as out of range rather than overflowing.
func ms(v int64, def time.Duration) time.Duration {
	switch {
	case v == 0:
		return def
	case v < 0 || v > int64(365*24*time.Hour/time.Millisecond):
		return -1
	}
	return time.Duration(v) * time.Millisecond
}

func (s *Server) addLeaseTools() {
	m := s.cfg.Leases
	ttlTweak := func(sc *jsonschema.Schema) {
		prop(sc, "file").MinLength = ptr(1)
		t := prop(sc, "ttl_ms")
		t.Minimum, t.Default = ptr(1.0), json.RawMessage("60000")
	}

	tool(s, &mcp.Tool{Name: "acquire_lease", Annotations: annotations("Take a lease", false, false),
		Description: "Take the exclusive lease on a file (or any name) in your exchange before changing it, so agents take turns. " +
			"Returns the fencing token. Acquiring a lease you hold renews it. If another agent holds it the result is a conflict error " +
			"naming the holder and when it expires; pass wait_ms to queue for it instead."},
		func(sc *jsonschema.Schema) {
			ttlTweak(sc)
			w := prop(sc, "wait_ms")
			w.Minimum, w.Maximum = ptr(0.0), ptr(float64(s.cfg.MaxWait.Milliseconds()))
		},
		func(ctx context.Context, c caller, in acquireInput) (grant, error) {
			wait := min(ms(in.WaitMs, 0), s.cfg.MaxWait)
			if wait < 0 {
				return grant{}, invalid("wait_ms out of range")
			}
			var g lease.Grant
			var err error
			if wait > 0 {
				ctx, cancel := s.bound(ctx)
				defer cancel()
				g, err = m.AcquireWait(ctx, c.exchange, c.agent, in.File, ms(in.TTLMs, defaultTTL), wait)
			} else {
				g, err = m.Acquire(ctx, c.exchange, c.agent, in.File, ms(in.TTLMs, defaultTTL))
			}
			if err != nil {
				if he, ok := errors.AsType[*lease.HeldError](err); ok {
					te := classify(he)
					te.Message = "the lease on " + he.Name + " is held by " + he.Holder
					te.Details["remaining_ms"] = max(time.Until(he.ExpiresAt).Milliseconds(), 0)
					return grant{}, te
				}
				return grant{}, err
			}
			return toGrant(g), nil
		})

	tool(s, &mcp.Tool{Name: "renew_lease", Annotations: annotations("Extend a lease", false, true),
		Description: "Extend a lease you hold, before it expires. Fails with code stale_token if the lease has passed to another agent " +
			"and not_held if it expired: then stop writing, your work may be overwritten."},
		ttlTweak,
		func(ctx context.Context, c caller, in renewInput) (grant, error) {
			g, err := m.Renew(ctx, c.exchange, c.agent, in.File, in.Token, ms(in.TTLMs, defaultTTL))
			return toGrant(g), err
		})

	tool(s, &mcp.Tool{Name: "release_lease", Annotations: annotations("Give a lease back", false, true),
		Description: "Give up a lease you hold as soon as you are done, so the next agent may take it."},
		func(sc *jsonschema.Schema) { prop(sc, "file").MinLength = ptr(1) },
		func(ctx context.Context, c caller, in releaseInput) (releaseOutput, error) {
			err := m.Release(ctx, c.exchange, c.agent, in.File, in.Token)
			return releaseOutput{Released: err == nil}, err
		})

	tool(s, &mcp.Tool{Name: "lease_status", Annotations: annotations("Who holds a lease", true, true),
		Description: "Report whether a file is leased, by whom and until when."},
		func(sc *jsonschema.Schema) { prop(sc, "file").MinLength = ptr(1) },
		func(ctx context.Context, c caller, in fileInput) (statusOutput, error) {
			st, err := m.Status(ctx, c.exchange, in.File)
			return statusOutput{IsLeased: st.IsLeased, AgentID: st.AgentID, Token: st.Token, ExpiresAt: st.ExpiresAt, RemainingMs: st.RemainingMs}, err
		})

	tool(s, &mcp.Tool{Name: "list_leases", Annotations: annotations("List leases", true, true),
		Description: "List the live leases of your exchange, or one agent's."},
		nil,
		func(ctx context.Context, c caller, in listLeasesInput) (leasesOutput, error) {
			gs, err := m.List(ctx, c.exchange, in.AgentID)
			out := leasesOutput{Leases: make([]grant, 0, len(gs))}
			for _, g := range gs {
				out.Leases = append(out.Leases, toGrant(g))
			}
			return out, err
		})
}
