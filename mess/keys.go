package mess

// API keys: issuing, rotating and revoking them, and resolving a key to its
// executor. Keys are stored only as SHA-256 hashes.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"slices"
	"strings"
	"time"
)

// APIKey describes one of an executor's keys. Hash is never serialised by
// the HTTP layer.
type APIKey struct {
	ID        string    `json:"id"`
	Hash      string    `json:"hash"`
	CreatedAt time.Time `json:"created_at"`
}

type keyRef struct {
	exchange, executor, keyID string
	hash                      [32]byte
}

// reindexKeys swaps old's keys (nil: none) for next's in the index that
// Authenticate looks keys up in, and ends the watches of every key that
// left it.
func (s *Service) reindexKeys(exchangeID string, old, next *executorRec) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old != nil {
		for _, k := range old.APIKeys {
			if h, ok := decodeHash(k.Hash); ok {
				delete(s.keys, h)
			}
		}
	}
	for _, k := range next.APIKeys {
		if h, ok := decodeHash(k.Hash); ok {
			s.keys[h] = keyRef{exchange: exchangeID, executor: next.ID, keyID: k.ID, hash: h}
		}
	}
	if old != nil {
		for _, k := range old.APIKeys {
			if h, ok := decodeHash(k.Hash); ok {
				if _, kept := s.keys[h]; !kept {
					s.endWatchesLocked(h)
				}
			}
		}
	}
}

// keyWatch is one WatchKey call's channel.
type keyWatch struct{ revoked chan struct{} }

// closedChan is what WatchKey returns for a key that admits nobody now.
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// WatchKey watches an API key of exchangeID for as long as a session,
// stream or wait it authenticated lasts. The channel is closed as soon as
// the key stops admitting its holder: revoked, or rotated away by
// CreateKey with revokeOthers. It is closed already when the key does not
// admit anyone in exchangeID now, so a key revoked between Authenticate
// and WatchKey is caught too. stop releases the watch; call it when the
// session ends. Watching costs no goroutine: the channel is closed by the
// change to the key index itself.
//
// Other services find it on their Authenticator (an ExecutorAuth) with a
// type assertion to
//
//	interface{ WatchKey(exchangeID, key string) (<-chan struct{}, func()) }
func (s *Service) WatchKey(exchangeID, key string) (revoked <-chan struct{}, stop func()) {
	if key == "" || s.closed.Load() {
		return closedChan, func() {}
	}
	h := hashKey(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	ref, ok := s.keys[h]
	if !ok || ref.exchange != exchangeID {
		return closedChan, func() {}
	}
	w := &keyWatch{revoked: make(chan struct{})}
	ws := s.watches[h]
	if ws == nil {
		ws = map[*keyWatch]struct{}{}
		s.watches[h] = ws
	}
	ws[w] = struct{}{}
	return w.revoked, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if ws := s.watches[h]; ws != nil {
			delete(ws, w)
			if len(ws) == 0 {
				delete(s.watches, h)
			}
		}
	}
}

// endWatchesLocked closes the watches of a key hash that no longer
// admits anyone; s.mu is held for writing.
func (s *Service) endWatchesLocked(h [32]byte) {
	for w := range s.watches[h] {
		close(w.revoked)
	}
	delete(s.watches, h)
}

// watchCount is how many watches are open, for tests that look for leaks.
func (s *Service) watchCount() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	for _, ws := range s.watches {
		n += len(ws)
	}
	return n
}

// decodeHash reads a stored key hash; a damaged one matches no key.
func decodeHash(s string) ([32]byte, bool) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		return [32]byte{}, false
	}
	return [32]byte(b), true
}

func hashKey(key string) [32]byte { return sha256.Sum256([]byte(key)) }

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// KeyExchange returns the exchange an API key was issued in. Keys are
// mess_{exchange}_{32 hex}; exchange ids may hold '_', so the exchange is
// everything between the leading "mess_" and the last '_'. It says nothing
// of whether the key is valid: Authenticate does.
func KeyExchange(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, "mess_")
	if !ok {
		return "", false
	}
	i := strings.LastIndexByte(rest, '_')
	if i <= 0 || i == len(rest)-1 || !ValidID(rest[:i]) {
		return "", false
	}
	return rest[:i], true
}

