package notify

import (
	"context"
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
	"syscall"
	"time"
)

// AddressPolicy decides which addresses outgoing requests may reach.
type AddressPolicy struct {
	// AllowLoopback permits 127.0.0.0/8 and ::1 (tests, local relays).
	AllowLoopback bool
	// AllowPrivate permits private, shared, link-local and unique-local
	// ranges. Cloud metadata addresses stay blocked unless this is set.
	AllowPrivate bool
}

var metadataAddrs = []netip.Addr{
	netip.MustParseAddr("169.254.169.254"),
	netip.MustParseAddr("fd00:ec2::254"),
	netip.MustParseAddr("100.100.100.200"),
}

var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// Check reports whether addr may be dialled.
func (p AddressPolicy) Check(addr netip.Addr) error {
	addr = addr.Unmap()
	switch {
	case !addr.IsValid():
		return fmt.Errorf("%w: invalid address", ErrBlockedAddress)
	case addr.IsLoopback():
		if p.AllowLoopback {
			return nil
		}
		return fmt.Errorf("%w: loopback address %s", ErrBlockedAddress, addr)
	case addr.IsUnspecified(), addr.IsMulticast(), addr.IsInterfaceLocalMulticast():
		return fmt.Errorf("%w: address %s", ErrBlockedAddress, addr)
	}
	for _, m := range metadataAddrs {
		if addr == m && !p.AllowPrivate {
			return fmt.Errorf("%w: metadata address %s", ErrBlockedAddress, addr)
		}
	}
	if (addr.IsPrivate() || addr.IsLinkLocalUnicast() || addr.IsLinkLocalMulticast() || cgnat.Contains(addr)) && !p.AllowPrivate {
		return fmt.Errorf("%w: private address %s", ErrBlockedAddress, addr)
	}
	return nil
}

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
				return fmt.Errorf("%w: %s", ErrBlockedAddress, address)
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

var _ = context.Background
