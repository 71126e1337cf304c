package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/meatspace-exchange/mess/mess"
)

// Hook names: the canonical short name (the {{event}} template value) for
// each on_request_* key a profile may use, including the spellings of the
// MESS exchange server 1.0 (on_request_rejected, in-progress, canceled).
var hookNames = map[string]string{
	"on_request_created":     "created",
	"on_request_claimed":     "claimed",
	"on_request_started":     "started",
	"on_request_in_progress": "started",
	"on_request_in-progress": "started",
	"on_request_completed":   "completed",
	"on_request_declined":    "declined",
	"on_request_rejected":    "declined",
	"on_request_cancelled":   "cancelled",
	"on_request_canceled":    "cancelled",
	"on_request_failed":      "failed",
	"on_request_needs_input": "needs_input",
	"on_request_needs-input": "needs_input",
}

// hookForStatus maps a canonical new status to the hook it fires.
var hookForStatus = map[mess.Status]string{
	mess.StatusClaimed:    "claimed",
	mess.StatusInProgress: "started",
	mess.StatusCompleted:  "completed",
	mess.StatusDeclined:   "declined",
	mess.StatusCancelled:  "cancelled",
	mess.StatusFailed:     "failed",
	mess.StatusNeedsInput: "needs_input",
}

// HookName returns the canonical name of a hook key ("on_request_rejected"
// → "declined") and whether it is known.
func HookName(key string) (string, bool) {
	n, ok := hookNames[strings.ToLower(strings.TrimSpace(key))]
	return n, ok
}

func deliveryID(ev mess.Event, executor, dest string) string {
	return ev.ExchangeID + "|" + ev.EventID + "|" + executor + "|" + dest
}

type statusInfo struct {
	OldStatus  string  `json:"old_status"`
	NewStatus  string  `json:"new_status"`
	ExecutorID *string `json:"executor_id"`
	Message    string  `json:"message"`
}

func hasAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// derive lists the deliveries an event causes under the profiles as they
// are now.
func (s *Service) derive(ctx context.Context, ev mess.Event) ([]Delivery, error) {
	if ev.ThreadRef == nil {
		return nil, nil
	}
	ref := *ev.ThreadRef
	base := Delivery{EventID: ev.EventID, EventType: ev.EventType, TS: ev.TS, ExchangeID: ev.ExchangeID, Ref: ref, ActorID: ev.ActorID}
	var (
		priority  mess.Priority
		hook      string
		notifyTo  []mess.DeliveryProfile // executors whose channels get the event
		hooksFrom []mess.DeliveryProfile // executors whose hooks may fire
	)
	switch ev.EventType {
	case mess.EventThreadCreated:
		var req mess.Request
		var who struct {
			RequestorID string `json:"requestor_id"`
		}
		if json.Unmarshal(ev.Payload, &req) != nil || json.Unmarshal(ev.Payload, &who) != nil {
			return nil, nil
		}
		priority = req.Priority
		required, _ := req.RequiredCapabilities()
		base.NewStatus = string(mess.StatusPending)
		hook = "created"
		all, err := s.src.DeliveryProfiles(ctx, ev.ExchangeID)
		if err != nil {
			return nil, err
		}
		for _, p := range all {
			// Route by requires: only executors able to do it hear of it.
			if !hasAll(p.Capabilities, required) {
				continue
			}
			hooksFrom = append(hooksFrom, p)
			if p.ExecutorID != who.RequestorID {
				notifyTo = append(notifyTo, p)
			}
		}
	case mess.EventStatusChanged:
		var info statusInfo
		if json.Unmarshal(ev.Payload, &info) != nil {
			return nil, nil
		}
		th, err := s.src.Get(ctx, ev.ExchangeID, ref)
		if errors.Is(err, mess.ErrNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		priority = th.Priority
		base.OldStatus, base.NewStatus, base.Message = info.OldStatus, info.NewStatus, info.Message
		executor := ""
		if info.ExecutorID != nil {
			executor = *info.ExecutorID
		} else if th.ExecutorID != nil {
			executor = *th.ExecutorID
		}
		// The parties to the thread hear of its changes, except whoever
		// made the change.
		for _, id := range []string{th.RequestorID, executor} {
			if id == "" || id == ev.ActorID || slices.ContainsFunc(notifyTo, func(p mess.DeliveryProfile) bool { return p.ExecutorID == id }) {
				continue
			}
			p, err := s.src.DeliveryProfile(ctx, ev.ExchangeID, id)
			if errors.Is(err, mess.ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			notifyTo = append(notifyTo, p)
		}
		st, _ := mess.ParseStatus(info.NewStatus)
		switch hook = hookForStatus[st]; hook {
		case "":
		case "started", "completed":
			// Only the thread's executor's own hooks.
			if executor == "" {
				break
			}
			p, err := s.src.DeliveryProfile(ctx, ev.ExchangeID, executor)
			if err != nil && !errors.Is(err, mess.ErrNotFound) {
				return nil, err
			}
			if err == nil {
				hooksFrom = []mess.DeliveryProfile{p}
			}
		default:
			if hooksFrom, err = s.src.DeliveryProfiles(ctx, ev.ExchangeID); err != nil {
				return nil, err
			}
		}
	default:
		return nil, nil
	}
	var out []Delivery
	for _, p := range notifyTo {
		if len(p.Notifications) == 0 {
			continue
		}
		prefs, err := ParsePreferences(p.Preferences)
		if err != nil {
			prefs = Preferences{}
		}
		if !prefs.Allows(priority, ev.TS) {
			continue
		}
		var chans []json.RawMessage
		if json.Unmarshal(p.Notifications, &chans) != nil {
			continue
		}
		// A profile stored before the cap keeps only its first channels.
		for i, ch := range chans[:min(len(chans), s.cfg.MaxChannels)] {
			var t struct {
				Type    string `json:"type"`
				Enabled *bool  `json:"enabled"`
			}
			if json.Unmarshal(ch, &t) != nil || (t.Enabled != nil && !*t.Enabled) {
				continue
			}
			d := base
			d.ID = deliveryID(ev, p.ExecutorID, fmt.Sprintf("n%d", i))
			d.ExecutorID, d.Kind, d.Type, d.Config = p.ExecutorID, KindNotification, t.Type, ch
			out = append(out, d)
		}
	}
	if hook == "" {
		return out, nil
	}
	for _, p := range hooksFrom {
		if len(p.Hooks) == 0 {
			continue
		}
		var hooks map[string][]json.RawMessage
		if json.Unmarshal(p.Hooks, &hooks) != nil {
			continue
		}
		keys := slices.Sorted(maps.Keys(hooks))
		n := 0 // hooks of the profile, counted as ValidateProfile counts them
		for _, k := range keys {
			name, _ := HookName(k)
			for i, h := range hooks[k] {
				if n++; n > s.cfg.MaxHooks {
					break
				}
				if name != hook {
					continue
				}
				var t struct {
					Type string `json:"type"`
				}
				if json.Unmarshal(h, &t) != nil {
					continue
				}
				d := base
				d.ID = deliveryID(ev, p.ExecutorID, fmt.Sprintf("h:%s:%d", k, i))
				d.ExecutorID, d.Kind, d.Type, d.Hook, d.Config = p.ExecutorID, KindHook, t.Type, hook, h
				out = append(out, d)
			}
		}
	}
	return out, nil
}
