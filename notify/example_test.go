package notify_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/notify"
	"github.com/meatspace-exchange/mess/storage"
)

func ExampleExpand() {
	vars := map[string]any{"intent": "Check the fridge", "ref": "2026-02-01-XY1Z", "thread": map[string]any{"priority": "urgent"}}
	fmt.Println(notify.Expand("MESS: {{intent}} ({{ref}}, {{thread.priority}}){{missing}}", vars))
	// Output: MESS: Check the fridge (2026-02-01-XY1Z, urgent)
}

func ExampleQuietHours_Active() {
	q := notify.QuietHours{Start: "22:30", End: "06:45", TimeZone: "Europe/Berlin"}
	at := time.Date(2026, 1, 10, 21, 40, 0, 0, time.UTC) // 22:40 in Berlin
	fmt.Println(q.Active(at), q.Active(at.Add(-20*time.Minute)))
	// Output: true false
}

func ExampleVerify() {
	secret := []byte("shared secret")
	body := []byte(`{"ref":"2026-02-01-XY1Z"}`)
	sent := time.Now()
	header := notify.Sign(secret, sent, body) // what X-Mess-Signature carries
	fmt.Println(notify.Verify(secret, header, body, time.Now(), 5*time.Minute))
	// Output: true
}

func ExampleAddressPolicy_Check() {
	p := notify.AddressPolicy{}
	for _, a := range []string{"93.184.216.34", "127.0.0.1", "169.254.169.254", "192.0.2.1", "64:ff9b::7f00:1"} {
		fmt.Println(a, p.Check(netip.MustParseAddr(a)))
	}
	// Output:
	// 93.184.216.34 <nil>
	// 127.0.0.1 notify: destination not allowed: loopback or own address
	// 169.254.169.254 notify: destination not allowed: private address
	// 192.0.2.1 notify: destination not allowed: special-purpose address
	// 64:ff9b::7f00:1 notify: destination not allowed: loopback or own address
}

// A profile is checked before it is stored, with the policy and the caps
// the outbox will apply.
func ExampleConfig_ValidateProfile() {
	cfg := notify.Config{MaxChannels: 1}
	two, _ := json.Marshal([]any{
		map[string]any{"type": "ntfy", "topic": "phone"},
		map[string]any{"type": "webhook", "url": "https://example.com/hook"},
	})
	fmt.Println(cfg.ValidateProfile(two, nil, nil))
	internal, _ := json.Marshal([]any{map[string]any{"type": "webhook", "url": "http://10.0.0.5/hook"}})
	fmt.Println(notify.Config{}.ValidateProfile(internal, nil, nil))
	// Output:
	// notify: invalid configuration: 2 notification channels; a profile may have at most 1
	// notifications[0]: notify: destination not allowed: private address
}

func ExampleNew() {
	ctx := context.Background()
	path := exampleDir()
	defer os.RemoveAll(path)
	dir, _ := storage.NewFS(path)
	svc, _ := mess.New(ctx, mess.Config{Store: dir, OpenRegistration: true})
	defer svc.Close(ctx)
	n, err := notify.New(ctx, notify.Config{Source: svc, Store: dir})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer n.Close(ctx)
	channels, _ := json.Marshal([]any{map[string]any{"type": "ntfy", "topic": "my-phone"}})
	svc.Register(ctx, "home", mess.Registration{ExecutorID: "me", Notifications: channels})
	fmt.Println(n.Stats().Pending)
	// Output: 0
}

func exampleDir() string {
	d, err := os.MkdirTemp("", "notify-example")
	if err != nil {
		panic(err)
	}
	return d
}
