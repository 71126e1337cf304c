package mess

// Registration and invites: who may join an exchange, and the exchange
// record (owner, invites) that decides it.

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
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

func exchangeKey(exchangeID string) string { return "exchanges/" + exchangeID + ".json" }

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

// Register adds an executor to an exchange. The first executor of an
// exchange creates it and becomes its owner; later ones need an invite, the
// server's registration token, or an open exchange.
func (s *Service) Register(ctx context.Context, exchangeID string, r Registration) (RegisterResult, error) {
	if err := s.checkOpen(); err != nil {
		return RegisterResult{}, err
	}
	if !ValidID(exchangeID) {
		return RegisterResult{}, errorf(ErrInvalid, "invalid exchange id: %s", idRule)
	}
	if len(s.allowed) > 0 && !s.allowed[exchangeID] {
		return RegisterResult{}, errorf(ErrForbidden, "exchange %s is not allowed on this server", exchangeID)
	}
	if r.ExecutorID == "" {
		return RegisterResult{}, errorf(ErrInvalid, "executor_id required")
	}
	if !ValidID(r.ExecutorID) || r.ExecutorID == systemActor {
		return RegisterResult{}, errorf(ErrInvalid, "invalid executor_id: %s", idRule)
	}
	if len(r.DisplayName) > 200 {
		return RegisterResult{}, errorf(ErrInvalid, "display_name longer than 200 bytes")
	}
	if err := s.validateProfile(r.Capabilities, r.Notifications, r.Hooks, r.Preferences); err != nil {
		return RegisterResult{}, err
	}
	ex := s.exchange(exchangeID, false)
	if ex == nil {
		// Refused before it takes any memory.
		if err := s.checkExchangeCap(); err != nil {
			return RegisterResult{}, err
		}
		ex = s.exchange(exchangeID, true)
	}
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
			if err := s.checkExchangeCap(); err != nil {
				return RegisterResult{}, err
			}
			s.nExchanges.Add(1)
			m := &exchangeMeta{ID: exchangeID, Owner: r.ExecutorID, CreatedAt: now}
			b, _ := json.Marshal(m)
			var v string
			err := s.claim(ctx, exchangeID)
			if err == nil {
				v, err = s.store.Create(ctx, exchangeKey(exchangeID), b)
			}
			if err == nil {
				err = s.confirm(ctx, exchangeID)
			}
			if err != nil {
				s.nExchanges.Add(-1)
			}
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
	if err := s.mayUpdate(); err != nil {
		return RegisterResult{}, fmt.Errorf("mess: save executor: %w", err)
	}
	v, err := s.store.Create(ctx, executorKey(exchangeID, r.ExecutorID), b)
	if err == nil {
		err = s.confirm(ctx, exchangeID)
	}
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

// checkExchangeCap refuses a new exchange once the server holds
// Config.MaxExchanges. The count may pass the cap by the few exchanges
// being created at the same instant.
func (s *Service) checkExchangeCap() error {
	if s.cfg.MaxExchanges > 0 && s.nExchanges.Load() >= int64(s.cfg.MaxExchanges) {
		return errorf(ErrRateLimited, "this server holds its limit of %d exchanges; no more can be created", s.cfg.MaxExchanges).
			with("retry_after", 3600)
	}
	return nil
}

// credentialed reports whether r presents what admits it to an existing
// exchange on its own: the registration token or a usable invite. Other
// registrations (creating an exchange, joining an open one) are anonymous,
// and the HTTP layer limits them per client address.
func (s *Service) credentialed(exchangeID string, r Registration) bool {
	if s.cfg.RegistrationToken != "" && r.RegistrationToken != "" &&
		subtle.ConstantTimeCompare([]byte(s.cfg.RegistrationToken), []byte(r.RegistrationToken)) == 1 {
		return true
	}
	if r.InviteToken == "" || !ValidID(exchangeID) {
		return false
	}
	ex := s.exchange(exchangeID, false)
	if ex == nil {
		return false
	}
	_, err := s.checkInvite(ex, r.InviteToken, s.now())
	return err == nil
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
	if err := s.mayUpdate(); err != nil {
		return fmt.Errorf("mess: save exchange: %w", err)
	}
	v, err := s.store.Update(ctx, exchangeKey(ex.id), b, ver)
	if errors.Is(err, storage.ErrVersionMismatch) {
		// Changed by a replaced writer (see errChangedBehind).
		var obj storage.Object
		if obj, err = s.store.Get(ctx, exchangeKey(ex.id)); err == nil {
			var m exchangeMeta
			if err = json.Unmarshal(obj.Data, &m); err == nil {
				ex.mu.Lock()
				ex.meta, ex.metaVersion = &m, obj.Version
				ex.mu.Unlock()
				err = errChangedBehind
			}
		}
	}
	if err == nil {
		err = s.confirm(ctx, ex.id)
	}
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
	// TTL is how long it is valid, at most a year. Zero means 7 days.
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
	if opts.TTL < 0 || opts.TTL > maxInviteTTL {
		return Invite{}, errorf(ErrInvalid, "an invite lasts at most a year")
	}
	if opts.TTL == 0 {
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

// InviteInfo describes an issued invite without its token, which is shown
// only once, when the invite is created.
type InviteInfo struct {
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	MaxUses   int       `json:"max_uses"`
	Uses      int       `json:"uses"`
}

// ownerMeta returns the exchange record if actorID owns the exchange.
func ownerMeta(ex *exchange, actorID, doing string) (*exchangeMeta, error) {
	ex.mu.RLock()
	meta := ex.meta
	ex.mu.RUnlock()
	if meta == nil || meta.Owner != actorID {
		return nil, errorf(ErrForbidden, "only the exchange owner may %s", doing)
	}
	return meta, nil
}

// ListInvites lists the exchange's invites, oldest first, including those
// expired or used up and not yet dropped. Only its owner may.
func (s *Service) ListInvites(ctx context.Context, exchangeID, actorID string) ([]InviteInfo, error) {
	ex, err := s.loadExchangeForRead(exchangeID)
	if err != nil {
		return nil, err
	}
	meta, err := ownerMeta(ex, actorID, "list invites")
	if err != nil {
		return nil, err
	}
	out := make([]InviteInfo, 0, len(meta.Invites))
	for _, i := range meta.Invites {
		out = append(out, InviteInfo{ID: i.ID, CreatedAt: i.CreatedAt, ExpiresAt: i.ExpiresAt, MaxUses: i.MaxUses, Uses: i.Uses})
	}
	return out, nil
}

// RevokeInvite deletes an invite, so it admits nobody more. Only the
// exchange's owner may; the change is durable when it returns.
func (s *Service) RevokeInvite(ctx context.Context, exchangeID, actorID, inviteID string) error {
	ex, err := s.loadExchangeForRead(exchangeID)
	if err != nil {
		return err
	}
	ex.execMu.Lock()
	defer ex.execMu.Unlock()
	if _, err := ownerMeta(ex, actorID, "revoke invites"); err != nil {
		return err
	}
	return s.updateMeta(ctx, ex, func(m *exchangeMeta) error {
		n := len(m.Invites)
		m.Invites = slices.DeleteFunc(m.Invites, func(i inviteRecd) bool { return i.ID == inviteID })
		if len(m.Invites) == n {
			return errorf(ErrNotFound, "invite not found")
		}
		return nil
	})
}
