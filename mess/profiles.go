package mess

// Executor profiles: what an executor says about itself, who sees which
// part of it, and how changes reach storage.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/meatspace-exchange/mess/internal/httpx"
	"github.com/meatspace-exchange/mess/storage"
)

// Executor is an executor's profile as stored in
// executors/exchange={id}/{executor}.json. Key hashes never leave the package.
type Executor struct {
	ID            string          `json:"id"`
	DisplayName   string          `json:"display_name"`
	Capabilities  json.RawMessage `json:"capabilities"`
	Notifications json.RawMessage `json:"notifications"`
	Hooks         json.RawMessage `json:"hooks"`
	Preferences   json.RawMessage `json:"preferences"`
	CreatedAt     time.Time       `json:"created_at"`
	LastSeen      *time.Time      `json:"last_seen"`
	Owner         bool            `json:"owner,omitempty"`
	// APIKeyHash is the MESS protocol v1 profile field: base64 SHA-256 of
	// the first key.
	APIKeyHash string   `json:"api_key_hash,omitempty"`
	APIKeys    []APIKey `json:"api_keys"`
}

// PublicExecutor is what other members of an exchange see.
type PublicExecutor struct {
	ID           string          `json:"id"`
	DisplayName  string          `json:"display_name"`
	Capabilities json.RawMessage `json:"capabilities"`
	LastSeen     *time.Time      `json:"last_seen"`
	CreatedAt    time.Time       `json:"created_at"`
	Owner        bool            `json:"owner,omitempty"`
}

type executorRec struct {
	Executor
	version  string
	lastSeen atomic.Int64 // unix ms, newer than Executor.LastSeen when dirty
	caps     []string
}

func executorKey(exchangeID, executorID string) string {
	return "executors/exchange=" + exchangeID + "/" + executorID + ".json"
}

func checkJSONKind(name string, raw json.RawMessage, open byte) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	if raw[0] != open {
		kind := "an array"
		if open == '{' {
			kind = "an object"
		}
		return errorf(ErrInvalid, "%s must be %s", name, kind)
	}
	return nil
}

func orDefault(raw json.RawMessage, def string) json.RawMessage {
	if len(raw) == 0 || string(raw) == "null" {
		return json.RawMessage(def)
	}
	return raw
}

func (s *Service) validateProfile(caps, notes, hooks, prefs json.RawMessage) error {
	if n := len(caps) + len(notes) + len(hooks) + len(prefs); n > s.cfg.MaxMessageBytes {
		return errorf(ErrTooLarge, "a profile may hold at most %d bytes; this one holds %d", s.cfg.MaxMessageBytes, n).
			with("limit", s.cfg.MaxMessageBytes)
	}
	if err := checkJSONKind("capabilities", caps, '['); err != nil {
		return err
	}
	if err := checkJSONKind("notifications", notes, '['); err != nil {
		return err
	}
	if err := checkJSONKind("hooks", hooks, '{'); err != nil {
		return err
	}
	if err := checkJSONKind("preferences", prefs, '{'); err != nil {
		return err
	}
	if s.cfg.ValidateProfile != nil {
		if err := s.cfg.ValidateProfile(notes, hooks, prefs); err != nil {
			if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
				// Its text names Go types; say it in JSON's terms.
				return errorf(ErrInvalid, "invalid notifications, hooks or preferences: %s", httpx.TypeErrorMessage(te))
			}
			msg := err.Error()
			if i := strings.Index(msg, "json: "); i >= 0 {
				// encoding/json's words, quoted into the validator's, name
				// Go types.
				msg = msg[:i] + "a member has the wrong JSON type"
			}
			return errorf(ErrInvalid, "%s", msg)
		}
	}
	return nil
}

// capabilityIDs returns the ids of capabilities given as strings or as
// single-key {id: metadata} objects.
func capabilityIDs(raw json.RawMessage) []string {
	r := Request{Requires: raw}
	ids, _ := r.RequiredCapabilities()
	return ids
}

func (s *Service) addExecutor(ex *exchange, rec *executorRec) {
	ex.mu.Lock()
	ex.executors[rec.ID] = rec
	ex.mu.Unlock()
	s.reindexKeys(ex.id, nil, rec)
}

// logExecutorEvent records a profile change in the event log. The profile
// file is already durable and is the source of truth for executors, so a
// failure here is logged rather than undoing the change.
func (s *Service) logExecutorEvent(ctx context.Context, ex *exchange, typ string, rec *executorRec) {
	ev, err := s.newEvent(ex, "", typ, rec.ID, 0, s.now(), executorPayload{DisplayName: rec.DisplayName, Capabilities: rec.Capabilities})
	if err == nil {
		err = s.commit(ctx, ex, []Event{ev}, []any{nil})
	}
	if err != nil {
		s.log.Warn("log executor event", "exchange", ex.id, "executor", rec.ID, "err", err)
	}
}

