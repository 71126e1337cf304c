package mess

// Operator actions: what the server's operator may do to any exchange
// without being one of its members (messd admin). They skip the checks of
// who is asking, never the checks of what is asked, and are durable like
// every other change.

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/meatspace-exchange/mess/internal/journal"
)

// ExchangeInfo summarises an exchange for its operator.
type ExchangeInfo struct {
	ID        string    `json:"id"`
	Owner     string    `json:"owner"`
	CreatedAt time.Time `json:"created_at"`
	Executors int       `json:"executors"`
}

// OwnerKey is a key issued to an exchange's owner by its operator; Key is
// shown once.
type OwnerKey struct {
	ExchangeID string `json:"exchange_id"`
	ExecutorID string `json:"executor_id"`
	ID         string `json:"id"`
	Key        string `json:"api_key"`
}

// AdminExchanges lists every exchange with a record, sorted by id.
func (s *Service) AdminExchanges(ctx context.Context) ([]ExchangeInfo, error) {
	ids, err := s.Exchanges(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]ExchangeInfo, 0, len(ids))
	for _, id := range ids {
		ex := s.exchange(id, false)
		if ex == nil {
			continue
		}
		ex.mu.RLock()
		if ex.meta != nil {
			out = append(out, ExchangeInfo{ID: id, Owner: ex.meta.Owner, CreatedAt: ex.meta.CreatedAt, Executors: len(ex.executors)})
		}
		ex.mu.RUnlock()
	}
	return out, nil
}

// AdminExecutors lists an exchange's executors with their key ids (never
// hashes) and redacted secrets, sorted by id: what an operator needs to
// pick a key to revoke.
func (s *Service) AdminExecutors(ctx context.Context, exchangeID string) ([]Executor, error) {
	pub, err := s.Executors(ctx, exchangeID)
	if err != nil {
		return nil, err
	}
	out := make([]Executor, 0, len(pub))
	for _, p := range pub {
		e, err := s.Executor(ctx, exchangeID, p.ID)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// AdminOwnerKey issues a new key to the exchange's owner, so an owner who
// lost or had revoked every key gets back in. The owner's other keys are
// kept. An owner holding the most keys allowed gets ErrConflict: revoke
// one with AdminRevokeKey first.
func (s *Service) AdminOwnerKey(ctx context.Context, exchangeID string) (OwnerKey, error) {
	owner, err := s.owner(exchangeID)
	if err != nil {
		return OwnerKey{}, err
	}
	key := newAPIKey(exchangeID)
	h := hashKey(key)
	ok := OwnerKey{ExchangeID: exchangeID, ExecutorID: owner, ID: "k_" + randomHex(6), Key: key}
	err = s.changeExecutor(ctx, exchangeID, owner, func(e *Executor) error {
		if len(e.APIKeys) >= maxKeys {
			return errorf(ErrConflict, "the owner %s holds %d keys, the most allowed; revoke one first", owner, maxKeys)
		}
		e.APIKeys = append(e.APIKeys, APIKey{ID: ok.ID, Hash: hex.EncodeToString(h[:]), CreatedAt: s.now()})
		return nil
	}, false)
	if err != nil {
		return OwnerKey{}, err
	}
	return ok, nil
}

// AdminInvite issues an invite to the exchange as its owner would.
func (s *Service) AdminInvite(ctx context.Context, exchangeID string, opts InviteOptions) (Invite, error) {
	owner, err := s.owner(exchangeID)
	if err != nil {
		return Invite{}, err
	}
	return s.CreateInvite(ctx, exchangeID, owner, opts)
}

// AdminRevokeKey revokes any key of any executor. Unlike RevokeKey it may
// revoke an executor's last key: shutting out a leaked key matters more
// than keeping its holder in, who can get a new one from the operator.
func (s *Service) AdminRevokeKey(ctx context.Context, exchangeID, executorID, keyID string) error {
	if !ValidID(executorID) {
		return errorf(ErrInvalid, "invalid executor id")
	}
	if keyID == "" {
		return errorf(ErrInvalid, "a key id is required")
	}
	return s.changeExecutor(ctx, exchangeID, executorID, func(e *Executor) error {
		i := slices.IndexFunc(e.APIKeys, func(k APIKey) bool { return k.ID == keyID })
		if i < 0 {
			return errorf(ErrNotFound, "key %q not found for executor %s", keyID, executorID)
		}
		e.APIKeys = slices.Delete(e.APIKeys, i, i+1)
		if len(e.APIKeys) == 0 {
			e.APIKeyHash = ""
		}
		return nil
	}, false)
}

// ExportEvents writes every durable event of the exchange to w as JSON
// lines, in the order they were committed: the lines of the event log, as
// stored. Lines that do not parse (a torn write) are left out, as replay
// leaves them out.
func (s *Service) ExportEvents(ctx context.Context, exchangeID string, w io.Writer) error {
	if _, err := s.loadExchangeForRead(exchangeID); err != nil {
		return err
	}
	return journal.Replay(ctx, s.store, journal.ReplayConfig{
		Prefix: "events/exchange=" + exchangeID + "/",
		Decode: func(key string, data []byte) (any, error) {
			lines, _ := journal.Lines(data)
			out := make([]byte, 0, len(data))
			for _, l := range lines {
				if ev, _, err := decodeLine(l); err == nil && ev.ExchangeID == exchangeID {
					out = append(append(out, l...), '\n')
				}
			}
			return out, nil
		},
		Apply: func(key string, v any) error {
			if _, err := w.Write(v.([]byte)); err != nil {
				return fmt.Errorf("mess: export: %w", err)
			}
			return nil
		},
	})
}

// owner returns the id of the exchange's owner.
func (s *Service) owner(exchangeID string) (string, error) {
	ex, err := s.loadExchangeForRead(exchangeID)
	if err != nil {
		return "", err
	}
	ex.mu.RLock()
	defer ex.mu.RUnlock()
	if ex.meta == nil || ex.meta.Owner == "" {
		return "", errorf(ErrNotFound, "exchange %s has no owner record", exchangeID)
	}
	return ex.meta.Owner, nil
}
