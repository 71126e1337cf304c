// Command messd serves the MESS protocol v1 exchange, the mail bus, the
// lease service and notifications over HTTP and WebSocket. It only wires
// the packages' handlers into echo; each package serves its own API.
//
// Configuration comes from flags, each defaulting to an environment variable
// (the names MESS protocol v1 servers use, where they have one);
// run messd -h for the list. A setting that does not parse stops messd
// with one line naming it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/ownership"
	"github.com/meatspace-exchange/mess/storage"
)

func main() {
	if code, ok := subcommand(os.Args[1:], os.Getenv, os.Stdout, os.Stderr); ok {
		os.Exit(code)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) > 1 && os.Args[1] == "mcp" {
		os.Exit(bridgeMain(ctx))
	}
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stderr, nil); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "messd:", err)
		os.Exit(1)
	}
}

// config is everything messd reads from flags and the environment.
type config struct {
	addr              string
	storageType       string
	storagePath       string
	capabilitiesDir   string
	openRegistration  bool
	openExchanges     []string
	allowedExchanges  []string
	registrationToken string
	corsOrigins       []string
	maxBody           int64
	shutdownTimeout   time.Duration
	logLevel          slog.Level
	pprofAddr         string
	metricsAddr       string // "": /metrics on the API listener
	adminToken        string // "": no /admin endpoints
	s3                s3Settings
	ownerHeartbeat    time.Duration
	ownerTimeout      time.Duration

	// Per-connection and per-request limits (see guard and capListener).
	readHeaderTimeout time.Duration
	bodyTimeout       time.Duration
	writeTimeout      time.Duration
	idleTimeout       time.Duration
	maxConnsPerIP     int // < 0: no cap
	trustProxy        bool
	registerRate      int // per minute; < 0: no limit
	registerBurst     int
	maxExchanges      int // < 0: no cap
	maxMessage        int
	maxAttachments    int64 // per member; < 0: no limit
	eventBuffer       int
	eventBufferBytes  int
}

