package mcpserver

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/meatspace-exchange/mess/internal/httpx"
	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/mailbus"
	"github.com/meatspace-exchange/mess/mess"
)

// Authenticator resolves an executor's API key to its id within an
// exchange. *mess.Service satisfies it.
type Authenticator interface {
	Authenticate(ctx context.Context, exchangeID, apiKey string) (executorID string, err error)
}

// Config configures a Server. Exchange, Bus and Leases are each optional:
// the tools, resources and prompts of a nil one are absent. Every zero
// field has the default named in its comment.
type Config struct {
	// Exchange serves the request tools, the thread resources and the
	// ask_a_person prompt.
	Exchange *mess.Service
	// Bus serves the mail tools and the inbox resources.
	Bus *mailbus.Bus
	// Leases serves the lease tools.
	Leases *lease.Manager
	// Auth resolves API keys. Zero means Exchange; one of the two is
	// required.
	Auth Authenticator
	// MaxWait caps how long wait_for_change and a waiting acquire_lease
	// block. Zero means 2 minutes, the HTTP API's long-poll cap.
	MaxWait time.Duration
	// SessionTimeout closes a session that sent nothing for this long.
	// Zero means 30 minutes.
	SessionTimeout time.Duration
	// MaxBodyBytes caps one HTTP request. Zero means 10 MiB, the HTTP
	// API's default, so a request carrying an attachment fits.
	MaxBodyBytes int64
	// InboxPollInterval is how often subscribed inboxes are checked for
	// mail that did not come through this server's tools. Zero means 1s.
	InboxPollInterval time.Duration
	// Logger receives unexpected errors. Zero means slog.Default().
	Logger *slog.Logger
}

// Server is the MCP endpoint: an http.Handler speaking the Streamable HTTP
// transport of MCP (protocol revisions 2024-11-05 to 2025-11-25). Every
// request must carry an executor's API key as a Bearer token; the key
// decides the exchange and the agent every tool acts as.
type Server struct {
	cfg     Config
	auth    Authenticator
	mcp     *mcp.Server
	handler http.Handler
	watch   *watcher

	base   context.Context // cancelled by Close: ends waiting tools
	cancel context.CancelFunc
	once   sync.Once

	mu       sync.Mutex
	closed   bool
	inflight int           // requests being served
	idle     chan struct{} // closed when inflight drops to 0 after Close
}

// New builds the server and registers the tools of the services cfg names.
func New(cfg Config) (*Server, error) {
	if cfg.Exchange == nil && cfg.Bus == nil && cfg.Leases == nil {
		return nil, errors.New("mcpserver: no service configured: set Exchange, Bus or Leases")
	}
	a := cfg.Auth
	if a == nil {
		if cfg.Exchange == nil {
			return nil, errors.New("mcpserver: Auth is required without Exchange")
		}
		a = cfg.Exchange
	}
	if cfg.MaxWait < 0 || cfg.SessionTimeout < 0 || cfg.MaxBodyBytes < 0 || cfg.InboxPollInterval < 0 {
		return nil, errors.New("mcpserver: durations and sizes must not be negative")
	}
	if cfg.MaxWait == 0 {
		cfg.MaxWait = 2 * time.Minute
	}
	if cfg.SessionTimeout == 0 {
		cfg.SessionTimeout = 30 * time.Minute
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = 10 << 20
	}
	if cfg.InboxPollInterval == 0 {
		cfg.InboxPollInterval = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, auth: a}
	s.base, s.cancel = context.WithCancel(context.Background())
	s.watch = newWatcher(s)
	s.mcp = mcp.NewServer(&mcp.Implementation{Name: "mess", Title: "MESS exchange, mail bus and leases", Version: "1.0.0"},
		&mcp.ServerOptions{
			Instructions:       instructions(cfg),
			SubscribeHandler:   s.watch.subscribe,
			UnsubscribeHandler: s.watch.unsubscribe,
		})
	if cfg.Exchange != nil {
		s.addExchangeTools()
	}
	if cfg.Bus != nil {
		s.addMailTools()
	}
	if cfg.Leases != nil {
		s.addLeaseTools()
	}
	s.addResources()
	streamable := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s.mcp }, &mcp.StreamableHTTPOptions{
		// Tool calls are answered as one JSON body: cheaper than an event
		// stream, and nothing is sent while a tool runs. Notifications
		// reach the client on its GET stream.
		JSONResponse:        true,
		SessionTimeout:      cfg.SessionTimeout,
		MaxRequestBodyBytes: cfg.MaxBodyBytes,
		// The protection guards servers that trust whoever can reach
		// them. Every request here carries an API key, and messd often
		// sits behind a local reverse proxy whose Host header is public.
		DisableLocalhostProtection: true,
	})
	// The SDK ties a session to the user that opened it, so another key
	// cannot use a session id it learned.
	s.handler = auth.RequireBearerToken(verifyCaller, &auth.RequireBearerTokenOptions{AllowMissingExpiration: true})(streamable)
	s.watch.start()
	return s, nil
}