// newAPIKey returns a key mess_{exchange}_{32 hex chars: 128 random bits}.
func newAPIKey(exchangeID string) string { return "mess_" + exchangeID + "_" + randomHex(16) }

// Authenticate resolves an API key to its executor within exchangeID. It
// returns ErrUnauthorized for unknown or revoked keys and ErrForbidden for a
// key of another exchange.
func (s *Service) Authenticate(ctx context.Context, exchangeID, apiKey string) (string, error) {
	if err := s.checkOpen(); err != nil {
		return "", err
	}
	if apiKey == "" {
		return "", errorf(ErrUnauthorized, "Unauthorized")
	}
	h := hashKey(apiKey)
	s.mu.RLock()
	ref, ok := s.keys[h]
	s.mu.RUnlock()
	if !ok || subtle.ConstantTimeCompare(ref.hash[:], h[:]) != 1 {
		return "", errorf(ErrUnauthorized, "Invalid API key")
	}
	if ref.exchange != exchangeID {
		return "", errorf(ErrForbidden, "Forbidden")
	}
	if ex := s.exchange(exchangeID, false); ex != nil {
		ex.mu.RLock()
		rec := ex.executors[ref.executor]
		ex.mu.RUnlock()
		if rec != nil {
			rec.lastSeen.Store(s.now().UnixMilli())
		}
	}
	return ref.executor, nil
}

// maxKeys is how many keys one executor may hold.
const maxKeys = 20

// NewKey is a freshly issued key; Key is shown once.
type NewKey struct {
	ID      string   `json:"id"`
	Key     string   `json:"api_key"`
	Revoked []string `json:"revoked,omitempty"`
}

// CreateKey issues another key for the caller. With revokeOthers set
// (rotation) every other key of the caller stops working. An executor holds
// at most 20 keys; past that CreateKey is ErrConflict and revokes nothing.
func (s *Service) CreateKey(ctx context.Context, exchangeID, actorID, executorID string, revokeOthers bool) (NewKey, error) {
	if actorID != executorID {
		return NewKey{}, errorf(ErrForbidden, "Can only manage your own keys")
	}
	key := newAPIKey(exchangeID)
	h := hashKey(key)
	nk := NewKey{ID: "k_" + randomHex(6), Key: key}
	err := s.changeExecutor(ctx, exchangeID, executorID, func(e *Executor) error {
		if revokeOthers {
			for _, k := range e.APIKeys {
				nk.Revoked = append(nk.Revoked, k.ID)
			}
			e.APIKeys = nil
			e.APIKeyHash = ""
		}
		if len(e.APIKeys) >= maxKeys {
			// Dropping the oldest could revoke the very key making the call.
			return errorf(ErrConflict, "an executor may hold at most %d keys; revoke one first, or rotate with revoke_others", maxKeys).
				with("limit", maxKeys)
		}
		e.APIKeys = append(e.APIKeys, APIKey{ID: nk.ID, Hash: hex.EncodeToString(h[:]), CreatedAt: s.now()})
		return nil
	}, false)
	if err != nil {
		return NewKey{}, err
	}
	return nk, nil
}

// RevokeKey revokes one of the caller's keys. Revoking the last key is
// refused, so an executor cannot lock itself out by accident.
func (s *Service) RevokeKey(ctx context.Context, exchangeID, actorID, executorID, keyID string) error {
	if actorID != executorID {
		return errorf(ErrForbidden, "Can only manage your own keys")
	}
	return s.changeExecutor(ctx, exchangeID, executorID, func(e *Executor) error {
		i := slices.IndexFunc(e.APIKeys, func(k APIKey) bool { return k.ID == keyID })
		switch {
		case i < 0:
			return errorf(ErrNotFound, "key not found")
		case len(e.APIKeys) == 1:
			return errorf(ErrConflict, "cannot revoke the only key; create another first")
		}
		if h, err := hex.DecodeString(e.APIKeys[i].Hash); err == nil && base64.StdEncoding.EncodeToString(h) == e.APIKeyHash {
			e.APIKeyHash = ""
		}
		e.APIKeys = slices.Delete(e.APIKeys, i, i+1)
		return nil
	}, false)
}