func (rec *executorRec) public() PublicExecutor {
	return PublicExecutor{ID: rec.ID, DisplayName: rec.DisplayName, Capabilities: rec.Capabilities, LastSeen: rec.seen(), CreatedAt: rec.CreatedAt, Owner: rec.Owner}
}

func (rec *executorRec) seen() *time.Time {
	if ms := rec.lastSeen.Load(); ms != 0 {
		t := time.UnixMilli(ms).UTC()
		if rec.LastSeen == nil || t.After(*rec.LastSeen) {
			return &t
		}
	}
	return rec.LastSeen
}

// Executors lists an exchange's executors as other members see them.
func (s *Service) Executors(ctx context.Context, exchangeID string) ([]PublicExecutor, error) {
	ex, err := s.loadExchangeForRead(exchangeID)
	if err != nil {
		return nil, err
	}
	ex.mu.RLock()
	defer ex.mu.RUnlock()
	out := make([]PublicExecutor, 0, len(ex.executors))
	for _, rec := range ex.executors {
		out = append(out, rec.public())
	}
	slices.SortFunc(out, func(a, b PublicExecutor) int {
		if a.ID < b.ID {
			return -1
		}
		return 1
	})
	return out, nil
}

// Executor returns the profile of an executor with key hashes removed and
// secrets in notification and hook configs redacted. Callers decide who may
// see it (the HTTP layer: the executor itself).
func (s *Service) Executor(ctx context.Context, exchangeID, executorID string) (Executor, error) {
	ex, err := s.loadExchangeForRead(exchangeID)
	if err != nil {
		return Executor{}, err
	}
	ex.mu.RLock()
	rec := ex.executors[executorID]
	ex.mu.RUnlock()
	if rec == nil {
		return Executor{}, errorf(ErrNotFound, "Executor not found")
	}
	out := rec.Executor
	out.LastSeen = rec.seen()
	out.APIKeyHash = ""
	out.Notifications = redactJSON(out.Notifications)
	out.Hooks = redactJSON(out.Hooks)
	out.APIKeys = make([]APIKey, len(rec.APIKeys))
	for i, k := range rec.APIKeys {
		out.APIKeys[i] = APIKey{ID: k.ID, CreatedAt: k.CreatedAt}
	}
	return out, nil
}

// IsExecutor reports whether id is registered in exchangeID. It shows
// nothing of the profile, so it is what to ask when only membership
// matters (who may receive mail, say).
func (s *Service) IsExecutor(ctx context.Context, exchangeID, id string) (bool, error) {
	if err := s.checkOpen(); err != nil {
		return false, err
	}
	ex := s.exchange(exchangeID, false)
	if ex == nil {
		return false, nil
	}
	ex.mu.RLock()
	defer ex.mu.RUnlock()
	return ex.executors[id] != nil, nil
}

// ProfileUpdate replaces the given profile fields; nil fields are kept.
type ProfileUpdate struct {
	DisplayName   *string         `json:"display_name"`
	Capabilities  json.RawMessage `json:"capabilities"`
	Notifications json.RawMessage `json:"notifications"`
	Hooks         json.RawMessage `json:"hooks"`
	Preferences   json.RawMessage `json:"preferences"`
}

// UpdateExecutor changes the caller's own profile. Notifications and hooks
// replace the stored ones whole, but a secret sent back as Redacted (as
// Executor shows it) keeps its stored value; a Redacted value with nothing
// stored at its place is ErrInvalid.
func (s *Service) UpdateExecutor(ctx context.Context, exchangeID, actorID, executorID string, u ProfileUpdate) error {
	if actorID != executorID {
		return errorf(ErrForbidden, "Can only update your own profile")
	}
	if u.DisplayName != nil && (len(*u.DisplayName) > 200 || *u.DisplayName == "") {
		return errorf(ErrInvalid, "display_name must be 1 to 200 bytes")
	}
	return s.changeExecutor(ctx, exchangeID, executorID, func(e *Executor) error {
		// Secrets sent back as GET showed them (redacted) are kept.
		var err error
		if u.Notifications, err = keepSecrets("notifications", u.Notifications, e.Notifications); err != nil {
			return err
		}
		if u.Hooks, err = keepSecrets("hooks", u.Hooks, e.Hooks); err != nil {
			return err
		}
		if err := s.validateProfile(u.Capabilities, u.Notifications, u.Hooks, u.Preferences); err != nil {
			return err
		}
		if u.DisplayName != nil {
			e.DisplayName = *u.DisplayName
		}
		if len(u.Capabilities) > 0 {
			e.Capabilities = orDefault(u.Capabilities, "[]")
		}
		if len(u.Notifications) > 0 {
			e.Notifications = orDefault(u.Notifications, "[]")
		}
		if len(u.Hooks) > 0 {
			e.Hooks = orDefault(u.Hooks, "{}")
		}
		if len(u.Preferences) > 0 {
			e.Preferences = orDefault(u.Preferences, "{}")
		}
		return nil
	}, true)
}