func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	env := func(k, def string) string {
		if v := getenv(k); v != "" {
			return v
		}
		return def
	}
	vars := envReader{getenv: getenv}
	openDefault := vars.boolean("MESS_OPEN_REGISTRATION", false)
	maxBodyDefault := vars.integer("MAX_BODY_BYTES", 10<<20, false)
	useSSL := vars.boolean("S3_USE_SSL", false)
	heartbeat := vars.duration("MESS_OWNER_HEARTBEAT", 2*time.Second, false)
	ownerTimeout := vars.duration("MESS_OWNER_TIMEOUT", 10*time.Second, false)
	// What one client or member can make the server hold (README:
	// Security model). Environment only:
	//
	//	MESS_READ_HEADER_TIMEOUT   time to send request headers (default 10s)
	//	MESS_BODY_TIMEOUT          time to send a request body (default 60s)
	//	MESS_WRITE_TIMEOUT         time for one write to a client, streams too (default 30s)
	//	MESS_IDLE_TIMEOUT          an idle keep-alive connection is closed (default 60s)
	//	MESS_MAX_CONNS_PER_IP      open connections per client address (default 256; negative: none)
	//	MESS_TRUST_PROXY_HEADERS   registrations count under X-Forwarded-For's last address (default false)
	//	MESS_REGISTER_RATE         anonymous registrations a minute per address (default 30; negative: none)
	//	MESS_REGISTER_BURST        ... of which at once (default 30)
	//	MESS_MAX_EXCHANGES         exchanges on the server (default 10000; negative: none)
	//	MESS_MAX_MESSAGE_BYTES     a request, message or profile besides attachments (default 256 KiB)
	//	MESS_MAX_ATTACHMENT_BYTES  attachment data per member of an exchange (default 256 MiB; negative: none)
	//	MESS_EVENT_BUFFER          events kept per exchange for resuming streams (default 10000)
	//	MESS_EVENT_BUFFER_BYTES    the same, by size (default 8 MiB)
	limits := config{
		readHeaderTimeout: vars.duration("MESS_READ_HEADER_TIMEOUT", 10*time.Second, false),
		bodyTimeout:       vars.duration("MESS_BODY_TIMEOUT", time.Minute, false),
		writeTimeout:      vars.duration("MESS_WRITE_TIMEOUT", 30*time.Second, false),
		idleTimeout:       vars.duration("MESS_IDLE_TIMEOUT", time.Minute, false),
		maxConnsPerIP:     int(vars.integer("MESS_MAX_CONNS_PER_IP", 256, negativeDisables)),
		trustProxy:        vars.boolean("MESS_TRUST_PROXY_HEADERS", false),
		registerRate:      int(vars.integer("MESS_REGISTER_RATE", 30, negativeDisables)),
		registerBurst:     int(vars.integer("MESS_REGISTER_BURST", 30, false)),
		maxExchanges:      int(vars.integer("MESS_MAX_EXCHANGES", 10000, negativeDisables)),
		maxMessage:        int(vars.integer("MESS_MAX_MESSAGE_BYTES", 256<<10, false)),
		maxAttachments:    vars.integer("MESS_MAX_ATTACHMENT_BYTES", 256<<20, negativeDisables),
		eventBuffer:       int(vars.integer("MESS_EVENT_BUFFER", 10000, false)),
		eventBufferBytes:  int(vars.integer("MESS_EVENT_BUFFER_BYTES", 8<<20, false)),
	}
	if vars.err != nil {
		return config{}, vars.err
	}
	fs := flag.NewFlagSet("messd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	port := fs.String("port", env("PORT", "3000"), "TCP port to listen on (PORT)")
	addr := fs.String("addr", env("ADDR", ""), "listen address host:port; overrides -port (ADDR)")
	storageType := fs.String("storage-type", env("STORAGE_TYPE", "filesystem"), "storage backend: filesystem or s3 (STORAGE_TYPE)")
	storagePath := fs.String("storage-path", env("STORAGE_PATH", "./data"), "data directory for the filesystem backend (STORAGE_PATH)")
	s3 := s3Flags(fs, env, useSSL)
	ownerHB := fs.Duration("owner-heartbeat", heartbeat, "how often the writer renews its owner record on S3 (MESS_OWNER_HEARTBEAT)")
	ownerTO := fs.Duration("owner-timeout", ownerTimeout, "how long a standby waits for a silent writer before taking over (MESS_OWNER_TIMEOUT)")
	capDir := fs.String("capabilities-dir", env("CAPABILITIES_DIR", "./capabilities"), "directory of capability YAML files (CAPABILITIES_DIR)")
	open := fs.Bool("open-registration", openDefault, "let anyone register in any exchange without an invite (MESS_OPEN_REGISTRATION=true)")
	openEx := fs.String("open-exchanges", env("MESS_OPEN_EXCHANGES", ""), "comma-separated exchanges open to registration without invites (MESS_OPEN_EXCHANGES)")
	allowed := fs.String("allowed-exchanges", env("MESS_ALLOWED_EXCHANGES", ""), "comma-separated exchanges that may exist; empty allows any (MESS_ALLOWED_EXCHANGES)")
	regToken := fs.String("registration-token", env("MESS_REGISTRATION_TOKEN", ""), "server-wide token that admits a registration to any exchange (MESS_REGISTRATION_TOKEN)")
	cors := fs.String("cors-origins", env("CORS_ORIGINS", "*"), "comma-separated allowed CORS origins (CORS_ORIGINS)")
	maxBody := fs.Int64("max-body-bytes", maxBodyDefault, "largest request body accepted (MAX_BODY_BYTES)")
	shutdown := fs.Duration("shutdown-timeout", 10*time.Second, "how long shutdown waits for requests in flight")
	level := fs.String("log-level", env("LOG_LEVEL", "info"), "debug, info, warn or error (LOG_LEVEL)")
	pprofAddr := fs.String("pprof-addr", env("PPROF_ADDR", ""), "serve Go runtime profiles (net/http/pprof) on this address, for example 127.0.0.1:6060; off when empty (PPROF_ADDR)")
	metricsAddr := fs.String("metrics-addr", env("METRICS_ADDR", ""), "serve Prometheus /metrics on this address instead of the API's, for example :9090 (METRICS_ADDR)")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	c := config{
		addr:              *addr,
		storageType:       *storageType,
		storagePath:       *storagePath,
		capabilitiesDir:   *capDir,
		openRegistration:  *open,
		openExchanges:     splitList(*openEx),
		allowedExchanges:  splitList(*allowed),
		registrationToken: *regToken,
		corsOrigins:       splitList(*cors),
		maxBody:           *maxBody,
		shutdownTimeout:   *shutdown,
		pprofAddr:         *pprofAddr,
		metricsAddr:       *metricsAddr,
		// Environment only, so it is never on a command line: turns on
		// the /admin endpoints for "messd admin -url" (docs/operations.md).
		adminToken:        getenv("MESS_ADMIN_TOKEN"),
		s3:                *s3,
		ownerHeartbeat:    *ownerHB,
		ownerTimeout:      *ownerTO,
		readHeaderTimeout: limits.readHeaderTimeout,
		bodyTimeout:       limits.bodyTimeout,
		writeTimeout:      limits.writeTimeout,
		idleTimeout:       limits.idleTimeout,
		maxConnsPerIP:     limits.maxConnsPerIP,
		trustProxy:        limits.trustProxy,
		registerRate:      limits.registerRate,
		registerBurst:     limits.registerBurst,
		maxExchanges:      limits.maxExchanges,
		maxMessage:        limits.maxMessage,
		maxAttachments:    limits.maxAttachments,
		eventBuffer:       limits.eventBuffer,
		eventBufferBytes:  limits.eventBufferBytes,
	}
	switch c.storageType {
	case "filesystem", "fs", "":
		c.storageType = "filesystem"
	case "s3":
	default:
		return config{}, fmt.Errorf("STORAGE_TYPE: want filesystem or s3, got %q", c.storageType)
	}
	if c.addr == "" {
		p, err := strconv.Atoi(*port)
		if err != nil || p < 0 || p > 65535 {
			return config{}, fmt.Errorf("invalid port %q", *port)
		}
		c.addr = ":" + *port
	}
	if c.maxBody <= 0 {
		return config{}, errors.New("max-body-bytes must be positive")
	}
	if err := c.logLevel.UnmarshalText([]byte(*level)); err != nil {
		return config{}, fmt.Errorf("invalid log level %q", *level)
	}
	return c, nil
}

