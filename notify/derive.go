package notify

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/meatspace-exchange/mess/mess"
)

// Hook names: the canonical short name (the {{event}} template value) for
// each on_request_* key a profile may use, the original's spellings included.
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
func (s *Service) derive(ctx context.Context, ev mess.Event) []Delivery {
	if ev.ThreadRef == nil {
		return nil
	}
	ref := *ev.ThreadRef
	base := Delivery{EventID: ev.EventID, EventType: ev.EventType, TS: ev.TS, ExchangeID: ev.ExchangeID, Ref: ref, ActorID: ev.ActorID}
	var (
		priority    mess.Priority
		hook        string
		notifyTo    []string // executors whose channels get the event
		hooksFrom   []string // executors whose hooks may fire
		onlyHookFor string   // started/completed hooks: the thread's executor only
	)
	switch ev.EventType {
	case mess.EventThreadCreated:
		var req mess.Request
		var who struct {
			RequestorID string `json:"requestor_id"`
		}
		if json.Unmarshal(ev.Payload, &req) != nil || json.Unmarshal(ev.Payload, &who) != nil {
			return nil
		}
		priority = req.Priority
		required, _ := req.RequiredCapabilities()
		base.NewStatus = string(mess.StatusPending)
		hook = "created"
		for _, id := range s.src.ExecutorIDs(ev.ExchangeID) {
			// Route by requires: only executors able to do it hear of it.
			if !hasAll(s.src.ExecutorCapabilities(ev.ExchangeID, id), required) {
				continue
			}
			hooksFrom = append(hooksFrom, id)
			if id != who.RequestorID {
				notifyTo = append(notifyTo, id)
			}
		}
	case mess.EventStatusChanged:
		var p statusInfo
		if json.Unmarshal(ev.Payload, &p) != nil {
			return nil
		}
		th, err := s.src.Get(ctx, ev.ExchangeID, ref)
		if err != nil {
			return nil
		}
		priority = th.Priority
		base.OldStatus, base.NewStatus, base.Message = p.OldStatus, p.NewStatus, p.Message
		executor := ""
		if p.ExecutorID != nil {
			executor = *p.ExecutorID
		} else if th.ExecutorID != nil {
			executor = *th.ExecutorID
		}
		// The parties to the thread hear of its changes, except whoever
		// made the change.
		for _, id := range []string{th.RequestorID, executor} {
			if id != "" && id != ev.ActorID && !slices.Contains(notifyTo, id) {
				notifyTo = append(notifyTo, id)
			}
		}
		st, _ := mess.ParseStatus(p.NewStatus)
		hook = hookForStatus[st]
		if hook == "started" || hook == "completed" {
			onlyHookFor = executor
			if executor != "" {
				hooksFrom = []string{executor}
			}
		} else if hook != "" {
			hooksFrom = s.src.ExecutorIDs(ev.ExchangeID)
		}
	default:
		return nil
	}
	var out []Delivery
	for _, id := range notifyTo {
		cfg, ok := s.src.ExecutorConfig(ev.ExchangeID, id)
		if !ok || len(cfg.Notifications) == 0 {
			continue
		}
		prefs, err := ParsePreferences(cfg.Preferences)
		if err != nil {
			prefs = Preferences{}
		}
		if !prefs.Allows(priority, ev.TS) {
			continue
		}
		var chans []json.RawMessage
		if json.Unmarshal(cfg.Notifications, &chans) != nil {
			continue
		}
		for i, ch := range chans {
			var t struct {
				Type    string `json:"type"`
				Enabled *bool  `json:"enabled"`
			}
			if json.Unmarshal(ch, &t) != nil || (t.Enabled != nil && !*t.Enabled) {
				continue
			}
			d := base
			d.ID = deliveryID(ev, id, fmt.Sprintf("n%d", i))
			d.ExecutorID, d.Kind, d.Type, d.Config = id, KindNotification, t.Type, ch
			out = append(out, d)
		}
	}
	if hook == "" {
		return out
	}
	for _, id := range hooksFrom {
		if onlyHookFor != "" && id != onlyHookFor {
			continue
		}
		cfg, ok := s.src.ExecutorConfig(ev.ExchangeID, id)
		if !ok || len(cfg.Hooks) == 0 {
			continue
		}
		var hooks map[string][]json.RawMessage
		if json.Unmarshal(cfg.Hooks, &hooks) != nil {
			continue
		}
		keys := make([]string, 0, len(hooks))
		for k := range hooks {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if n, _ := HookName(k); n != hook {
				continue
			}
			for i, h := range hooks[k] {
				var t struct {
					Type string `json:"type"`
				}
				if json.Unmarshal(h, &t) != nil {
					continue
				}
				d := base
				d.ID = deliveryID(ev, id, fmt.Sprintf("h:%s:%d", k, i))
				d.ExecutorID, d.Kind, d.Type, d.Hook, d.Config = id, KindHook, t.Type, hook, h
				out = append(out, d)
			}
		}
	}
	return out
}
