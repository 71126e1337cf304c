package notify_test

import (
	"testing"

	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/notify"
)

func TestService_ChannelStats(t *testing.T) {
	flaky := newReceiver(t, func(r received, n int) (int, string) {
		if n < 1 {
			return 500, `{}`
		}
		return 200, `{}`
	})
	down := newReceiver(t, func(received, int) (int, string) { return 503, `{}` })
	e := newEnv(t, notify.Config{MaxAttempts: 3})
	e.register("req", nil, nil, nil, nil)
	e.register("w", nil, []any{map[string]any{"type": "webhook", "url": flaky.URL}}, nil, nil)
	e.register("s", nil, []any{map[string]any{"type": "slack", "webhook_url": down.URL + "/services/T/B/X"}}, nil, nil)
	e.create("req", mess.Request{Intent: "Count me"})
	e.settle()
	want := []notify.ChannelStats{
		{Type: "slack", Retried: 2, Failed: 1},
		{Type: "webhook", Sent: 1, Retried: 1},
	}
	got := e.n.ChannelStats()
	if len(got) != len(want) {
		t.Fatalf("ChannelStats = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("ChannelStats[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
}