// s3Flags defines the S3 settings' flags on fs, each defaulting to its
// variable; the result is filled in when fs is parsed. messd and
// "messd migrate" share them.
func s3Flags(fs *flag.FlagSet, env func(k, def string) string, useSSL bool) *s3Settings {
	s := new(s3Settings)
	fs.StringVar(&s.endpoint, "s3-endpoint", env("S3_ENDPOINT", ""), "S3 API host:port, or a URL (S3_ENDPOINT)")
	fs.StringVar(&s.bucket, "s3-bucket", env("S3_BUCKET", ""), "bucket, which must exist (S3_BUCKET)")
	fs.StringVar(&s.accessKey, "s3-access-key", env("S3_ACCESS_KEY", ""), "access key (S3_ACCESS_KEY)")
	fs.StringVar(&s.secretKey, "s3-secret-key", env("S3_SECRET_KEY", ""), "secret key (S3_SECRET_KEY)")
	fs.StringVar(&s.region, "s3-region", env("S3_REGION", ""), "bucket region (S3_REGION)")
	fs.StringVar(&s.prefix, "s3-prefix", env("S3_PREFIX", ""), "key prefix inside the bucket (S3_PREFIX)")
	fs.BoolVar(&s.useSSL, "s3-use-ssl", useSSL, "use HTTPS to reach S3 (S3_USE_SSL=true)")
	return s
}

