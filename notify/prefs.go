package notify

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	// Time zones in quiet hours must resolve on hosts without a zoneinfo
	// database (minimal containers).
	_ "time/tzdata"

	"github.com/meatspace-exchange/mess/mess"
)

// Preferences are an executor's notification preferences.
type Preferences struct {
	// MinPriority is the lowest priority notified; empty means normal, the
	// default of the MESS exchange server 1.0.
	MinPriority mess.Priority `json:"min_priority"`
	QuietHours  *QuietHours   `json:"quiet_hours"`
}

// QuietHours is a daily window in which non-urgent notifications are not
// sent. Start and End are "HH:MM"; the window wraps midnight when Start is
// after End. TimeZone is an IANA name (default UTC). Enabled defaults to
// true when Start and End are set; false switches the window off.
type QuietHours struct {
	Enabled  *bool  `json:"enabled"`
	Start    string `json:"start"`
	End      string `json:"end"`
	TimeZone string `json:"timezone"`
}

// ParsePreferences decodes a profile's preferences object; empty means
// defaults.
func ParsePreferences(raw json.RawMessage) (Preferences, error) {
	var p Preferences
	if len(raw) == 0 || string(raw) == "null" {
		return p, nil
	}
	var aux struct {
		MinPriority string      `json:"min_priority"`
		QuietHours  *QuietHours `json:"quiet_hours"`
		TZ          string      `json:"time_zone"`
	}
	if err := json.Unmarshal(raw, &aux); err != nil {
		return p, fmt.Errorf("%w: preferences: %v", ErrInvalidConfig, err)
	}
	p.MinPriority = mess.Priority(strings.ToLower(strings.TrimSpace(aux.MinPriority)))
	if p.MinPriority != "" && p.MinPriority.Rank() < 0 {
		return p, fmt.Errorf("%w: min_priority %q: must be background, normal, elevated or urgent", ErrInvalidConfig, aux.MinPriority)
	}
	p.QuietHours = aux.QuietHours
	if q := p.QuietHours; q != nil {
		if q.TimeZone == "" {
			q.TimeZone = aux.TZ
		}
		if _, _, _, err := q.parse(); err != nil {
			return p, err
		}
	}
	return p, nil
}

func parseClock(s string) (int, error) {
	h, m, ok := strings.Cut(strings.TrimSpace(s), ":")
	hh, err1 := strconv.Atoi(h)
	mm := 0
	var err2 error
	if ok {
		mm, err2 = strconv.Atoi(m)
	}
	if err1 != nil || err2 != nil || hh < 0 || hh > 24 || mm < 0 || mm > 59 || (hh == 24 && mm != 0) {
		return 0, fmt.Errorf("%w: quiet_hours: bad time %q (want HH:MM)", ErrInvalidConfig, s)
	}
	return hh*60 + mm, nil
}

func (q *QuietHours) parse() (start, end int, loc *time.Location, err error) {
	loc = time.UTC
	if q.TimeZone != "" {
		if loc, err = time.LoadLocation(q.TimeZone); err != nil {
			return 0, 0, nil, fmt.Errorf("%w: quiet_hours: unknown time zone %q", ErrInvalidConfig, q.TimeZone)
		}
	}
	// The MESS exchange server 1.0 defaults, for profiles that only say
	// enabled.
	s, e := q.Start, q.End
	if s == "" {
		s = "22:00"
	}
	if e == "" {
		e = "07:00"
	}
	if start, err = parseClock(s); err != nil {
		return
	}
	end, err = parseClock(e)
	return
}

// Active reports whether t falls inside the window.
func (q *QuietHours) Active(t time.Time) bool {
	if q == nil || (q.Enabled != nil && !*q.Enabled) || (q.Enabled == nil && (q.Start == "" || q.End == "")) {
		return false
	}
	start, end, loc, err := q.parse()
	if err != nil || start == end {
		return false
	}
	lt := t.In(loc)
	now := lt.Hour()*60 + lt.Minute()
	if start < end {
		return now >= start && now < end
	}
	return now >= start || now < end
}

// Allows reports whether a request of priority p may be notified at t.
// Urgent requests pass quiet hours; an unknown priority counts as normal.
func (p Preferences) Allows(pr mess.Priority, t time.Time) bool {
	rank := pr.Rank()
	if rank < 0 {
		rank = mess.PriorityNormal.Rank()
	}
	min := p.MinPriority
	if min == "" {
		min = mess.PriorityNormal
	}
	if rank < min.Rank() {
		return false
	}
	if pr != mess.PriorityUrgent && p.QuietHours.Active(t) {
		return false
	}
	return true
}
