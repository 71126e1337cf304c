package mess

import (
	"math"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxLimited is how many client addresses an addrLimiter remembers.
const maxLimited = 10000

// addrLimiter is a token bucket per client address. It forgets an address
// once its bucket has filled up again (it then behaves as a new one would),
// so it stays small; under a flood of busy addresses it forgets some at
// random rather than grow.
type addrLimiter struct {
	rate  rate.Limit
	burst int

	mu sync.Mutex
	m  map[netip.Prefix]*rate.Limiter
}

func newAddrLimiter(perSecond float64, burst int) *addrLimiter {
	return &addrLimiter{rate: rate.Limit(perSecond), burst: burst, m: map[netip.Prefix]*rate.Limiter{}}
}

// allow takes a token for addr, or says how long until one is free.
func (l *addrLimiter) allow(addr netip.Prefix, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.m[addr]
	if lim == nil {
		if len(l.m) >= maxLimited {
			l.pruneLocked(now)
		}
		lim = rate.NewLimiter(l.rate, l.burst)
		l.m[addr] = lim
	}
	r := lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

func (l *addrLimiter) pruneLocked(now time.Time) {
	for k, lim := range l.m {
		if lim.TokensAt(now) >= float64(l.burst) {
			delete(l.m, k)
		}
	}
	for k := range l.m {
		if len(l.m) < maxLimited*9/10 {
			break
		}
		delete(l.m, k)
	}
}

// retryAfter is a wait in whole seconds for Retry-After, at least 1.
func retryAfter(d time.Duration) int { return max(1, int(math.Ceil(d.Seconds()))) }
