// Package leasetest checks that a lease service behaves as one atomic lease
// per name under concurrent use: it records a history of acquires,
// releases and status reads from many agents at once and verifies with the
// porcupine checker that some sequential order of those operations explains
// every result (linearizability). It works against anything that looks
// like one agent's view of the service: an in-process Manager
// (ManagerTarget) or the HTTP Client.
package leasetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/meatspace-exchange/mess/lease"
)

// Target is one agent's view of a lease service. *lease.Client satisfies
// it; ManagerTarget adapts a Manager.
type Target interface {
	Acquire(ctx context.Context, name string, ttl time.Duration) (lease.Grant, error)
	Release(ctx context.Context, name string, token uint64) error
	Status(ctx context.Context, name string) (lease.Status, error)
}

type managerTarget struct {
	m        *lease.Manager
	x, agent string
}

func (t managerTarget) Acquire(ctx context.Context, name string, ttl time.Duration) (lease.Grant, error) {
	return t.m.Acquire(ctx, t.x, t.agent, name, ttl)
}

func (t managerTarget) Release(ctx context.Context, name string, token uint64) error {
	return t.m.Release(ctx, t.x, t.agent, name, token)
}

func (t managerTarget) Status(ctx context.Context, name string) (lease.Status, error) {
	return t.m.Status(ctx, t.x, name)
}

// ManagerTarget is agentID's view of exchangeID in m.
func ManagerTarget(m *lease.Manager, exchangeID, agentID string) Target {
	return managerTarget{m, exchangeID, agentID}
}

// Agent pairs a Target with the agent id it acts as.
type Agent struct {
	ID     string
	Target Target
}

// Config sizes a run of CheckLinearizable.
type Config struct {
	// Names are the lease names contended for. Zero means "a", "b", "c".
	Names []string
	// Ops is the number of operations each agent issues. Zero means 200.
	Ops int
	// TTL is the TTL of every grant; it must outlast the run, since the
	// model has no expiry. Zero means 1 minute.
	TTL time.Duration
}

type input struct {
	op    byte // 'a' acquire, 'r' release, 's' status
	name  string
	agent string
	token uint64
}

type output struct {
	ok     bool
	holder string
	token  uint64
}

type state struct {
	holder      string
	token, last uint64
}

// model is the sequential specification of one lease name: a free lease is
// granted with a token above every earlier one, the holder's re-acquire
// keeps its token, anyone else is refused with the holder's name, release
// succeeds only for the holder with the current token, and status shows the
// holder and token.
var model = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		var order []string
		for _, op := range h {
			n := op.Input.(input).name
			if _, ok := by[n]; !ok {
				order = append(order, n)
			}
			by[n] = append(by[n], op)
		}
		out := make([][]porcupine.Operation, 0, len(order))
		for _, n := range order {
			out = append(out, by[n])
		}
		return out
	},
	Init: func() any { return state{} },
	Step: func(s, in, out any) (bool, any) {
		st, i, o := s.(state), in.(input), out.(output)
		switch i.op {
		case 'a':
			switch {
			case st.holder == "":
				return o.ok && o.holder == i.agent && o.token > st.last, state{i.agent, o.token, o.token}
			case st.holder == i.agent:
				return o.ok && o.token == st.token, st
			default:
				return !o.ok && o.holder == st.holder, st
			}
		case 'r':
			can := st.holder == i.agent && st.token == i.token
			if !can {
				return !o.ok, st
			}
			return o.ok, state{last: st.last}
		default:
			return o.holder == st.holder && o.token == st.token, st
		}
	},
	DescribeOperation: func(in, out any) string {
		i, o := in.(input), out.(output)
		return fmt.Sprintf("%c(%s,%s,%d) -> ok=%v %s/%d", i.op, i.name, i.agent, i.token, o.ok, o.holder, o.token)
	},
}

// CheckLinearizable runs every agent concurrently, each issuing a random
// mix of operations on cfg.Names, and fails t unless the recorded history
// is linearizable against the sequential specification of one lease per
// name. Any operation error other than a refusal (ErrHeld, ErrNotHeld,
// ErrStaleToken) fails the test too.
func CheckLinearizable(t testing.TB, agents []Agent, cfg Config) {
	t.Helper()
	if len(cfg.Names) == 0 {
		cfg.Names = []string{"a", "b", "c"}
	}
	if cfg.Ops <= 0 {
		cfg.Ops = 200
	}
	if cfg.TTL <= 0 {
		cfg.TTL = time.Minute
	}
	ctx := context.Background()
	start := time.Now()
	var (
		mu   sync.Mutex
		hist []porcupine.Operation
		errs []error
		wg   sync.WaitGroup
	)
	for ci, ag := range agents {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(ci), 42))
			tokens := map[string]uint64{}
			for range cfg.Ops {
				name := cfg.Names[rng.IntN(len(cfg.Names))]
				in := input{name: name, agent: ag.ID}
				var out output
				call := time.Since(start).Nanoseconds()
				var err error
				switch p := rng.IntN(10); {
				case p < 4:
					in.op = 'a'
					var g lease.Grant
					g, err = ag.Target.Acquire(ctx, name, cfg.TTL)
					var he *lease.HeldError
					switch {
					case err == nil:
						out = output{ok: true, holder: g.Holder, token: g.Token}
						tokens[name] = g.Token
					case errors.As(err, &he):
						out, err = output{holder: he.Holder}, nil
					}
				case p < 8:
					in.op = 'r'
					in.token = tokens[name]
					if in.token == 0 || rng.IntN(4) == 0 {
						in.token = 1 + uint64(rng.IntN(1000)) // usually someone else's or stale
					}
					err = ag.Target.Release(ctx, name, in.token)
					out.ok = err == nil
					if errors.Is(err, lease.ErrStaleToken) || errors.Is(err, lease.ErrNotHeld) {
						err = nil // a refusal; out.ok is false
					}
				default:
					in.op = 's'
					var st lease.Status
					st, err = ag.Target.Status(ctx, name)
					out = output{ok: st.IsLeased, holder: st.AgentID, token: st.Token}
				}
				ret := time.Since(start).Nanoseconds()
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("%s %c %s: %w", ag.ID, in.op, name, err))
				} else {
					hist = append(hist, porcupine.Operation{ClientId: ci, Input: in, Call: call, Output: out, Return: ret})
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d operations failed, first: %v", len(errs), errs[0])
	}
	res := porcupine.CheckOperationsTimeout(model, hist, time.Minute)
	switch res {
	case porcupine.Ok:
	case porcupine.Unknown:
		t.Fatalf("linearizability check of %d operations timed out", len(hist))
	default:
		t.Fatalf("history of %d operations is not linearizable", len(hist))
	}
}
