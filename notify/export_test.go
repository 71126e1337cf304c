package notify

import "net/netip"

// WithLocalAddrs is p on a machine whose interfaces have addrs.
func WithLocalAddrs(p AddressPolicy, addrs ...netip.Addr) AddressPolicy {
	p.localAddrs = func() []netip.Addr { return addrs }
	return p
}
