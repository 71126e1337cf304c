package notify

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// AddressPolicy decides which addresses outgoing requests may reach. The
// zero value allows public unicast addresses only.
//
// Refused whatever the policy says: every special-purpose range of the
// IANA IPv4 and IPv6 Special-Purpose Address Registries that is not
// reachable on the internet or not meant as a destination (this network,
// documentation, benchmarking, 6to4 relay anycast, protocol assignments,
// multicast, reserved and broadcast, the discard-only and deprecated IPv6
// blocks, and IPv6 outside 2000::/3 with the exceptions below). Addresses
// that embed an IPv4 address (IPv4-mapped, NAT64 64:ff9b::/96 and 6to4
// 2002::/16) are judged by the embedded address.
type AddressPolicy struct {
	// AllowLoopback permits 127.0.0.0/8, ::1 and the addresses of this
	// machine's own interfaces (tests, local relays).
	AllowLoopback bool
	// AllowPrivate permits private (10/8, 172.16/12, 192.168/16), shared
	// (100.64/10), link-local (169.254/16, fe80::/10), unique-local
	// (fc00::/7) and local-use NAT64 (64:ff9b:1::/48) addresses. Cloud
	// metadata addresses lie in these ranges and stay blocked unless this
	// is set.
	AllowPrivate bool

	// localAddrs, when set, replaces the machine's interface addresses
	// (tests).
	localAddrs func() []netip.Addr
}

// addrClass is what a range is, for the policy.
type addrClass int

const (
	classPublic addrClass = iota
	classLoopback
	classPrivate
	classReserved
)

type classifiedPrefix struct {
	p     netip.Prefix
	class addrClass
}

// v4Ranges are the IPv4 ranges that are not public unicast, from the IANA
// IPv4 Special-Purpose Address Registry plus multicast and 240/4.
var v4Ranges = classify(map[addrClass][]string{
	classLoopback: {"127.0.0.0/8"},
	classPrivate: {
		"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", // RFC 1918
		"100.64.0.0/10",  // shared address space (CGNAT)
		"169.254.0.0/16", // link-local, cloud metadata
	},
	classReserved: {
		"0.0.0.0/8",       // this network
		"192.0.0.0/24",    // IETF protocol assignments
		"192.0.2.0/24",    // documentation (TEST-NET-1)
		"192.88.99.0/24",  // 6to4 relay anycast (deprecated)
		"198.18.0.0/15",   // benchmarking
		"198.51.100.0/24", // documentation (TEST-NET-2)
		"203.0.113.0/24",  // documentation (TEST-NET-3)
		"224.0.0.0/4",     // multicast
		"240.0.0.0/4",     // reserved, and 255.255.255.255 broadcast
	},
})

// v6Ranges are the IPv6 ranges that are not public unicast, from the IANA
// IPv6 Special-Purpose Address Registry. The IPv4-embedding ranges
// (::ffff:0:0/96, 64:ff9b::/96, 2002::/16) are handled before these.
var v6Ranges = classify(map[addrClass][]string{
	classLoopback: {"::1/128"},
	classPrivate: {
		"fc00::/7",       // unique local
		"fe80::/10",      // link-local
		"64:ff9b:1::/48", // local-use NAT64: the IPv4 it leads to is the network's own
	},
	classReserved: {
		"::/8",           // unspecified, IPv4-compatible and other reserved
		"100::/64",       // discard-only
		"100:0:0:1::/64", // dummy prefix
		"2001::/23",      // IETF protocol assignments (Teredo, benchmarking, ORCHID, ...)
		"2001:db8::/32",  // documentation
		"3fff::/20",      // documentation
		"5f00::/16",      // segment routing SIDs
		"ff00::/8",       // multicast
	},
})

func classify(m map[addrClass][]string) []classifiedPrefix {
	var out []classifiedPrefix
	for c, ps := range m {
		for _, p := range ps {
			out = append(out, classifiedPrefix{netip.MustParsePrefix(p), c})
		}
	}
	return out
}

var (
	globalUnicast6 = netip.MustParsePrefix("2000::/3")
	nat64          = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour      = netip.MustParsePrefix("2002::/16")
)

// embeddedV4 returns the IPv4 address a NAT64 or 6to4 address leads to.
func embeddedV4(a netip.Addr) (netip.Addr, bool) {
	b := a.As16()
	switch {
	case nat64.Contains(a):
		return netip.AddrFrom4([4]byte(b[12:16])), true
	case sixToFour.Contains(a):
		return netip.AddrFrom4([4]byte(b[2:6])), true
	}
	return netip.Addr{}, false
}

// classOf says what kind of address a is, looking through IPv4-mapped,
// NAT64 and 6to4 addresses to the IPv4 address they carry.
func classOf(a netip.Addr) addrClass {
	a = a.Unmap()
	if v4, ok := embeddedV4(a); ok {
		a = v4
	}
	ranges := v4Ranges
	if a.Is6() {
		ranges = v6Ranges
	}
	// The most specific range decides: ::1 and 64:ff9b:1::/48 lie in ::/8.
	class, bits := classPublic, -1
	for _, r := range ranges {
		if r.p.Bits() > bits && r.p.Contains(a) {
			class, bits = r.class, r.p.Bits()
		}
	}
	if a.Is6() && class == classPublic && !globalUnicast6.Contains(a) {
		class = classReserved
	}
	return class
}

