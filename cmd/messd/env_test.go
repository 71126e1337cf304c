package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestEnvReader(t *testing.T) {
	tests := []struct {
		name, value string
		read        func(r *envReader) any
		want        any
		wantErr     string // a substring of the error; empty for none
	}{
		{"unset duration", "", func(r *envReader) any { return r.duration("D", time.Second, false) }, time.Second, ""},
		{"duration", "1m30s", func(r *envReader) any { return r.duration("D", 0, false) }, 90 * time.Second, ""},
		{"negative duration", "-1s", func(r *envReader) any { return r.duration("D", time.Second, false) }, time.Second, `D: want a positive duration such as 30s, got "-1s"`},
		{"negative duration that disables", "-1s", func(r *envReader) any { return r.duration("D", 0, negativeDisables) }, -time.Second, ""},
		{"zero duration", "0s", func(r *envReader) any { return r.duration("D", 0, negativeDisables) }, time.Duration(0), "or a negative one to disable"},
		{"duration without unit", "30", func(r *envReader) any { return r.duration("D", 0, false) }, time.Duration(0), `D: want a positive duration`},
		{"unset integer", "", func(r *envReader) any { return r.integer("N", 7, false) }, int64(7), ""},
		{"integer", "4096", func(r *envReader) any { return r.integer("N", 7, false) }, int64(4096), ""},
		{"not an integer", "abc", func(r *envReader) any { return r.integer("N", 7, false) }, int64(7), `N: want a positive integer, got "abc"`},
		{"zero integer", "0", func(r *envReader) any { return r.integer("N", 7, false) }, int64(7), "N: want a positive integer"},
		{"negative integer", "-1", func(r *envReader) any { return r.integer("N", 7, false) }, int64(7), "N: want a positive integer"},
		{"negative integer that disables", "-1", func(r *envReader) any { return r.integer("N", 7, negativeDisables) }, int64(-1), ""},
		{"fractional integer", "1.5", func(r *envReader) any { return r.integer("N", 7, false) }, int64(7), "N: want a positive integer"},
		{"unset boolean", "", func(r *envReader) any { return r.boolean("B", true) }, true, ""},
		{"true", "true", func(r *envReader) any { return r.boolean("B", false) }, true, ""},
		{"false", "false", func(r *envReader) any { return r.boolean("B", true) }, false, ""},
		{"1 is not a boolean", "1", func(r *envReader) any { return r.boolean("B", false) }, false, `B: want true or false, got "1"`},
		{"TRUE is not a boolean", "TRUE", func(r *envReader) any { return r.boolean("B", false) }, false, "B: want true or false"},
		{"yes is not a boolean", "yes", func(r *envReader) any { return r.boolean("B", false) }, false, "B: want true or false"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &envReader{getenv: func(string) string { return tt.value }}
			if got := tt.read(r); got != tt.want {
				t.Errorf("value = %v, want %v", got, tt.want)
			}
			switch {
			case tt.wantErr == "" && r.err != nil:
				t.Errorf("err = %v, want none", r.err)
			case tt.wantErr != "" && (r.err == nil || !strings.Contains(r.err.Error(), tt.wantErr)):
				t.Errorf("err = %v, want %q", r.err, tt.wantErr)
			}
		})
	}
}

// The first bad setting is the one reported.
func TestEnvReader_firstError(t *testing.T) {
	r := &envReader{getenv: func(k string) string { return map[string]string{"A": "x", "B": "y"}[k] }}
	r.integer("A", 0, false)
	r.boolean("B", false)
	if r.err == nil || !strings.HasPrefix(r.err.Error(), "A: ") {
		t.Fatalf("err = %v, want A's", r.err)
	}
}

// Ensure messd refuses to start on a bad setting of any of its services,
// with an error that names the variable, instead of using a default.
func TestRun_badSettingStops(t *testing.T) {
	for _, tt := range []struct{ name, value string }{
		{"MAX_BODY_BYTES", "abc"},
		{"MESS_OPEN_REGISTRATION", "yes"},
		{"LEASE_MAX_WAIT", "-1s"},
		{"LEASE_MAX_BODY_BYTES", "0"},
		{"MAILBUS_VISIBILITY_TIMEOUT", "-1s"},
		{"MAILBUS_RETENTION_COUNT", "many"},
		{"NOTIFY_TIMEOUT", "10"},
		{"NOTIFY_WORKERS", "-2"},
		{"NOTIFY_ALLOW_LOOPBACK", "1"},
		{"MESS_MAX_CONNS_PER_IP", "lots"},
		{"MESS_BODY_TIMEOUT", "60"},
		{"MESS_WRITE_TIMEOUT", "-1s"},
		{"MESS_IDLE_TIMEOUT", "0s"},
		{"MESS_READ_HEADER_TIMEOUT", "soon"},
		{"MESS_REGISTER_RATE", "1.5"},
		{"MESS_REGISTER_BURST", "-1"},
		{"MESS_MAX_EXCHANGES", "0"},
		{"MESS_TRUST_PROXY_HEADERS", "yes"},
		{"MESS_MAX_MESSAGE_BYTES", "-1"},
		{"MESS_MAX_ATTACHMENT_BYTES", "1e9"},
		{"MESS_EVENT_BUFFER", "0"},
		{"MESS_EVENT_BUFFER_BYTES", "big"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{"ADDR": "127.0.0.1:0", "STORAGE_PATH": t.TempDir(), "LOG_LEVEL": "error", tt.name: tt.value}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			ready := make(chan string, 1)
			err := run(ctx, nil, func(k string) string { return env[k] }, io.Discard, ready)
			if err == nil || !strings.HasPrefix(err.Error(), tt.name+": ") || strings.Contains(err.Error(), "\n") {
				t.Fatalf("run = %v, want one line starting %q", err, tt.name+": ")
			}
			if len(ready) != 0 {
				t.Fatal("messd started listening")
			}
		})
	}
}

// Ensure a malformed capability file stops messd with one line naming it,
// and a missing directory is an empty catalogue.
func TestRun_badCapabilitiesStop(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "caps.yaml"), []byte("id: a\n---\ndescription: no id\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"ADDR": "127.0.0.1:0", "STORAGE_PATH": t.TempDir(), "LOG_LEVEL": "error", "CAPABILITIES_DIR": dir}
	err := run(context.Background(), nil, func(k string) string { return env[k] }, io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "caps.yaml:3: document has no id") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("run = %v, want one line naming caps.yaml:3", err)
	}
	ts := startServer(t, withEnv("CAPABILITIES_DIR", filepath.Join(dir, "missing")))
	key := ts.register(t, "caps", "a")
	var caps struct{ Capabilities []any }
	if code := ts.do(t, "GET", ts.api("caps")+"/capabilities", key, nil, &caps); code != 200 || caps.Capabilities == nil || len(caps.Capabilities) != 0 {
		t.Fatalf("capabilities without a directory = %d %v, want 200 and []", code, caps.Capabilities)
	}
}
