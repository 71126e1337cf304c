package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/meatspace-exchange/mess/internal/httpx"
	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/storage"
)

// Operator endpoints, under /admin, for "messd admin -url": on only when
// MESS_ADMIN_TOKEN is set, and then only for a bearer of that token.

// setupAdmin mounts /admin/... guarded by token; with no token every
// /admin path is 404, as if there were none.
func setupAdmin(e *echo.Echo, svc *mess.Service, token string, logger *slog.Logger) {
	if token == "" {
		notFound := func(ec echo.Context) error {
			httpx.WriteError(ec.Response(), http.StatusNotFound, httpx.CodeNotFound, "Not found")
			return nil
		}
		e.Any("/admin", notFound)
		e.Any("/admin/*", notFound)
		return
	}
	want := sha256.Sum256([]byte(token))
	g := e.Group("/admin", func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(ec echo.Context) error {
			got, _ := httpx.Bearer(ec.Request())
			h := sha256.Sum256([]byte(got)) // same length whatever was sent
			if got == "" || subtle.ConstantTimeCompare(h[:], want[:]) != 1 {
				httpx.WriteError(ec.Response(), http.StatusUnauthorized, httpx.CodeUnauthorized, "a valid operator token (MESS_ADMIN_TOKEN) is required")
				return nil
			}
			return next(ec)
		}
	})
	answer := func(ec echo.Context, v any, err error) error {
		if err != nil {
			writeAdminError(ec.Response(), err, logger)
			return nil
		}
		httpx.WriteJSON(ec.Response(), http.StatusOK, v)
		return nil
	}
	g.GET("/exchanges", func(ec echo.Context) error {
		v, err := svc.AdminExchanges(ec.Request().Context())
		return answer(ec, v, err)
	})
	g.GET("/exchanges/:exchange_id/executors", func(ec echo.Context) error {
		v, err := svc.AdminExecutors(ec.Request().Context(), ec.Param("exchange_id"))
		return answer(ec, v, err)
	})
	g.POST("/exchanges/:exchange_id/owner-keys", func(ec echo.Context) error {
		v, err := svc.AdminOwnerKey(ec.Request().Context(), ec.Param("exchange_id"))
		return answer(ec, v, err)
	})
	g.POST("/exchanges/:exchange_id/invites", func(ec echo.Context) error {
		var body inviteBody
		if err := readOptionalJSON(ec, &body); err != nil {
			writeAdminError(ec.Response(), err, logger)
			return nil
		}
		opts, err := body.options()
		if err != nil {
			writeAdminError(ec.Response(), err, logger)
			return nil
		}
		v, err := svc.AdminInvite(ec.Request().Context(), ec.Param("exchange_id"), opts)
		return answer(ec, v, err)
	})
	g.DELETE("/exchanges/:exchange_id/executors/:executor_id/keys/:key_id", func(ec echo.Context) error {
		err := svc.AdminRevokeKey(ec.Request().Context(), ec.Param("exchange_id"), ec.Param("executor_id"), ec.Param("key_id"))
		return answer(ec, map[string]bool{"revoked": true}, err)
	})
	g.GET("/exchanges/:exchange_id/events", func(ec echo.Context) error {
		w := &lazyNDJSON{w: ec.Response()}
		if err := svc.ExportEvents(ec.Request().Context(), ec.Param("exchange_id"), w); err != nil {
			if !w.started {
				writeAdminError(ec.Response(), err, logger)
				return nil
			}
			// Part of the log is sent: end the response unfinished, so the
			// client sees a broken stream rather than a short export.
			logger.Warn("admin export", "err", err)
			panic(http.ErrAbortHandler)
		}
		if !w.started {
			w.header()
		}
		return nil
	})
}

// lazyNDJSON sets its headers on the first write, so an error found before
// any event is sent can still be answered with a status.
type lazyNDJSON struct {
	w       *echo.Response
	started bool
}

func (l *lazyNDJSON) header() {
	l.started = true
	l.w.Header().Set("Content-Type", "application/x-ndjson")
	l.w.WriteHeader(http.StatusOK)
}

func (l *lazyNDJSON) Write(p []byte) (int, error) {
	if !l.started {
		l.header()
	}
	return l.w.Write(p)
}

// inviteBody is the body of POST /admin/exchanges/{id}/invites.
type inviteBody struct {
	MaxUses int    `json:"max_uses"`
	TTL     string `json:"ttl"` // a Go duration: "72h"
}

func (b inviteBody) options() (mess.InviteOptions, error) {
	opts := mess.InviteOptions{MaxUses: b.MaxUses}
	if b.TTL != "" {
		d, err := time.ParseDuration(b.TTL)
		if err != nil || d <= 0 {
			return opts, httpx.Errorf(http.StatusBadRequest, "ttl: want a positive duration such as 72h, got %q", b.TTL)
		}
		opts.TTL = d
	}
	return opts, nil
}

// readOptionalJSON decodes the body into v; an empty body leaves v alone.
func readOptionalJSON(ec echo.Context, v any) error {
	data, err := httpx.ReadBody(ec.Response(), ec.Request(), 64<<10)
	if err != nil || len(bytes.TrimSpace(data)) == 0 {
		return err
	}
	return httpx.Unmarshal(data, v)
}