// caller is the authenticated agent of a request.
type caller struct{ exchange, agent string }

type callerKey struct{}

// verifyCaller hands the identity ServeHTTP established to the SDK, which
// then passes it to every handler as RequestExtra.TokenInfo.
func verifyCaller(ctx context.Context, _ string, _ *http.Request) (*auth.TokenInfo, error) {
	c, ok := ctx.Value(callerKey{}).(caller)
	if !ok {
		return nil, auth.ErrInvalidToken
	}
	return &auth.TokenInfo{UserID: c.exchange + "/" + c.agent}, nil
}

// callerOf returns the agent a request was authenticated as.
func callerOf(extra *mcp.RequestExtra) (caller, bool) {
	if extra == nil || extra.TokenInfo == nil {
		return caller{}, false
	}
	ex, agent, ok := strings.Cut(extra.TokenInfo.UserID, "/")
	return caller{ex, agent}, ok
}

// ServeHTTP authenticates the request and serves MCP. A request without a
// valid key is answered 401 with the HTTP API's JSON error before any MCP
// processing.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.enter() {
		httpx.WriteError(w, http.StatusServiceUnavailable, httpx.CodeUnavailable, "the MCP server is shutting down")
		return
	}
	defer s.leave()
	key, ok := httpx.Bearer(r)
	if !ok {
		w.Header().Set("WWW-Authenticate", "Bearer")
		httpx.WriteError(w, http.StatusUnauthorized, httpx.CodeUnauthorized, "missing bearer token: send Authorization: Bearer <API key>")
		return
	}
	ex, ok := mess.KeyExchange(key)
	if !ok {
		w.Header().Set("WWW-Authenticate", "Bearer")
		httpx.WriteError(w, http.StatusUnauthorized, httpx.CodeUnauthorized, "invalid API key")
		return
	}
	agent, err := s.auth.Authenticate(r.Context(), ex, key)
	if err == nil && !mess.ValidID(agent) {
		err = errors.New("authenticator returned an invalid executor id")
	}
	if err != nil {
		te := s.toolError(err)
		if te.Status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", "Bearer")
		}
		httpx.WriteError(w, te.Status, te.Code, te.Message)
		return
	}
	s.handler.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, caller{ex, agent})))
}

// toolError classifies err and logs the ones that are the server's fault.
func (s *Server) toolError(err error) *ToolError {
	te := classify(err)
	if te.Status >= 500 && te.Code == httpx.CodeInternal {
		s.cfg.Logger.Error("mcp: request failed", "err", err)
	}
	return te
}

// Close ends every MCP session, makes waiting tools return, and stops the
// subscription watchers. Requests after Close are answered 503. It is
// idempotent.
func (s *Server) Close(ctx context.Context) error {
	var err error
	s.once.Do(func() {
		s.mu.Lock()
		s.closed = true
		idle := make(chan struct{})
		if s.inflight == 0 {
			close(idle)
		} else {
			s.idle = idle
		}
		s.mu.Unlock()
		s.cancel()
		s.closeSessions() // which ends their GET streams
		select {
		case <-idle:
		case <-ctx.Done():
			err = ctx.Err()
		}
		// A request that was admitted before Close may have opened a
		// session since.
		s.closeSessions()
		if werr := s.watch.stop(ctx); err == nil {
			err = werr
		}
	})
	return err
}

// enter admits a request unless the server is closed.
func (s *Server) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.inflight++
	return true
}

func (s *Server) leave() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inflight--
	if s.inflight == 0 && s.idle != nil {
		close(s.idle)
		s.idle = nil
	}
}

func (s *Server) closeSessions() {
	for ss := range s.mcp.Sessions() {
		ss.Close()
	}
}

// bound returns ctx, also cancelled when the server closes: tools that
// block must end at shutdown even if their client never goes away.
func (s *Server) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.base, cancel)
	return ctx, func() { stop(); cancel() }
}

func instructions(cfg Config) string {
	var b strings.Builder
	b.WriteString("You act as the executor whose API key this connection uses, inside that key's exchange.")
	if cfg.Exchange != nil {
		b.WriteString(" Ask people for real-world help with create_request, then follow the request with wait_for_change" +
			" (pass the seq you last saw) until it is completed, failed, declined, cancelled or expired;" +
			" answer needs_input with answer_request and needs_confirmation with confirm_request or cancel_request." +
			" As an executor, claim_request, then complete_request, decline_request or fail_request.")
	}
	if cfg.Bus != nil {
		b.WriteString(" Mail other agents with send_mail or publish_mail and read yours with read_inbox, passing the previous next as since.")
	}
	if cfg.Leases != nil {
		b.WriteString(" Take acquire_lease on a file before editing it, pass its token to renew_lease and release_lease, and stop writing once a renewal fails.")
	}
	b.WriteString(" Tool errors are JSON objects with error (a message) and code (invalid_input, unauthorized, forbidden, not_found, conflict, stale_token, not_held, unavailable or internal).")
	return b.String()
}
