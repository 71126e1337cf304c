package mess

import (
	"net/netip"
	"testing"
	"time"
)

// Ensure the limiter remembers a bounded number of addresses, forgets the
// idle ones first, and still limits an address it remembers.
func TestAddrLimiter(t *testing.T) {
	l := newAddrLimiter(1, 2) // one a second, two at once
	now := time.Unix(1e9, 0)
	a := netip.MustParsePrefix("192.0.2.1/32")
	for i, want := range []bool{true, true, false} {
		if ok, wait := l.allow(a, now); ok != want || (!ok && wait <= 0) {
			t.Fatalf("attempt %d: allowed %v wait %v, want %v", i, ok, wait, want)
		}
	}
	if ok, _ := l.allow(a, now.Add(time.Second)); !ok {
		t.Fatal("a refilled token was refused")
	}
	// Busy addresses: the map never grows past its bound.
	for i := range 3 * maxLimited {
		p, _ := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).Prefix(32)
		l.allow(p, now)
		l.allow(p, now)
	}
	if n := len(l.m); n > maxLimited {
		t.Fatalf("limiter remembers %d addresses, bound %d", n, maxLimited)
	}
	// Idle ones go first: once every bucket is full again, the next prune
	// forgets them all.
	later := now.Add(time.Hour)
	fresh := maxLimited - len(l.m) + 1
	for i := range fresh {
		p, _ := netip.AddrFrom4([4]byte{172, 16, byte(i >> 8), byte(i)}).Prefix(32)
		l.allow(p, later)
	}
	if n := len(l.m); n > fresh {
		t.Fatalf("after the buckets refilled the limiter remembers %d addresses, want at most %d", n, fresh)
	}
}