// adminStatus maps the service's error kinds to statuses.
var adminStatus = []struct {
	kind   error
	status int
}{
	{mess.ErrInvalid, http.StatusBadRequest},
	{mess.ErrUnauthorized, http.StatusUnauthorized},
	{mess.ErrForbidden, http.StatusForbidden},
	{mess.ErrNotFound, http.StatusNotFound},
	{mess.ErrConflict, http.StatusConflict},
	{mess.ErrTooLarge, http.StatusRequestEntityTooLarge},
	{mess.ErrUnprocessable, http.StatusUnprocessableEntity},
	{mess.ErrClosed, http.StatusServiceUnavailable},
}

func writeAdminError(w http.ResponseWriter, err error, logger *slog.Logger) {
	if he, ok := errors.AsType[*httpx.Error](err); ok {
		httpx.Write(w, he)
		return
	}
	for _, m := range adminStatus {
		if errors.Is(err, m.kind) {
			msg := err.Error()
			if me, ok := errors.AsType[*mess.Error](err); ok {
				msg = me.Message
			}
			httpx.WriteError(w, m.status, httpx.Code(m.status), msg)
			return
		}
	}
	logger.Error("admin request failed", "err", err)
	httpx.WriteError(w, http.StatusInternalServerError, httpx.CodeInternal, "internal error")
}

// The "messd admin" command.

const adminUsage = `usage: messd admin [-url URL] [-storage-type T] [-storage-path P] COMMAND [ARGS]

Commands:
  exchanges                                  list exchanges (JSON)
  executors EXCHANGE                         list an exchange's executors and key ids (JSON)
  owner-key EXCHANGE                         issue a new key to the exchange's owner
  invite [-max-uses N] [-ttl 72h] EXCHANGE   issue an invite to the exchange
  revoke-key EXCHANGE EXECUTOR KEY_ID        revoke one key (even the last)
  export EXCHANGE                            the exchange's events, JSON lines

Without -url the command opens the store itself, as messd would from the
same settings (STORAGE_TYPE, STORAGE_PATH, S3_*), and refuses while a messd
runs on it. With -url it asks that running messd, which must have
MESS_ADMIN_TOKEN set; the same token is read here from MESS_ADMIN_TOKEN.
`

// adminCommand is one parsed "messd admin" command.
type adminCommand struct {
	name     string
	exchange string
	executor string
	keyID    string
	invite   inviteBody
}

// parseAdminCommand checks everything that can be checked before the
// store or server is touched.
func parseAdminCommand(args []string, stderr io.Writer) (adminCommand, error) {
	if len(args) == 0 {
		return adminCommand{}, errors.New("a command is required")
	}
	cmd := adminCommand{name: args[0]}
	rest := args[1:]
	want := map[string]int{"exchanges": 0, "executors": 1, "owner-key": 1, "invite": 1, "revoke-key": 3, "export": 1}
	n, ok := want[cmd.name]
	if !ok {
		return cmd, fmt.Errorf("unknown command %q", cmd.name)
	}
	if cmd.name == "invite" {
		fs := flag.NewFlagSet("messd admin invite", flag.ContinueOnError)
		fs.SetOutput(stderr)
		fs.IntVar(&cmd.invite.MaxUses, "max-uses", 1, "registrations the invite admits (1 to 10000)")
		fs.StringVar(&cmd.invite.TTL, "ttl", "168h", "how long the invite is valid, at most a year")
		if err := fs.Parse(rest); err != nil {
			return cmd, err
		}
		rest = fs.Args()
		if _, err := cmd.invite.options(); err != nil {
			return cmd, err
		}
		if cmd.invite.MaxUses < 1 || cmd.invite.MaxUses > 10000 {
			return cmd, errors.New("-max-uses must be between 1 and 10000")
		}
	}
	if len(rest) != n {
		return cmd, fmt.Errorf("%s takes %d argument(s), got %d", cmd.name, n, len(rest))
	}
	if n > 0 {
		cmd.exchange = rest[0]
		if !mess.ValidID(cmd.exchange) {
			return cmd, fmt.Errorf("invalid exchange id %q", cmd.exchange)
		}
	}
	if n == 3 {
		cmd.executor, cmd.keyID = rest[1], rest[2]
		if !mess.ValidID(cmd.executor) {
			return cmd, fmt.Errorf("invalid executor id %q", cmd.executor)
		}
		if !mess.ValidID(cmd.keyID) {
			return cmd, fmt.Errorf("invalid key id %q", cmd.keyID)
		}
	}
	return cmd, nil
}