func splitList(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// openStore opens the configured backend and, for the filesystem, takes an
// exclusive lock on the directory: the in-memory projections assume one
// server per data directory.
func openStore(ctx context.Context, c config) (storage.Store, func(), error) {
	switch c.storageType {
	case "filesystem":
		fs, err := storage.NewFS(c.storagePath)
		if err != nil {
			return nil, nil, err
		}
		f, err := os.OpenFile(filepath.Join(fs.Root(), ".lock", "messd"), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			fs.Close()
			return nil, nil, err
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			fs.Close()
			return nil, nil, fmt.Errorf("%s is in use by another messd: %w", fs.Root(), err)
		}
		return fs, func() { f.Close(); fs.Close() }, nil
	case "s3":
		st, err := openS3(ctx, c.s3)
		return st, func() {}, err
	}
	return nil, nil, fmt.Errorf("unknown STORAGE_TYPE %q", c.storageType)
}

// run starts the server and blocks until ctx ends, then shuts down in
// order: stop accepting, drain requests, close services, close storage.
// ready, if not nil, receives the listening address.
func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer, ready chan<- string) error {
	c, err := parseConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: c.logLevel}))
	caps, err := mess.LoadCapabilities(os.DirFS(c.capabilitiesDir))
	if err != nil {
		return err
	}
	store, closeStore, err := openStore(ctx, c)
	if err != nil {
		return err
	}
	defer closeStore()

	// Listen at once, so a supervisor sees this process alive while it
	// loads or waits as a standby; requests get 503 until it serves.
	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		return err
	}
	front := &handoff{storage: c.storageType}
	front.role.Store("starting")
	// Requests that wait (long-polls, event streams, sockets) end when
	// this context is cancelled at shutdown.
	baseCtx, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	if c.maxConnsPerIP > 0 {
		ln = newCapListener(ln, c.maxConnsPerIP)
	}
	// No ReadTimeout or WriteTimeout: they would end long-polls and event
	// streams. guard puts deadlines on bodies and on each write instead.
	srv := &http.Server{
		Handler:           guard(front, c.maxBody, c.bodyTimeout, c.writeTimeout),
		ReadHeaderTimeout: c.readHeaderTimeout,
		IdleTimeout:       c.idleTimeout,
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	defer srv.Close()

	if c.pprofAddr != "" {
		stopProf, err := servePprof(c.pprofAddr, logger)
		if err != nil {
			return err
		}
		defer stopProf()
	}
	for {
		drain := func(ctx context.Context) {
			cancelBase()
			if serr := srv.Shutdown(ctx); serr != nil {
				logger.Warn("http shutdown", "err", serr)
			}
		}
		replaced, err := serveTerm(ctx, c, store, caps, ln.Addr().String(), front, errc, drain, logger, getenv, ready)
		ready = nil // announced once
		if !replaced || ctx.Err() != nil {
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			return err
		}
		// Another messd writes the store now: wait to take over again.
		logger.Warn("replaced as the writer; waiting as a standby", "err", err)
	}
}

