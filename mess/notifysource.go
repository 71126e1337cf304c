package mess

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
)

// DeliveryProfile is the part of an executor's profile that a notifier
// needs to tell the executor about requests and to fire its hooks. Its
// channels and hooks carry the credentials deliveries need (webhook URLs,
// tokens), so it is for use inside the process and never to be served. It
// carries no API key or key hash. Its slices are shared with the service:
// read them, never write into them.
type DeliveryProfile struct {
	ExecutorID  string
	DisplayName string
	// Capabilities are the ids of the executor's capabilities, which a
	// request's requires must all be among for the executor to hear of it.
	Capabilities  []string
	Notifications json.RawMessage
	Hooks         json.RawMessage
	Preferences   json.RawMessage
}

// Exchanges returns the ids of the exchanges the service holds, sorted.
func (s *Service) Exchanges(ctx context.Context) ([]string, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	ids := make([]string, 0, len(s.exchanges))
	for id := range s.exchanges {
		ids = append(ids, id)
	}
	s.mu.RUnlock()
	slices.Sort(ids)
	return ids, nil
}

// DeliveryProfiles returns the delivery profiles of every executor of an
// exchange, sorted by executor id; an unknown exchange has none.
func (s *Service) DeliveryProfiles(ctx context.Context, exchangeID string) ([]DeliveryProfile, error) {
	ex, err := s.deliveryExchange(ctx, exchangeID)
	if ex == nil {
		return nil, err
	}
	ex.mu.RLock()
	out := make([]DeliveryProfile, 0, len(ex.executors))
	for _, rec := range ex.executors {
		out = append(out, rec.deliveryProfile())
	}
	ex.mu.RUnlock()
	slices.SortFunc(out, func(a, b DeliveryProfile) int { return strings.Compare(a.ExecutorID, b.ExecutorID) })
	return out, nil
}

// DeliveryProfile returns one executor's delivery profile. It returns an
// error wrapping ErrNotFound if the exchange or the executor does not
// exist.
func (s *Service) DeliveryProfile(ctx context.Context, exchangeID, executorID string) (DeliveryProfile, error) {
	ex, err := s.deliveryExchange(ctx, exchangeID)
	if ex == nil {
		if err == nil {
			err = errorf(ErrNotFound, "exchange not found")
		}
		return DeliveryProfile{}, err
	}
	ex.mu.RLock()
	defer ex.mu.RUnlock()
	rec := ex.executors[executorID]
	if rec == nil {
		return DeliveryProfile{}, errorf(ErrNotFound, "Executor not found")
	}
	return rec.deliveryProfile(), nil
}

// deliveryExchange returns the exchange, or nil and no error if there is
// none.
func (s *Service) deliveryExchange(ctx context.Context, exchangeID string) (*exchange, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s.exchange(exchangeID, false), nil
}

// deliveryProfile returns what a notifier needs; ex.mu must be held. The
// slices are shared, not copied: a profile change replaces them whole and
// never writes into them, and a notifier reads them on every delivery.
func (rec *executorRec) deliveryProfile() DeliveryProfile {
	return DeliveryProfile{
		ExecutorID:    rec.ID,
		DisplayName:   rec.DisplayName,
		Capabilities:  rec.caps,
		Notifications: rec.Notifications,
		Hooks:         rec.Hooks,
		Preferences:   rec.Preferences,
	}
}
