package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/meatspace-exchange/mess/internal/httpx"
	"github.com/meatspace-exchange/mess/ownership"
	"github.com/meatspace-exchange/mess/storage"
	"github.com/meatspace-exchange/mess/storage/s3store"
)

// ownerKey is the record naming the messd that writes a shared store.
const ownerKey = "owners/messd.json"

// s3Config reads the S3 settings (the variables of the MESS exchange
// server 1.0 deployment, plus S3_PREFIX and S3_USE_SSL).
type s3Settings struct {
	endpoint, bucket, accessKey, secretKey, region, prefix string
	useSSL                                                 bool
}

func openS3(ctx context.Context, s s3Settings) (storage.Store, error) {
	st, err := s3store.New(ctx, s3store.Config{
		Endpoint: s.endpoint, Bucket: s.bucket, AccessKey: s.accessKey, SecretKey: s.secretKey,
		Region: s.region, Prefix: s.prefix, Secure: s.useSSL,
	})
	if err != nil {
		return nil, err
	}
	if err := storage.VerifyConditionalWrites(ctx, st); err != nil {
		return nil, fmt.Errorf("S3 store at %s refused: %w", s.endpoint, err)
	}
	return st, nil
}

// holderID names this process incarnation in the owner record.
func holderID() string {
	host, _ := os.Hostname()
	var b [6]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// claimWriter makes this process the store's writer, waiting as a standby
// while another messd heartbeats. role is updated for the standby handler.
func claimWriter(ctx context.Context, store storage.Store, addr string, heartbeat, timeout time.Duration, role *atomic.Value, logger *slog.Logger) (*ownership.Ownership, error) {
	return ownership.Claim(ctx, ownership.Config{
		Store: store, Key: ownerKey, Holder: holderID(), Addr: addr,
		Heartbeat: heartbeat, Timeout: timeout, Logger: logger,
	}, func(holder, holderAddr string) {
		role.Store("standby")
		logger.Info("waiting as a standby", "writer", holder, "writer_addr", holderAddr)
	})
}

// handoff serves the listener before the services are up (and while this
// process is a standby), then the real handler.
type handoff struct {
	h       atomic.Pointer[http.Handler]
	role    atomic.Value // string: starting, standby
	storage string
}

func (s *handoff) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h := s.h.Load(); h != nil {
		(*h).ServeHTTP(w, r)
		return
	}
	role, _ := s.role.Load().(string)
	switch r.URL.Path {
	case "/health":
		// Alive, so a supervisor leaves it running.
		bi := readBuildInfo()
		httpx.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok", "service": "mess-exchange", "storage": s.storage, "role": role,
			"version": bi.Version, "revision": bi.Revision, "go_version": bi.GoVersion})
	default:
		w.Header().Set("Retry-After", "5")
		httpx.WriteError(w, http.StatusServiceUnavailable, httpx.CodeUnavailable, "this messd is not serving yet ("+role+")")
	}
}

func (s *handoff) serve(h http.Handler) { s.h.Store(&h) }

// stop goes back to answering as a standby.
func (s *handoff) stop() {
	s.role.Store("standby")
	s.h.Store(nil)
}

// term serves one writer term's handler: its requests are cancelled when
// the term ends, and wait tells when the last one returned.
type term struct {
	h      http.Handler
	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	n      int
	idle   chan struct{} // closed when n drops to 0 after the end
}

func newTerm(h http.Handler) *term {
	ctx, cancel := context.WithCancel(context.Background())
	return &term{h: h, ctx: ctx, cancel: cancel, idle: make(chan struct{})}
}

func (t *term) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	t.mu.Lock()
	t.n++
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		t.n--
		if t.n == 0 && t.ctx.Err() != nil {
			select {
			case <-t.idle:
			default:
				close(t.idle)
			}
		}
		t.mu.Unlock()
	}()
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(t.ctx, cancel)()
	t.h.ServeHTTP(w, r.WithContext(ctx))
}

// end cancels every request of the term.
func (t *term) end() {
	t.cancel()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == 0 {
		select {
		case <-t.idle:
		default:
			close(t.idle)
		}
	}
}

// wait returns when the term's requests have returned, or ctx ends.
func (t *term) wait(ctx context.Context) {
	select {
	case <-t.idle:
	case <-ctx.Done():
	}
}

// fenceGate answers 503 once this process may have been replaced as the
// writer, before any handler runs: it serves nothing, stale reads
// included, that a standby may already be serving differently. /health
// still answers, so a supervisor sees the process alive while it exits.
func fenceGate(f storage.Fence) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if c.Path() != "/health" {
				if err := f.Valid(); err != nil {
					c.Response().Header().Set("Retry-After", "1")
					httpx.WriteError(c.Response(), http.StatusServiceUnavailable, httpx.CodeUnavailable, "this server may no longer be the writer; try again")
					return nil
				}
			}
			return next(c)
		}
	}
}

// claimIdle takes the owner record of an S3 store for a command that must
// not write beside a messd ("messd admin", "messd migrate"). It waits one
// timeout for the record to stop changing, saying so on stderr, and gives
// up while a writer still heartbeats: a live messd keeps the store, one
// that crashed loses it. The caller releases the claim when done.
func claimIdle(ctx context.Context, store storage.Store, command, what string, heartbeat, timeout time.Duration, minEpoch uint64, stderr io.Writer) (*ownership.Ownership, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout+2*heartbeat)
	defer cancel()
	return ownership.Claim(ctx, ownership.Config{
		Store: store, Key: ownerKey, Holder: holderID() + " (" + command + ")",
		Heartbeat: heartbeat, Timeout: timeout, MinEpoch: minEpoch, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, func(holder, addr string) {
		fmt.Fprintf(stderr, "%s: %s's writer is %s at %s; waiting up to %s for it to go silent\n", command, what, holder, addr, timeout)
	})
}