// serveTerm is one term of this process as the store's writer: on a
// shared store (S3), where several messd may run and one writes while the
// others wait until it goes silent, it first claims the owner record (a
// directory is kept by its lock instead). It builds the services, serves
// them until ctx ends, the server fails, or another messd takes over
// (replaced), and closes them. On the way out it drains the HTTP server
// (drain) before closing the services. A replaced writer answers nothing
// more: its requests in flight are cancelled, its WebSockets closed with a
// try-again code, and the listener stays up for the next term.
func serveTerm(ctx context.Context, c config, store storage.Store, caps mess.Catalogue, addr string, front *handoff,
	errc <-chan error, drain func(context.Context), logger *slog.Logger, getenv func(string) string, ready chan<- string) (replaced bool, err error) {
	var owner *ownership.Ownership
	var fence storage.Fence // nil unless owner is set: a nil *Ownership is not a nil Fence
	var lost <-chan struct{}
	if c.storageType == "s3" {

		if owner, err = claimWriter(ctx, store, addr, c.ownerHeartbeat, c.ownerTimeout, &front.role, logger); err != nil {
			if ctx.Err() != nil {
				return false, nil // told to stop while a standby: nothing to shut down
			}
			return false, err
		}
		// Released after the last write on the way out (below), or here
		// when start-up fails, so the heartbeat never outlives the term.
		defer func() {
			if owner != nil {
				if rerr := owner.Release(context.Background()); rerr != nil {
					logger.Warn("release the owner record", "err", rerr)
				}
			}
		}()
		lost = owner.Lost()
		fence = owner
		front.role.Store("starting")
		logger.Info("writing the store", "epoch", owner.Epoch())
	}

	validate, err := profileValidator(getenv)
	if err != nil {
		return false, err
	}
	start := time.Now()
	svc, err := mess.New(ctx, mess.Config{
		ValidateProfile:    validate,
		Store:              store,
		Fence:              fence,
		Logger:             logger,
		OpenRegistration:   c.openRegistration,
		OpenExchanges:      c.openExchanges,
		AllowedExchanges:   c.allowedExchanges,
		RegistrationToken:  c.registrationToken,
		MaxExchanges:       c.maxExchanges,
		MaxMessageBytes:    c.maxMessage,
		MaxAttachmentBytes: c.maxAttachments,
		EventBuffer:        c.eventBuffer,
		EventBufferBytes:   c.eventBufferBytes,
	})
	if err != nil {
		return false, err
	}
	logger.Info("state rebuilt", "took", time.Since(start).Round(time.Millisecond))

	e, closers, err := newServer(c, svc, caps, store, fence, logger, getenv)
	if err != nil {
		svc.Close(context.Background())
		return false, err
	}
	// Requests of this term end with it, even those that wait (long-polls,
	// event streams).
	tm := newTerm(e)
	defer tm.end()
	front.serve(tm)
	logger.Info("messd listening", "addr", addr, "storage", c.storageType, "path", c.storagePath)
	if ready != nil {
		ready <- addr
	}
	select {
	case err = <-errc:
	case <-ctx.Done():
	case <-lost:
		// Another messd took over: acknowledge nothing more. The fence
		// already refuses every request; end those still in flight.
		err, replaced = owner.Err(), true
		front.stop()
		tm.end()
	}
	logger.Info("closing the services")
	sctx, cancel := context.WithTimeout(context.Background(), c.shutdownTimeout)
	defer cancel()
	if !replaced {
		tm.end()
		drain(sctx)
	}
	for i := len(closers) - 1; i >= 0; i-- {
		if cerr := closers[i](sctx); cerr != nil {
			logger.Warn("close service", "err", cerr)
		}
	}
	tm.wait(sctx)
	if cerr := svc.Close(sctx); cerr != nil {
		logger.Warn("close exchange", "err", cerr)
	}
	if owner != nil && !replaced {
		// After the last write: a standby may take over at once.
		if rerr := owner.Release(sctx); rerr != nil {
			logger.Warn("release the owner record", "err", rerr)
		}
		owner = nil
	}
	return replaced, err
}

// servePprof serves the runtime profiles on their own listener, apart from
// the API, so they are never exposed on the API's address by accident.
func servePprof(addr string, logger *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("pprof listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	logger.Info("profiles served", "addr", ln.Addr().String())
	return func() { srv.Close() }, nil
}