// changeExecutor applies change to a copy of the profile, writes it with
// compare-and-swap and swaps it in. An error from change leaves the
// profile as it was.
func (s *Service) changeExecutor(ctx context.Context, exchangeID, executorID string, change func(*Executor) error, logEvent bool) error {
	ex, err := s.loadExchangeForRead(exchangeID)
	if err != nil {
		return err
	}
	return s.changeExecutorIn(ctx, ex, executorID, change, logEvent)
}

func (s *Service) changeExecutorIn(ctx context.Context, ex *exchange, executorID string, change func(*Executor) error, logEvent bool) error {
	exchangeID := ex.id
	ex.execMu.Lock()
	defer ex.execMu.Unlock()
	ex.mu.RLock()
	old := ex.executors[executorID]
	ex.mu.RUnlock()
	if old == nil {
		return errorf(ErrNotFound, "Executor not found")
	}
	next := &executorRec{Executor: old.Executor}
	next.APIKeys = slices.Clone(old.APIKeys)
	next.LastSeen = old.seen()
	next.lastSeen.Store(old.lastSeen.Load())
	if err := change(&next.Executor); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(next.Executor, "", "  ")
	if err := s.mayUpdate(); err != nil {
		return fmt.Errorf("mess: save executor: %w", err)
	}
	v, err := s.store.Update(ctx, executorKey(exchangeID, executorID), b, old.version)
	if errors.Is(err, storage.ErrVersionMismatch) {
		err = s.reloadExecutor(ctx, ex, old)
	}
	if err == nil {
		err = s.confirm(ctx, exchangeID)
	}
	if err != nil {
		return fmt.Errorf("mess: save executor: %w", err)
	}
	next.version = v
	next.caps = capabilityIDs(next.Capabilities)
	ex.mu.Lock()
	ex.executors[executorID] = next
	ex.mu.Unlock()
	s.reindexKeys(exchangeID, old, next)
	if logEvent {
		s.logExecutorEvent(ctx, ex, EventExecutorUpdated, next)
	}
	return nil
}

// reloadExecutor puts the stored profile of old's executor in its place
// after an update found the record changed by another process, and
// returns errChangedBehind.
func (s *Service) reloadExecutor(ctx context.Context, ex *exchange, old *executorRec) error {
	obj, err := s.store.Get(ctx, executorKey(ex.id, old.ID))
	if err != nil {
		return err
	}
	var e Executor
	if err := json.Unmarshal(obj.Data, &e); err != nil || e.ID != old.ID {
		return fmt.Errorf("unreadable executor record: %v", err)
	}
	rec := &executorRec{Executor: e, version: obj.Version, caps: capabilityIDs(e.Capabilities)}
	rec.lastSeen.Store(old.lastSeen.Load())
	ex.mu.Lock()
	ex.executors[old.ID] = rec
	ex.mu.Unlock()
	s.reindexKeys(ex.id, old, rec)
	return errChangedBehind
}

// flushLastSeen writes last_seen of executors seen since their profile was
// last written. It runs periodically and at Close.
func (s *Service) flushLastSeen(ctx context.Context) {
	s.mu.RLock()
	exs := make([]*exchange, 0, len(s.exchanges))
	for _, ex := range s.exchanges {
		exs = append(exs, ex)
	}
	s.mu.RUnlock()
	for _, ex := range exs {
		ex.mu.RLock()
		var dirty []string
		for id, rec := range ex.executors {
			if ms := rec.lastSeen.Load(); ms != 0 && (rec.LastSeen == nil || rec.LastSeen.UnixMilli() < ms) {
				dirty = append(dirty, id)
			}
		}
		ex.mu.RUnlock()
		for _, id := range dirty {
			err := s.changeExecutorIn(ctx, ex, id, func(e *Executor) error { return nil }, false)
			if err != nil {
				s.log.Warn("save last_seen", "exchange", ex.id, "executor", id, "err", err)
			}
		}
	}
}
