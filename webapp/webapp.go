// Package webapp is the MESS exchange's web app for people: a phone-first
// progressive web app in which a person joins an exchange, hears of
// requests as they are posted, claims them and answers with text, a photo
// and their location, asks for help themselves, and manages their profile.
//
// The app is plain HTML, CSS and JavaScript modules embedded in the binary:
// no build step, no CDN, nothing fetched from the internet, so it works on a
// LAN. It talks to the exchange's HTTP API (protocol v1, under
// /api/v1/exchanges/{exchange_id}) with the person's API key, which it keeps
// in the browser's localStorage, and follows the exchange's server-sent
// event stream to update without reloading.
//
// Handler serves it with the defaults; New takes a Config. Mount it at the
// root of the server that serves the API, after the API's routes:
//
//	mux.Handle("/api/", api)
//	mux.Handle("/", webapp.Handler())
//
// It serves:
//
//	GET /                        the app shell (index.html)
//	GET /sw.js                   the service worker (scope: the app's root)
//	GET /manifest.webmanifest    the web app manifest
//	GET /app/...                 scripts, styles and icons
//	GET /app/qr.png?data=…&size= a QR code of data (an invite link), PNG
//
// Every file carries a strong ETag and "Cache-Control: no-cache", so a
// browser revalidates it on each load and picks up a new version of the
// app at once, at the cost of a 304 per file. Other paths are answered 404
// with the API's JSON error body.
package webapp

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/skip2/go-qrcode"

	"github.com/meatspace-exchange/mess/internal/httpx"
	"github.com/meatspace-exchange/mess/internal/ident"
)

//go:embed static
var files embed.FS

// Limits of the QR code endpoint. An invite link is about 100 bytes; the
// limits keep an unauthenticated caller from making the server render large
// images.
const (
	// MaxQRData is the longest text the QR endpoint encodes, in bytes.
	MaxQRData = 512
	// MinQRSize and MaxQRSize bound the image's side in pixels.
	MinQRSize = 64
	MaxQRSize = 1024
	// DefaultQRSize is the side when the request gives none.
	DefaultQRSize = 320
)

// Config configures the app.
type Config struct {
	// APIBase is where the app finds the exchange API: a path on the same
	// origin, without a trailing slash. Empty means "/api/v1".
	APIBase string
	// DefaultExchange pre-fills the exchange id on the join form. Empty
	// means "home".
	DefaultExchange string
}

// asset is one embedded file, ready to serve.
type asset struct {
	body  []byte
	ctype string
	etag  string
	csp   bool
}

type app struct {
	assets map[string]*asset // by URL path
	mod    time.Time
}

var contentTypes = map[string]string{
	".html":        "text/html; charset=utf-8",
	".js":          "text/javascript; charset=utf-8",
	".css":         "text/css; charset=utf-8",
	".svg":         "image/svg+xml",
	".png":         "image/png",
	".webmanifest": "application/manifest+json",
	".json":        "application/json",
}

// contentSecurityPolicy lets the shell load only its own files; images may
// also be data: and blob: URLs (photos and attachments fetched with the key).
const contentSecurityPolicy = "default-src 'self'; img-src 'self' data: blob:; media-src 'self' data: blob:; " +
	"object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Handler returns the app with the default Config.
func Handler() http.Handler {
	h, err := New(Config{})
	if err != nil {
		panic(err) // the defaults are valid; a failure here is a broken build
	}
	return h
}

// New returns the app configured by cfg.
func New(cfg Config) (http.Handler, error) {
	if cfg.APIBase == "" {
		cfg.APIBase = "/api/v1"
	}
	if !strings.HasPrefix(cfg.APIBase, "/") || strings.HasSuffix(cfg.APIBase, "/") || strings.ContainsAny(cfg.APIBase, "\"'<> ?#") {
		return nil, fmt.Errorf("webapp: APIBase %q must be a path starting with / and not ending with /", cfg.APIBase)
	}
	if cfg.DefaultExchange == "" {
		cfg.DefaultExchange = "home"
	}
	if !ident.Valid(cfg.DefaultExchange) {
		return nil, fmt.Errorf("webapp: DefaultExchange %q: use 1-64 letters, digits, '_' or '-'", cfg.DefaultExchange)
	}
	a := &app{assets: map[string]*asset{}, mod: time.Now()}
	err := fs.WalkDir(files, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := files.ReadFile(p)
		if err != nil {
			return err
		}
		urlPath := strings.TrimPrefix(p, "static")
		if urlPath == "/index.html" {
			body = bytes.Replace(body, []byte(`content="/api/v1"`), []byte(`content="`+cfg.APIBase+`"`), 1)
			body = bytes.Replace(body, []byte(`content="home"`), []byte(`content="`+cfg.DefaultExchange+`"`), 1)
		}
		sum := sha256.Sum256(body)
		ct := contentTypes[path.Ext(p)]
		if ct == "" {
			ct = "application/octet-stream"
		}
		a.assets[urlPath] = &asset{body: body, ctype: ct, etag: `"` + hex.EncodeToString(sum[:12]) + `"`, csp: urlPath == "/index.html"}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("webapp: read embedded files: %w", err)
	}
	if a.assets["/index.html"] == nil {
		return nil, errors.New("webapp: index.html missing from the embedded files")
	}
	a.assets["/"] = a.assets["/index.html"]
	return a, nil
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		httpx.WriteError(w, http.StatusMethodNotAllowed, httpx.Code(http.StatusMethodNotAllowed), "method not allowed")
		return
	}
	if r.URL.Path == "/app/qr.png" {
		a.qr(w, r)
		return
	}
	f := a.assets[r.URL.Path]
	if f == nil {
		httpx.WriteError(w, http.StatusNotFound, httpx.Code(http.StatusNotFound), "Not found")
		return
	}
	h := w.Header()
	h.Set("Content-Type", f.ctype)
	h.Set("ETag", f.etag)
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	if f.csp {
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
	}
	if r.URL.Path == "/sw.js" {
		// A service worker at the root may control the whole origin.
		h.Set("Service-Worker-Allowed", "/")
	}
	// ServeContent answers If-None-Match with 304 and handles HEAD and Range.
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.body))
}

// qr renders ?data= as a QR code PNG of ?size= pixels. The data is an
// invite link with its token, so the image is never cached.
func (a *app) qr(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	data := q.Get("data")
	if data == "" || len(data) > MaxQRData {
		httpx.WriteError(w, http.StatusBadRequest, httpx.Code(http.StatusBadRequest), fmt.Sprintf("data must be 1 to %d bytes", MaxQRData))
		return
	}
	size := DefaultQRSize
	if v := q.Get("size"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < MinQRSize || n > MaxQRSize {
			httpx.WriteError(w, http.StatusBadRequest, httpx.Code(http.StatusBadRequest), fmt.Sprintf("size must be an integer from %d to %d", MinQRSize, MaxQRSize))
			return
		}
		size = n
	}
	png, err := qrcode.Encode(data, qrcode.Medium, size)
	if err != nil {
		httpx.WriteError(w, http.StatusBadRequest, httpx.Code(http.StatusBadRequest), "cannot encode data as a QR code")
		return
	}
	h := w.Header()
	h.Set("Content-Type", "image/png")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(png)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(png)
	}
}