// Check reports whether addr may be dialled. The errors name the kind of
// address refused, never the address, which may be what a host name
// resolved to inside the operator's network.
func (p AddressPolicy) Check(addr netip.Addr) error {
	if !addr.IsValid() {
		return fmt.Errorf("%w: invalid address", ErrBlockedAddress)
	}
	addr = addr.WithZone("")
	class := classOf(addr)
	if class == classReserved {
		return fmt.Errorf("%w: special-purpose address", ErrBlockedAddress)
	}
	if class != classLoopback && p.isLocal(addr) {
		class = classLoopback
	}
	switch {
	case class == classLoopback && !p.AllowLoopback:
		return fmt.Errorf("%w: loopback or own address", ErrBlockedAddress)
	case class == classPrivate && !p.AllowPrivate:
		return fmt.Errorf("%w: private address", ErrBlockedAddress)
	}
	return nil
}

// isLocal reports whether a is an address of one of this machine's
// interfaces.
func (p AddressPolicy) isLocal(a netip.Addr) bool {
	own := localAddrs
	if p.localAddrs != nil {
		own = p.localAddrs
	}
	a = a.Unmap()
	for _, o := range own() {
		if o.Unmap() == a {
			return true
		}
	}
	return false
}

// localAddrs returns the addresses of this machine's interfaces, read
// again at most once a second so that an address added after start is
// refused too.
var localAddrs = func() func() []netip.Addr {
	var (
		mu    sync.Mutex
		addrs []netip.Addr
		read  time.Time
	)
	return func() []netip.Addr {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(read) < time.Second {
			return addrs
		}
		ifas, err := net.InterfaceAddrs()
		if err != nil {
			return addrs // keep the last good list
		}
		fresh := make([]netip.Addr, 0, len(ifas))
		for _, ifa := range ifas {
			if p, err := netip.ParsePrefix(ifa.String()); err == nil {
				fresh = append(fresh, p.Addr().WithZone(""))
			}
		}
		addrs, read = fresh, time.Now()
		return addrs
	}
}()

// CheckURL rejects non-http(s) URLs and literal addresses the policy
// forbids. Host names are checked again at dial time, after resolution, so
// a name that resolves to a private address is refused too.
func (p AddressPolicy) CheckURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: bad URL", ErrInvalidConfig)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%w: scheme %q (only http and https)", ErrBlockedAddress, u.Scheme)
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("%w: URL without host", ErrInvalidConfig)
	}
	if u.User != nil {
		return nil, fmt.Errorf("%w: URL with credentials", ErrInvalidConfig)
	}
	if a, err := netip.ParseAddr(u.Hostname()); err == nil {
		if err := p.Check(a); err != nil {
			return nil, err
		}
	}
	return u, nil
}

// NewClient returns an HTTP client that enforces p on every connection it
// opens (after DNS resolution, so rebinding cannot slip through) and on
// every redirect, ignores proxy settings, and gives up after timeout.
func (p AddressPolicy) NewClient(timeout time.Duration) *http.Client {
	dialer := &net.Dialer{
		Timeout: 5 * time.Second,
		Control: func(network, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("%w: unparsable address", ErrBlockedAddress)
			}
			return p.Check(ap.Addr())
		},
	}
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          64,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       60 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: timeout,
	}
	return &http.Client{
		Transport: tr,
		Timeout:   timeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 5 {
				return errors.New("too many redirects")
			}
			_, err := p.CheckURL(req.URL.String())
			return err
		},
	}
}

// Signature headers on webhook deliveries.
const (
	HeaderSignature = "X-Mess-Signature"
	HeaderTimestamp = "X-Mess-Timestamp"
	HeaderEvent     = "X-Mess-Event"
	HeaderDelivery  = "X-Mess-Delivery"
)

// Sign returns the X-Mess-Signature value for body sent at ts:
// "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>".
func Sign(secret []byte, ts time.Time, body []byte) string {
	t := strconv.FormatInt(ts.Unix(), 10)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(t))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "t=" + t + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

// Verify checks a signature made by Sign and that its timestamp is within
// tolerance of now, so receivers can reject forgeries and replays.
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) bool {
	var t int64
	var sig string
	for len(header) > 0 {
		var part string
		part, header, _ = cutComma(header)
		k, v, _ := cutEq(part)
		switch k {
		case "t":
			t, _ = strconv.ParseInt(v, 10, 64)
		case "v1":
			sig = v
		}
	}
	if t == 0 || sig == "" {
		return false
	}
	ts := time.Unix(t, 0)
	if d := now.Sub(ts); d > tolerance || d < -tolerance {
		return false
	}
	want := Sign(secret, ts, body)
	return hmac.Equal([]byte(want), []byte("t="+strconv.FormatInt(t, 10)+",v1="+sig))
}

func cutComma(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

func cutEq(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == '=' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}
