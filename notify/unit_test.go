package notify

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/mess"
)

func TestQuietHours_Active(t *testing.T) {
	utc := func(h, m int) time.Time { return time.Date(2026, 7, 1, h, m, 0, 0, time.UTC) }
	tests := []struct {
		name string
		q    QuietHours
		at   time.Time
		want bool
	}{
		{"inside across midnight, before", QuietHours{Start: "22:00", End: "07:00"}, utc(23, 10), true},
		{"inside across midnight, after", QuietHours{Start: "22:00", End: "07:00"}, utc(6, 59), true},
		{"end is exclusive", QuietHours{Start: "22:00", End: "07:00"}, utc(7, 0), false},
		{"minutes count at start", QuietHours{Start: "22:30", End: "07:00"}, utc(22, 29), false},
		{"minutes count at start, inside", QuietHours{Start: "22:30", End: "07:00"}, utc(22, 30), true},
		{"minutes count at end", QuietHours{Start: "22:00", End: "06:15"}, utc(6, 20), false},
		{"same-day window", QuietHours{Start: "12:00", End: "13:30"}, utc(13, 0), true},
		{"same-day window outside", QuietHours{Start: "12:00", End: "13:30"}, utc(14, 0), false},
		// 21:30 UTC is 23:30 in Berlin in summer (UTC+2).
		{"time zone puts it inside", QuietHours{Start: "23:00", End: "06:00", TimeZone: "Europe/Berlin"}, utc(21, 30), true},
		{"time zone puts it outside", QuietHours{Start: "23:00", End: "06:00", TimeZone: "America/Los_Angeles"}, utc(21, 30), false},
		// 03:00 UTC is 23:00 the previous day in New York (UTC-4).
		{"time zone across the date line", QuietHours{Start: "22:00", End: "07:00", TimeZone: "America/New_York"}, utc(3, 0), true},
		{"disabled", QuietHours{Enabled: new(bool), Start: "00:00", End: "23:59"}, utc(12, 0), false},
		{"empty window", QuietHours{Start: "10:00", End: "10:00"}, utc(10, 0), false},
		{"enabled with the default window", QuietHours{Enabled: ptr(true)}, utc(23, 0), true},
		{"start only is not a window", QuietHours{Start: "10:00"}, utc(11, 0), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.q.Active(tt.at); got != tt.want {
				t.Errorf("Active(%s) = %v, want %v", tt.at.Format("15:04"), got, tt.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestPreferences_Allows(t *testing.T) {
	night := time.Date(2026, 1, 1, 23, 0, 0, 0, time.UTC)
	day := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	quiet := `"quiet_hours":{"enabled":true,"start":"22:00","end":"07:00"}`
	tests := []struct {
		prefs string
		p     mess.Priority
		at    time.Time
		want  bool
	}{
		{`{}`, mess.PriorityBackground, day, false}, // default min_priority is normal
		{`{}`, mess.PriorityNormal, day, true},
		{`{"min_priority":"background"}`, mess.PriorityBackground, day, true},
		{`{"min_priority":"elevated"}`, mess.PriorityNormal, day, false},
		{`{"min_priority":"elevated"}`, mess.PriorityUrgent, day, true},
		{`{` + quiet + `}`, mess.PriorityElevated, night, false},
		{`{` + quiet + `}`, mess.PriorityUrgent, night, true},
		{`{` + quiet + `}`, mess.PriorityNormal, day, true},
		{`{"min_priority":"urgent",` + quiet + `}`, mess.PriorityUrgent, night, true},
	}
	for _, tt := range tests {
		p, err := ParsePreferences(json.RawMessage(tt.prefs))
		if err != nil {
			t.Fatalf("%s: %v", tt.prefs, err)
		}
		if got := p.Allows(tt.p, tt.at); got != tt.want {
			t.Errorf("%s: Allows(%s, %s) = %v, want %v", tt.prefs, tt.p, tt.at.Format("15:04"), got, tt.want)
		}
	}
}

func TestParsePreferences_invalid(t *testing.T) {
	for _, s := range []string{
		`{"min_priority":"loud"}`,
		`{"quiet_hours":{"start":"25:00","end":"07:00"}}`,
		`{"quiet_hours":{"start":"22:00","end":"7h"}}`,
		`{"quiet_hours":{"start":"22:00","end":"07:00","timezone":"Mars/Olympus"}}`,
		`[1]`,
	} {
		if _, err := ParsePreferences(json.RawMessage(s)); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: err = %v, want ErrInvalidConfig", s, err)
		}
	}
}

func TestExpand(t *testing.T) {
	vars := map[string]any{"ref": "2026-01-01-AB12", "n": 3, "obj": map[string]any{"a": "x", "b": map[string]any{"c": "deep"}}, "nil": nil}
	tests := map[string]string{
		"Ref {{ref}}":          "Ref 2026-01-01-AB12",
		"{{ ref }}":            "2026-01-01-AB12",
		"{{missing}}!":         "!",
		"{{obj.b.c}}":          "deep",
		"{{obj.a.z}}":          "",
		"{{obj.b}}":            `{"c":"deep"}`,
		"{{n}} items":          "3 items",
		"{{nil}}":              "",
		"no template":          "no template",
		"{{ref}}/{{external}}": "2026-01-01-AB12/",
	}
	for in, want := range tests {
		if got := Expand(in, vars); got != want {
			t.Errorf("Expand(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestAddressPolicy_Check(t *testing.T) {
	tests := []struct {
		addr   string
		policy AddressPolicy
		ok     bool
	}{
		{"93.184.216.34", AddressPolicy{}, true},
		{"2606:4700::1111", AddressPolicy{}, true},
		{"127.0.0.1", AddressPolicy{}, false},
		{"127.0.0.1", AddressPolicy{AllowLoopback: true}, true},
		{"::1", AddressPolicy{}, false},
		{"::ffff:127.0.0.1", AddressPolicy{}, false},
		{"10.1.2.3", AddressPolicy{}, false},
		{"172.16.0.1", AddressPolicy{AllowLoopback: true}, false},
		{"192.168.1.1", AddressPolicy{}, false},
		{"192.168.1.1", AddressPolicy{AllowPrivate: true}, true},
		{"169.254.169.254", AddressPolicy{AllowLoopback: true}, false},
		{"100.64.0.1", AddressPolicy{}, false},
		{"fd00::1", AddressPolicy{}, false},
		{"fe80::1", AddressPolicy{}, false},
		{"0.0.0.0", AddressPolicy{AllowPrivate: true, AllowLoopback: true}, false},
		{"224.0.0.1", AddressPolicy{}, false},
	}
	for _, tt := range tests {
		err := tt.policy.Check(netip.MustParseAddr(tt.addr))
		if (err == nil) != tt.ok {
			t.Errorf("%+v.Check(%s) = %v, want ok=%v", tt.policy, tt.addr, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrBlockedAddress) {
			t.Errorf("Check(%s) error %v is not ErrBlockedAddress", tt.addr, err)
		}
	}
}

func TestAddressPolicy_CheckURL(t *testing.T) {
	for _, u := range []string{"file:///etc/passwd", "gopher://x", "ftp://example.com/", "http://127.0.0.1:8080/", "http://[::1]/", "http://169.254.169.254/latest"} {
		if _, err := (AddressPolicy{}).CheckURL(u); err == nil {
			t.Errorf("CheckURL(%q) allowed", u)
		}
	}
	for _, u := range []string{"https://hooks.slack.com/services/x", "http://example.com:8080/a?b=c"} {
		if _, err := (AddressPolicy{}).CheckURL(u); err != nil {
			t.Errorf("CheckURL(%q) = %v", u, err)
		}
	}
}

func TestSign_Verify(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	body := []byte(`{"ref":"x"}`)
	sig := Sign([]byte("k"), now, body)
	if sig[:13] != "t=1800000000," {
		t.Errorf("signature %q lacks its timestamp", sig)
	}
	tests := []struct {
		name   string
		secret string
		body   []byte
		at     time.Time
		want   bool
	}{
		{"valid", "k", body, now.Add(time.Second), true},
		{"wrong secret", "k2", body, now, false},
		{"tampered body", "k", []byte(`{"ref":"y"}`), now, false},
		{"replayed late", "k", body, now.Add(10 * time.Minute), false},
	}
	for _, tt := range tests {
		if got := Verify([]byte(tt.secret), sig, tt.body, tt.at, 5*time.Minute); got != tt.want {
			t.Errorf("%s: Verify = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestHeaderText(t *testing.T) {
	if got := headerText("New MESS request"); got != "New MESS request" {
		t.Errorf("ASCII changed: %q", got)
	}
	if got := headerText("🆕 New"); got != "=?UTF-8?b?8J+GlSBOZXc=?=" {
		t.Errorf("non-ASCII = %q, want RFC 2047 encoded", got)
	}
	if got := headerText("a\r\nInjected: 1"); got != "a  Injected: 1" {
		t.Errorf("newlines kept: %q", got)
	}
}

func TestValidateProfile(t *testing.T) {
	ok := []string{
		`[{"type":"ntfy","topic":"abc"},{"type":"slack","webhook_url":"https://hooks.slack.com/x"}]`,
	}
	for _, n := range ok {
		if err := (Config{}).ValidateProfile(json.RawMessage(n), nil, nil); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
	bad := []struct{ n, h, p string }{
		{`[{"type":"pager"}]`, ``, ``},
		{`[{"type":"ntfy","topic":"a/b"}]`, ``, ``},
		{`[{"type":"webhook","url":"http://10.0.0.1/"}]`, ``, ``},
		{``, `{"on_request_exploded":[]}`, ``},
		{``, `{"on_request_created":[{"type":"webhook","url":"file:///x"}]}`, ``},
		{``, ``, `{"min_priority":"loud"}`},
	}
	for _, b := range bad {
		if err := (Config{}).ValidateProfile(json.RawMessage(b.n), json.RawMessage(b.h), json.RawMessage(b.p)); err == nil {
			t.Errorf("%+v accepted", b)
		}
	}
}

// Ensure a profile over the channel or hook cap is refused, saying why:
// every channel and hook is a delivery per event.
func TestValidateProfile_caps(t *testing.T) {
	chans := func(n int) json.RawMessage {
		var l []map[string]any
		for range n {
			l = append(l, map[string]any{"type": "ntfy", "topic": "t"})
		}
		b, _ := json.Marshal(l)
		return b
	}
	hooks := func(n int) json.RawMessage {
		m := map[string][]map[string]any{}
		for i := range n {
			k := []string{"on_request_created", "on_request_claimed"}[i%2]
			m[k] = append(m[k], map[string]any{"type": "webhook", "url": "https://example.com/h"})
		}
		b, _ := json.Marshal(m)
		return b
	}
	tests := []struct {
		name          string
		cfg           Config
		notes, hooks  json.RawMessage
		wantErr       bool
		wantInMessage string
	}{
		{"20 channels", Config{}, chans(20), nil, false, ""},
		{"21 channels", Config{}, chans(21), nil, true, "at most 20"},
		{"50 hooks", Config{}, nil, hooks(50), false, ""},
		{"51 hooks", Config{}, nil, hooks(51), true, "at most 50"},
		{"own caps", Config{MaxChannels: 2, MaxHooks: 3}, chans(3), nil, true, "at most 2"},
		{"own hook cap", Config{MaxChannels: 2, MaxHooks: 3}, nil, hooks(4), true, "at most 3"},
	}
	for _, tt := range tests {
		err := tt.cfg.ValidateProfile(tt.notes, tt.hooks, nil)
		if (err != nil) != tt.wantErr || err != nil && (!errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.wantInMessage)) {
			t.Errorf("%s: ValidateProfile = %v, want error %v containing %q", tt.name, err, tt.wantErr, tt.wantInMessage)
		}
	}
}

// Ensure failure reports name neither the address a host resolved to nor
// the resolver, which describe the operator's network.
func TestDescribeErr_hidesInternalAddresses(t *testing.T) {
	dial := func(inner error) error {
		return &url.Error{Op: "Post", URL: "https://hooks.example.com/services/SECRET", Err: &net.OpError{
			Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.ParseIP("10.20.30.40"), Port: 443}, Err: inner}}
	}
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"unknown host", &url.Error{Op: "Post", URL: "https://nx.example.com/x", Err: &net.OpError{Op: "dial", Net: "tcp",
			Err: &net.DNSError{Err: "no such host", Name: "nx.example.com", Server: "10.0.0.53:53", IsNotFound: true}}},
			"nx.example.com: no such host"},
		{"resolver down", &url.Error{Op: "Post", URL: "https://a.example.com/x", Err: &net.OpError{Op: "dial", Net: "tcp",
			Err: &net.DNSError{Err: "server misbehaving", Name: "a.example.com", Server: "10.0.0.53:53"}}},
			"a.example.com: DNS lookup failed"},
		{"refused", dial(os.NewSyscallError("connect", syscall.ECONNREFUSED)), "hooks.example.com: connection failed: connection refused"},
		{"blocked after resolution", dial(fmt.Errorf("%w: private address", ErrBlockedAddress)),
			"hooks.example.com: notify: destination not allowed: private address"},
	}
	for _, tt := range tests {
		got := describeErr(tt.err)
		if got != tt.want {
			t.Errorf("%s: describeErr = %q, want %q", tt.name, got, tt.want)
		}
		for _, leak := range []string{"10.0.0.53", "10.20.30.40", "SECRET"} {
			if strings.Contains(got, leak) {
				t.Errorf("%s: %q shows %s", tt.name, got, leak)
			}
		}
	}
}
