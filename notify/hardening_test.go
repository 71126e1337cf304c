package notify_test

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/notify"
)

// Ensure every special-purpose range of the IANA IPv4 and IPv6 registries
// is refused whatever the policy allows, and that addresses embedding an
// IPv4 address are judged by it.
func TestAddressPolicy_Check_specialPurpose(t *testing.T) {
	all := notify.AddressPolicy{AllowLoopback: true, AllowPrivate: true}
	refused := []string{
		"0.0.0.0", "0.1.2.3", "192.0.0.8", "192.0.2.10", "192.88.99.1", "198.18.0.1", "198.19.255.254",
		"198.51.100.7", "203.0.113.9", "224.0.0.1", "239.255.255.250", "240.0.0.1", "250.1.2.3",
		"255.255.255.255",
		"::", "100::1", "2001::1", "2001:1ff::1", "2001:db8::1", "3fff::1", "ff02::1", "ff0e::1",
		"::ffff:192.0.2.1", "::ffff:240.0.0.1",
		"64:ff9b::c000:201", // NAT64 of 192.0.2.1
		"2002:c000:0201::1", // 6to4 of 192.0.2.1
		"2002:0000:0000::1", // 6to4 of 0.0.0.0
		"2002:e000:0001::1", // 6to4 of 224.0.0.1
		"64:ff9b::e000:1",   // NAT64 of 224.0.0.1
		"::7f00:1",          // IPv4-compatible, deprecated
		"4000::1",           // outside global unicast
	}
	for _, a := range refused {
		if err := all.Check(netip.MustParseAddr(a)); err == nil {
			t.Errorf("Check(%s) allowed with every knob on", a)
		}
	}
	tests := []struct {
		addr   string
		policy notify.AddressPolicy
		ok     bool
	}{
		{"2002:0808:0808::1", notify.AddressPolicy{}, true}, // 6to4 of a public address
		{"64:ff9b::808:808", notify.AddressPolicy{}, true},  // NAT64 of a public address
		{"2002:7f00:0001::1", notify.AddressPolicy{}, false},
		{"2002:7f00:0001::1", notify.AddressPolicy{AllowLoopback: true}, true},
		{"64:ff9b::a00:1", notify.AddressPolicy{}, false},
		{"64:ff9b::a00:1", notify.AddressPolicy{AllowPrivate: true}, true},
		{"2002:0a00:0001::1", notify.AddressPolicy{}, false},
		{"64:ff9b:1::1", notify.AddressPolicy{}, false},
		{"64:ff9b:1::1", notify.AddressPolicy{AllowPrivate: true}, true},
		{"::ffff:10.0.0.1", notify.AddressPolicy{}, false},
		{"::ffff:93.184.216.34", notify.AddressPolicy{}, true},
		{"172.31.255.255", notify.AddressPolicy{}, false},
		{"172.32.0.1", notify.AddressPolicy{}, true},
		{"100.127.255.255", notify.AddressPolicy{}, false},
		{"100.128.0.1", notify.AddressPolicy{}, true},
		{"fc00::1", notify.AddressPolicy{AllowPrivate: true}, true},
	}
	for _, tt := range tests {
		if err := tt.policy.Check(netip.MustParseAddr(tt.addr)); (err == nil) != tt.ok {
			t.Errorf("%+v.Check(%s) = %v, want ok=%v", tt.policy, tt.addr, err, tt.ok)
		}
	}
}

// Ensure the machine's own addresses are refused like loopback, even where
// private addresses are allowed: a webhook to the host's own address would
// reach any listener bound to all interfaces.
func TestAddressPolicy_Check_ownAddresses(t *testing.T) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var own []netip.Addr
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			own = append(own, p.Addr())
		}
	}
	if len(own) == 0 {
		t.Fatal("the machine has no interface addresses")
	}
	for _, a := range own {
		if err := (notify.AddressPolicy{AllowPrivate: true}).Check(a); err == nil {
			t.Errorf("Check(%s), an address of this machine, allowed", a)
		}
	}
	// An own address that is otherwise public is refused too.
	p := notify.WithLocalAddrs(notify.AddressPolicy{AllowPrivate: true}, netip.MustParseAddr("93.184.216.34"))
	if err := p.Check(netip.MustParseAddr("93.184.216.34")); err == nil {
		t.Error("an own public address was allowed")
	}
	if err := p.Check(netip.MustParseAddr("::ffff:93.184.216.34")); err == nil {
		t.Error("an own public address, IPv4-mapped, was allowed")
	}
	p.AllowLoopback = true
	if err := p.Check(netip.MustParseAddr("93.184.216.34")); err != nil {
		t.Errorf("an own address with AllowLoopback: %v", err)
	}
}

// Ensure a header that a template fills with a line break fails at once,
// without a retry and without reaching the receiver.
func TestService_headerInjectionIsPermanent(t *testing.T) {
	rv := newReceiver(t, nil)
	e := newEnv(t, notify.Config{MaxAttempts: 4})
	e.register("req", nil, nil, nil, nil)
	e.register("w", nil, nil, map[string]any{"on_request_created": []any{map[string]any{
		"type": "webhook", "url": rv.URL, "headers": map[string]any{"X-Intent": "{{intent}}"},
	}}}, nil)
	e.create("req", mess.Request{Intent: "innocent\r\nX-Injected: 1"})
	e.settle()
	if n := rv.count(); n != 0 {
		t.Errorf("receiver got %d requests", n)
	}
	f := e.n.Failures(x, "w")
	if len(f) != 1 || f[0].Attempts != 1 {
		t.Fatalf("failures = %+v, want one after a single attempt", f)
	}
	if !strings.Contains(f[0].Error, "X-Intent") {
		t.Errorf("failure %q does not name the header", f[0].Error)
	}
}
