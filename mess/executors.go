package mess

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/meatspace-exchange/mess/storage"
)

// exchangeMeta is exchanges/{id}.json: who owns the exchange and its invites.
type exchangeMeta struct {
	ID        string       `json:"id"`
	Owner     string       `json:"owner"`
	CreatedAt time.Time    `json:"created_at"`
	Invites   []inviteRecd `json:"invites,omitempty"`
}

type inviteRecd struct {
	ID        string    `json:"id"`
	Hash      string    `json:"hash"`
	CreatedBy string    `json:"created_by"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	MaxUses   int       `json:"max_uses"`
	Uses      int       `json:"uses"`
}

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
	// APIKeyHash is the original server's field: base64 SHA-256 of the first key.
	APIKeyHash string   `json:"api_key_hash,omitempty"`
	APIKeys    []APIKey `json:"api_keys"`
}

// APIKey describes one of an executor's keys. Hash is never serialised by
// the HTTP layer.
type APIKey struct {
	ID        string    `json:"id"`
	Hash      string    `json:"hash"`
	CreatedAt time.Time `json:"created_at"`
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

type keyRef struct {
	exchange, executor, keyID string
	hash                      [32]byte
}

func executorKey(exchangeID, executorID string) string {
	return "executors/exchange=" + exchangeID + "/" + executorID + ".json"
}

func exchangeKey(exchangeID string) string { return "exchanges/" + exchangeID + ".json" }

func hashKey(key string) [32]byte { return sha256.Sum256([]byte(key)) }

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// newAPIKey returns a key mess_{exchange}_{32 hex chars: 128 random bits}.
func newAPIKey(exchangeID string) string { return "mess_" + exchangeID + "_" + randomHex(16) }

// Registration is a request to join an exchange.
type Registration struct {
	ExecutorID    string          `json:"executor_id"`
	DisplayName   string          `json:"display_name"`
	Capabilities  json.RawMessage `json:"capabilities"`
	Notifications json.RawMessage `json:"notifications"`
	Hooks         json.RawMessage `json:"hooks"`
	Preferences   json.RawMessage `json:"preferences"`
	// InviteToken is an invite issued by the exchange's owner.
	InviteToken string `json:"invite_token"`
	// RegistrationToken is the server-wide token, when the operator set one.
	RegistrationToken string `json:"registration_token"`
}

// RegisterResult is returned once; the key cannot be retrieved again.
type RegisterResult struct {
	ExecutorID string `json:"executor_id"`
	APIKey     string `json:"api_key"`
	Owner      bool   `json:"owner"`
	Message    string `json:"message"`
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

// Register adds an executor to an exchange. The first executor of an
// exchange creates it and becomes its owner; later ones need an invite, the
// server's registration token, or an open exchange.
func (s *Service) Register(ctx context.Context, exchangeID string, r Registration) (RegisterResult, error) {
	if err := s.checkOpen(); err != nil {
		return RegisterResult{}, err
	}
	if !ValidID(exchangeID) {
		return RegisterResult{}, errorf(ErrInvalid, "invalid exchange id: use 1-64 letters, digits, '_' or '-'")
	}
	if len(s.allowed) > 0 && !s.allowed[exchangeID] {
		return RegisterResult{}, errorf(ErrForbidden, "exchange %s is not allowed on this server", exchangeID)
	}
	if r.ExecutorID == "" {
		return RegisterResult{}, errorf(ErrInvalid, "executor_id required")
	}
	if !ValidID(r.ExecutorID) || r.ExecutorID == systemActor {
		return RegisterResult{}, errorf(ErrInvalid, "invalid executor_id: use 1-64 letters, digits, '_' or '-'")
	}
	if len(r.DisplayName) > 200 {
		return RegisterResult{}, errorf(ErrInvalid, "display_name longer than 200 bytes")
	}
	if err := s.validateProfile(r.Capabilities, r.Notifications, r.Hooks, r.Preferences); err != nil {
		return RegisterResult{}, err
	}
	ex := s.exchange(exchangeID, true)
	ex.execMu.Lock()
	defer ex.execMu.Unlock()

	ex.mu.RLock()
	_, exists := ex.executors[r.ExecutorID]
	meta := ex.meta
	ex.mu.RUnlock()
	if exists {
		return RegisterResult{}, errorf(ErrConflict, "Executor already registered")
	}
	now := s.now()
	owner := false
	var consume func() error
	switch {
	case meta == nil || meta.Owner == r.ExecutorID:
		// The first registrant creates the exchange (or finishes doing so
		// after a crash between the two writes).
		if meta == nil {
			m := &exchangeMeta{ID: exchangeID, Owner: r.ExecutorID, CreatedAt: now}
			b, _ := json.Marshal(m)
			v, err := s.store.Create(ctx, exchangeKey(exchangeID), b)
			if errors.Is(err, storage.ErrExists) {
				return RegisterResult{}, errorf(ErrConflict, "exchange was created concurrently; retry")
			} else if err != nil {
				return RegisterResult{}, fmt.Errorf("mess: create exchange: %w", err)
			}
			ex.mu.Lock()
			ex.meta, ex.metaVersion = m, v
			ex.mu.Unlock()
		}
		owner = true
	case s.cfg.OpenRegistration || s.openSet[exchangeID]:
	case s.cfg.RegistrationToken != "" && r.RegistrationToken != "" &&
		subtle.ConstantTimeCompare([]byte(s.cfg.RegistrationToken), []byte(r.RegistrationToken)) == 1:
	case r.InviteToken != "":
		var err error
		consume, err = s.checkInvite(ex, r.InviteToken, now)
		if err != nil {
			return RegisterResult{}, err
		}
	default:
		return RegisterResult{}, errorf(ErrForbidden, "registration in exchange %s requires an invite from its owner", exchangeID)
	}
	if consume != nil {
		if err := consume(); err != nil {
			return RegisterResult{}, err
		}
	}
	key := newAPIKey(exchangeID)
	h := hashKey(key)
	display := r.DisplayName
	if display == "" {
		display = r.ExecutorID
	}
	rec := &executorRec{Executor: Executor{
		ID:            r.ExecutorID,
		DisplayName:   display,
		Capabilities:  orDefault(r.Capabilities, "[]"),
		Notifications: orDefault(r.Notifications, "[]"),
		Hooks:         orDefault(r.Hooks, "{}"),
		Preferences:   orDefault(r.Preferences, "{}"),
		CreatedAt:     now,
		Owner:         owner,
		APIKeyHash:    base64.StdEncoding.EncodeToString(h[:]),
		APIKeys:       []APIKey{{ID: "k_" + randomHex(6), Hash: hex.EncodeToString(h[:]), CreatedAt: now}},
	}}
	b, _ := json.MarshalIndent(rec.Executor, "", "  ")
	v, err := s.store.Create(ctx, executorKey(exchangeID, r.ExecutorID), b)
	if errors.Is(err, storage.ErrExists) {
		return RegisterResult{}, errorf(ErrConflict, "Executor already registered")
	} else if err != nil {
		return RegisterResult{}, fmt.Errorf("mess: save executor: %w", err)
	}
	rec.version = v
	rec.caps = capabilityIDs(rec.Capabilities)
	s.addExecutor(ex, rec)
	s.logExecutorEvent(ctx, ex, EventExecutorRegistered, rec)
	return RegisterResult{
		ExecutorID: r.ExecutorID,
		APIKey:     key,
		Owner:      owner,
		Message:    "Save this API key - it cannot be retrieved again.",
	}, nil
}

func (s *Service) validateProfile(caps, notes, hooks, prefs json.RawMessage) error {
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
			return errorf(ErrInvalid, "%v", err)
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
	s.mu.Lock()
	for _, k := range rec.APIKeys {
		var h [32]byte
		if b, err := hex.DecodeString(k.Hash); err == nil && len(b) == 32 {
			copy(h[:], b)
			s.keys[h] = keyRef{exchange: ex.id, executor: rec.ID, keyID: k.ID, hash: h}
		}
	}
	s.mu.Unlock()
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

func (s *Service) checkInvite(ex *exchange, token string, now time.Time) (func() error, error) {
	h := hashKey(token)
	hs := hex.EncodeToString(h[:])
	ex.mu.RLock()
	meta := ex.meta
	ex.mu.RUnlock()
	if meta == nil {
		return nil, errorf(ErrForbidden, "invalid invite")
	}
	idx := -1
	for i, inv := range meta.Invites {
		if subtle.ConstantTimeCompare([]byte(inv.Hash), []byte(hs)) == 1 {
			idx = i
		}
	}
	if idx < 0 {
		return nil, errorf(ErrForbidden, "invalid invite")
	}
	inv := meta.Invites[idx]
	if !inv.ExpiresAt.IsZero() && now.After(inv.ExpiresAt) {
		return nil, errorf(ErrForbidden, "invite expired")
	}
	if inv.MaxUses > 0 && inv.Uses >= inv.MaxUses {
		return nil, errorf(ErrForbidden, "invite used up")
	}
	return func() error {
		return s.updateMeta(context.Background(), ex, func(m *exchangeMeta) error {
			m.Invites[idx].Uses++
			return nil
		})
	}, nil
}

// updateMeta rewrites the exchange record with compare-and-swap; the caller
// holds ex.execMu.
func (s *Service) updateMeta(ctx context.Context, ex *exchange, change func(*exchangeMeta) error) error {
	ex.mu.RLock()
	cur, ver := ex.meta, ex.metaVersion
	ex.mu.RUnlock()
	if cur == nil {
		return errorf(ErrNotFound, "exchange not found")
	}
	m := *cur
	m.Invites = slices.Clone(cur.Invites)
	if err := change(&m); err != nil {
		return err
	}
	b, _ := json.Marshal(&m)
	v, err := s.store.Update(ctx, exchangeKey(ex.id), b, ver)
	if err != nil {
		return fmt.Errorf("mess: save exchange: %w", err)
	}
	ex.mu.Lock()
	ex.meta, ex.metaVersion = &m, v
	ex.mu.Unlock()
	return nil
}

// InviteOptions shape an invite.
type InviteOptions struct {
	// MaxUses is how many registrations it admits. Zero means 1.
	MaxUses int `json:"max_uses"`
	// TTL is how long it is valid. Zero means 7 days.
	TTL time.Duration `json:"-"`
}

// Invite is an issued invite; Token is shown once.
type Invite struct {
	ID        string    `json:"id"`
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	MaxUses   int       `json:"max_uses"`
}

// CreateInvite issues an invite to the exchange. Only its owner may.
func (s *Service) CreateInvite(ctx context.Context, exchangeID, actorID string, opts InviteOptions) (Invite, error) {
	ex, err := s.loadExchangeForRead(exchangeID)
	if err != nil {
		return Invite{}, err
	}
	if opts.MaxUses < 0 || opts.MaxUses > 10000 {
		return Invite{}, errorf(ErrInvalid, "max_uses must be between 1 and 10000")
	}
	if opts.MaxUses == 0 {
		opts.MaxUses = 1
	}
	if opts.TTL <= 0 {
		opts.TTL = 7 * 24 * time.Hour
	}
	ex.execMu.Lock()
	defer ex.execMu.Unlock()
	ex.mu.RLock()
	isOwner := ex.meta != nil && ex.meta.Owner == actorID
	ex.mu.RUnlock()
	if !isOwner {
		return Invite{}, errorf(ErrForbidden, "only the exchange owner may invite")
	}
	now := s.now()
	token := "inv_" + randomHex(16)
	h := hashKey(token)
	inv := inviteRecd{ID: "i_" + randomHex(6), Hash: hex.EncodeToString(h[:]), CreatedBy: actorID, CreatedAt: now, ExpiresAt: now.Add(opts.TTL), MaxUses: opts.MaxUses}
	err = s.updateMeta(ctx, ex, func(m *exchangeMeta) error {
		// Drop invites that can no longer be used.
		m.Invites = slices.DeleteFunc(m.Invites, func(i inviteRecd) bool {
			return now.After(i.ExpiresAt) || (i.MaxUses > 0 && i.Uses >= i.MaxUses)
		})
		m.Invites = append(m.Invites, inv)
		return nil
	})
	if err != nil {
		return Invite{}, err
	}
	return Invite{ID: inv.ID, Token: token, ExpiresAt: inv.ExpiresAt, MaxUses: inv.MaxUses}, nil
}

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

// ExecutorConfig returns an executor's profile with its secrets, for
// delivering notifications and hooks inside the process. Never serve it.
func (s *Service) ExecutorConfig(exchangeID, executorID string) (Executor, bool) {
	ex := s.exchange(exchangeID, false)
	if ex == nil {
		return Executor{}, false
	}
	ex.mu.RLock()
	defer ex.mu.RUnlock()
	rec := ex.executors[executorID]
	if rec == nil {
		return Executor{}, false
	}
	out := rec.Executor
	out.APIKeyHash, out.APIKeys = "", nil
	return out, true
}

// ExecutorIDs lists the ids of an exchange's executors.
func (s *Service) ExecutorIDs(exchangeID string) []string {
	ex := s.exchange(exchangeID, false)
	if ex == nil {
		return nil
	}
	ex.mu.RLock()
	defer ex.mu.RUnlock()
	ids := make([]string, 0, len(ex.executors))
	for id := range ex.executors {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// IsExecutor reports whether id is registered in exchangeID. Unlike
// ExecutorConfig it shows nothing of the profile, so it is what to ask
// when only membership matters (who may receive mail, say).
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

// ExecutorCapabilities returns the capability ids of an executor.
func (s *Service) ExecutorCapabilities(exchangeID, executorID string) []string {
	ex := s.exchange(exchangeID, false)
	if ex == nil {
		return nil
	}
	ex.mu.RLock()
	defer ex.mu.RUnlock()
	if rec := ex.executors[executorID]; rec != nil {
		return rec.caps
	}
	return nil
}

// ProfileUpdate replaces the given profile fields; nil fields are kept.
type ProfileUpdate struct {
	DisplayName   *string         `json:"display_name"`
	Capabilities  json.RawMessage `json:"capabilities"`
	Notifications json.RawMessage `json:"notifications"`
	Hooks         json.RawMessage `json:"hooks"`
	Preferences   json.RawMessage `json:"preferences"`
}

// UpdateExecutor changes the caller's own profile.
func (s *Service) UpdateExecutor(ctx context.Context, exchangeID, actorID, executorID string, u ProfileUpdate) error {
	if actorID != executorID {
		return errorf(ErrForbidden, "Can only update your own profile")
	}
	if u.DisplayName != nil && (len(*u.DisplayName) > 200 || *u.DisplayName == "") {
		return errorf(ErrInvalid, "display_name must be 1 to 200 bytes")
	}
	if err := s.validateProfile(u.Capabilities, u.Notifications, u.Hooks, u.Preferences); err != nil {
		return err
	}
	return s.changeExecutor(ctx, exchangeID, executorID, func(e *Executor) {
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
	}, true)
}

// changeExecutor applies change to a copy of the profile, writes it with
// compare-and-swap and swaps it in.
func (s *Service) changeExecutor(ctx context.Context, exchangeID, executorID string, change func(*Executor), logEvent bool) error {
	ex, err := s.loadExchangeForRead(exchangeID)
	if err != nil {
		return err
	}
	return s.changeExecutorIn(ctx, ex, executorID, change, logEvent)
}

func (s *Service) changeExecutorIn(ctx context.Context, ex *exchange, executorID string, change func(*Executor), logEvent bool) error {
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
	change(&next.Executor)
	b, _ := json.MarshalIndent(next.Executor, "", "  ")
	v, err := s.store.Update(ctx, executorKey(exchangeID, executorID), b, old.version)
	if err != nil {
		return fmt.Errorf("mess: save executor: %w", err)
	}
	next.version = v
	next.caps = capabilityIDs(next.Capabilities)
	ex.mu.Lock()
	ex.executors[executorID] = next
	ex.mu.Unlock()
	// Re-index keys: drop the old executor's, add the new's.
	s.mu.Lock()
	for _, k := range old.APIKeys {
		if b, err := hex.DecodeString(k.Hash); err == nil && len(b) == 32 {
			delete(s.keys, [32]byte(b))
		}
	}
	for _, k := range next.APIKeys {
		if b, err := hex.DecodeString(k.Hash); err == nil && len(b) == 32 {
			s.keys[[32]byte(b)] = keyRef{exchange: exchangeID, executor: executorID, keyID: k.ID, hash: [32]byte(b)}
		}
	}
	s.mu.Unlock()
	if logEvent {
		s.logExecutorEvent(ctx, ex, EventExecutorUpdated, next)
	}
	return nil
}

// NewKey is a freshly issued key; Key is shown once.
type NewKey struct {
	ID      string   `json:"id"`
	Key     string   `json:"api_key"`
	Revoked []string `json:"revoked,omitempty"`
}

// CreateKey issues another key for the caller. With revokeOthers set
// (rotation) every other key of the caller stops working.
func (s *Service) CreateKey(ctx context.Context, exchangeID, actorID, executorID string, revokeOthers bool) (NewKey, error) {
	if actorID != executorID {
		return NewKey{}, errorf(ErrForbidden, "Can only manage your own keys")
	}
	key := newAPIKey(exchangeID)
	h := hashKey(key)
	nk := NewKey{ID: "k_" + randomHex(6), Key: key}
	err := s.changeExecutor(ctx, exchangeID, executorID, func(e *Executor) {
		if revokeOthers {
			for _, k := range e.APIKeys {
				nk.Revoked = append(nk.Revoked, k.ID)
			}
			e.APIKeys = nil
			e.APIKeyHash = ""
		}
		if len(e.APIKeys) >= 20 {
			e.APIKeys = e.APIKeys[1:]
		}
		e.APIKeys = append(e.APIKeys, APIKey{ID: nk.ID, Hash: hex.EncodeToString(h[:]), CreatedAt: s.now()})
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
	var outErr error
	err := s.changeExecutor(ctx, exchangeID, executorID, func(e *Executor) {
		i := slices.IndexFunc(e.APIKeys, func(k APIKey) bool { return k.ID == keyID })
		switch {
		case i < 0:
			outErr = errorf(ErrNotFound, "key not found")
		case len(e.APIKeys) == 1:
			outErr = errorf(ErrConflict, "cannot revoke the only key; create another first")
		default:
			if h, err := hex.DecodeString(e.APIKeys[i].Hash); err == nil && base64.StdEncoding.EncodeToString(h) == e.APIKeyHash {
				e.APIKeyHash = ""
			}
			e.APIKeys = slices.Delete(e.APIKeys, i, i+1)
		}
	}, false)
	if outErr != nil {
		return outErr
	}
	return err
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
			err := s.changeExecutorIn(ctx, ex, id, func(e *Executor) {}, false)
			if err != nil {
				s.log.Warn("save last_seen", "exchange", ex.id, "executor", id, "err", err)
			}
		}
	}
}