// adminMain runs "messd admin". Exit codes: 0 done, 1 refused or failed,
// 2 bad usage.
func adminMain(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fs := flag.NewFlagSet("messd admin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, adminUsage) }
	target := fs.String("url", "", "base URL of a running messd, e.g. http://127.0.0.1:3000; empty: open the store")
	storageType := fs.String("storage-type", "", "storage backend, as messd's -storage-type (STORAGE_TYPE)")
	storagePath := fs.String("storage-path", "", "data directory, as messd's -storage-path (STORAGE_PATH)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cmd, err := parseAdminCommand(fs.Args(), stderr)
	if err != nil {
		fmt.Fprintf(stderr, "messd admin: %v\n\n%s", err, adminUsage)
		return 2
	}
	if *target != "" {
		err = adminRemote(ctx, *target, getenv("MESS_ADMIN_TOKEN"), cmd, stdout)
	} else {
		var storeArgs []string
		if *storageType != "" {
			storeArgs = append(storeArgs, "-storage-type", *storageType)
		}
		if *storagePath != "" {
			storeArgs = append(storeArgs, "-storage-path", *storagePath)
		}
		err = adminLocal(ctx, storeArgs, getenv, cmd, stdout, stderr)
	}
	if err != nil {
		fmt.Fprintln(stderr, "messd admin:", err)
		return 1
	}
	return 0
}

// adminLocal opens the store as messd does and runs cmd on it.
func adminLocal(ctx context.Context, storeArgs []string, getenv func(string) string, cmd adminCommand, stdout, stderr io.Writer) error {
	c, err := parseConfig(storeArgs, getenv, stderr)
	if err != nil {
		return err
	}
	if c.storageType == "filesystem" {
		// Never make an empty store where a mistyped path pointed.
		if fi, err := os.Stat(c.storagePath); err != nil || !fi.IsDir() {
			return fmt.Errorf("no store at %s (STORAGE_PATH): %v", c.storagePath, err)
		}
	}
	store, closeStore, err := openStore(ctx, c)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return fmt.Errorf("a messd is running on %s; stop it, or ask it instead: set MESS_ADMIN_TOKEN on that messd and here and pass -url", c.storagePath)
	}
	if err != nil {
		return err
	}
	defer closeStore()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var fence storage.Fence
	if c.storageType == "s3" {
		// Write only as the store's one writer: a live messd keeps the
		// claim, a crashed one loses it after its timeout.
		owner, err := claimIdle(ctx, store, "messd admin", "the store", c.ownerHeartbeat, c.ownerTimeout, 0, stderr)
		if err != nil {
			return fmt.Errorf("a messd is writing this store; ask it instead: set MESS_ADMIN_TOKEN on that messd and here and pass -url (%w)", err)
		}
		defer owner.Release(context.WithoutCancel(ctx))
		fence = owner
	}
	svc, err := mess.New(ctx, mess.Config{Store: store, Fence: fence, Logger: quiet})
	if err != nil {
		return err
	}
	defer svc.Close(context.WithoutCancel(ctx))
	var v any
	switch cmd.name {
	case "exchanges":
		v, err = svc.AdminExchanges(ctx)
	case "executors":
		v, err = svc.AdminExecutors(ctx, cmd.exchange)
	case "owner-key":
		v, err = svc.AdminOwnerKey(ctx, cmd.exchange)
	case "invite":
		var opts mess.InviteOptions
		if opts, err = cmd.invite.options(); err == nil {
			v, err = svc.AdminInvite(ctx, cmd.exchange, opts)
		}
	case "revoke-key":
		err = svc.AdminRevokeKey(ctx, cmd.exchange, cmd.executor, cmd.keyID)
		v = map[string]bool{"revoked": true}
	case "export":
		return svc.ExportEvents(ctx, cmd.exchange, stdout)
	}
	if err != nil {
		return err
	}
	return printJSON(stdout, v)
}

func printJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// adminRemote runs cmd against a running messd's /admin endpoints.
func adminRemote(ctx context.Context, base, token string, cmd adminCommand, stdout io.Writer) error {
	if token == "" {
		return errors.New("MESS_ADMIN_TOKEN is not set: it must hold the running messd's operator token")
	}
	u, err := url.Parse(strings.TrimRight(base, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("-url: want http(s)://host:port, got %q", base)
	}
	ex := url.PathEscape(cmd.exchange)
	var method, path string
	var body []byte
	switch cmd.name {
	case "exchanges":
		method, path = http.MethodGet, "/admin/exchanges"
	case "executors":
		method, path = http.MethodGet, "/admin/exchanges/"+ex+"/executors"
	case "owner-key":
		method, path = http.MethodPost, "/admin/exchanges/"+ex+"/owner-keys"
	case "invite":
		method, path = http.MethodPost, "/admin/exchanges/"+ex+"/invites"
		body, _ = json.Marshal(cmd.invite)
	case "revoke-key":
		method, path = http.MethodDelete, "/admin/exchanges/"+ex+"/executors/"+url.PathEscape(cmd.executor)+"/keys/"+url.PathEscape(cmd.keyID)
	case "export":
		method, path = http.MethodGet, "/admin/exchanges/"+ex+"/events"
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String()+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&e)
		if e.Error == "" {
			e.Error = http.StatusText(resp.StatusCode)
		}
		return fmt.Errorf("%s: %d %s", u.Host, resp.StatusCode, e.Error)
	}
	_, err = io.Copy(stdout, resp.Body)
	return err
}
