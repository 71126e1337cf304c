package webapp_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/meatspace-exchange/mess/webapp"
)

func get(t *testing.T, h http.Handler, method, target string, hdr map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func TestServesFilesWithETags(t *testing.T) {
	h := webapp.Handler()
	tests := []struct {
		path, ctype string
	}{
		{"/", "text/html; charset=utf-8"},
		{"/index.html", "text/html; charset=utf-8"},
		{"/sw.js", "text/javascript; charset=utf-8"},
		{"/manifest.webmanifest", "application/manifest+json"},
		{"/app/main.js", "text/javascript; charset=utf-8"},
		{"/app/app.css", "text/css; charset=utf-8"},
		{"/app/icon.svg", "image/svg+xml"},
		{"/app/icon-192.png", "image/png"},
	}
	for _, tt := range tests {
		w := get(t, h, "GET", tt.path, nil)
		if w.Code != 200 || w.Header().Get("Content-Type") != tt.ctype {
			t.Errorf("GET %s: %d %q, want 200 %q", tt.path, w.Code, w.Header().Get("Content-Type"), tt.ctype)
			continue
		}
		etag := w.Header().Get("ETag")
		if !regexp.MustCompile(`^"[0-9a-f]{24}"$`).MatchString(etag) || w.Header().Get("Cache-Control") != "no-cache" {
			t.Errorf("GET %s: ETag %q, Cache-Control %q", tt.path, etag, w.Header().Get("Cache-Control"))
		}
		// A browser revalidating an unchanged file gets a 304 and no body.
		if w2 := get(t, h, "GET", tt.path, map[string]string{"If-None-Match": etag}); w2.Code != http.StatusNotModified || w2.Body.Len() != 0 {
			t.Errorf("revalidate %s: %d with %d bytes, want 304", tt.path, w2.Code, w2.Body.Len())
		}
		if w3 := get(t, h, "GET", tt.path, map[string]string{"If-None-Match": `"stale"`}); w3.Code != 200 || !bytes.Equal(w3.Body.Bytes(), w.Body.Bytes()) {
			t.Errorf("GET %s with a stale ETag: %d", tt.path, w3.Code)
		}
		if hw := get(t, h, "HEAD", tt.path, nil); hw.Code != 200 || hw.Body.Len() != 0 {
			t.Errorf("HEAD %s: %d with %d bytes", tt.path, hw.Code, hw.Body.Len())
		}
	}
	w := get(t, h, "GET", "/", nil)
	if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
		t.Errorf("shell CSP %q", csp)
	}
}

func TestUnknownPathsAndMethods(t *testing.T) {
	h := webapp.Handler()
	for _, tt := range []struct {
		method, path string
		code         int
	}{
		{"GET", "/nope", 404},
		{"GET", "/app/", 404},
		{"GET", "/app/../main.go", 404},
		{"GET", "/static/index.html", 404},
		{"POST", "/", 405},
		{"DELETE", "/app/main.js", 405},
	} {
		w := get(t, h, tt.method, tt.path, nil)
		var body struct{ Error, Code string }
		json.Unmarshal(w.Body.Bytes(), &body)
		if w.Code != tt.code || body.Error == "" || body.Code == "" {
			t.Errorf("%s %s: %d %s, want %d with a JSON error", tt.method, tt.path, w.Code, w.Body, tt.code)
		}
	}
}

func TestQRCode(t *testing.T) {
	h := webapp.Handler()
	link := "http://192.0.2.1:3000/#/join/home/inv_0123456789abcdef0123456789abcdef"
	w := get(t, h, "GET", "/app/qr.png?size=300&data="+url.QueryEscape(link), nil)
	if w.Code != 200 || w.Header().Get("Content-Type") != "image/png" || w.Header().Get("Cache-Control") != "no-store" {
		t.Fatalf("QR: %d %v", w.Code, w.Header())
	}
	img, err := png.Decode(w.Body)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != 300 || b.Dy() != 300 {
		t.Errorf("QR is %v, want 300x300", b)
	}
	for _, bad := range []string{
		"",
		"?data=",
		"?data=" + strings.Repeat("x", webapp.MaxQRData+1),
		"?data=x&size=10",
		"?data=x&size=5000",
		"?data=x&size=big",
	} {
		if w := get(t, h, "GET", "/app/qr.png"+bad, nil); w.Code != 400 || !strings.Contains(w.Body.String(), `"code":"invalid_input"`) {
			t.Errorf("QR %q: %d %s, want 400 invalid_input", bad, w.Code, w.Body)
		}
	}
}

func TestConfig(t *testing.T) {
	h, err := webapp.New(webapp.Config{APIBase: "/mess/api/v1", DefaultExchange: "family"})
	if err != nil {
		t.Fatal(err)
	}
	body := get(t, h, "GET", "/", nil).Body.String()
	if !strings.Contains(body, `name="mess-api" content="/mess/api/v1"`) || !strings.Contains(body, `name="mess-exchange" content="family"`) {
		t.Errorf("index.html does not carry the config:\n%s", body)
	}
	if get(t, h, "GET", "/", nil).Header().Get("ETag") == get(t, webapp.Handler(), "GET", "/", nil).Header().Get("ETag") {
		t.Error("a configured shell has the default shell's ETag")
	}
	for _, c := range []webapp.Config{{APIBase: "api"}, {APIBase: "/api/"}, {APIBase: `/a"b`}, {DefaultExchange: "no spaces"}} {
		if _, err := webapp.New(c); err == nil {
			t.Errorf("New(%+v) accepted", c)
		}
	}
}

// The files the shell, the service worker and the manifest name exist, so
// the app is whole when it is offline.
func TestShellReferencesResolve(t *testing.T) {
	h := webapp.Handler()
	read := func(p string) string {
		w := get(t, h, "GET", p, nil)
		if w.Code != 200 {
			t.Fatalf("GET %s: %d", p, w.Code)
		}
		b, _ := io.ReadAll(w.Body)
		return string(b)
	}
	refs := map[string]string{}
	for _, m := range regexp.MustCompile(`(?:href|src)="([^"#]+)"`).FindAllStringSubmatch(read("/"), -1) {
		refs["/"+m[1]] = "index.html"
	}
	sw := read("/sw.js")
	list := regexp.MustCompile(`(?s)const SHELL = \[(.*?)\];`).FindStringSubmatch(sw)
	if list == nil {
		t.Fatal("sw.js has no SHELL list")
	}
	for _, m := range regexp.MustCompile(`'([^']*)'`).FindAllStringSubmatch(list[1], -1) {
		refs["/"+strings.TrimPrefix(m[1], "./")] = "sw.js"
	}
	var man struct {
		StartURL string `json:"start_url"`
		Icons    []struct{ Src string }
	}
	if err := json.Unmarshal([]byte(read("/manifest.webmanifest")), &man); err != nil {
		t.Fatalf("manifest: %v", err)
	}
	for _, i := range man.Icons {
		refs["/"+i.Src] = "manifest"
	}
	// Every module the app imports is in the service worker's list.
	modules := map[string]bool{}
	var walk func(p string)
	walk = func(p string) {
		if modules[p] {
			return
		}
		modules[p] = true
		dir := p[:strings.LastIndex(p, "/")+1]
		for _, m := range regexp.MustCompile(`from '(\.{1,2}/[^']+)'`).FindAllStringSubmatch(read(p), -1) {
			u, _ := url.Parse("http://x" + dir)
			walk(u.ResolveReference(&url.URL{Path: m[1]}).Path)
		}
	}
	walk("/app/main.js")
	for m := range modules {
		if refs[m] != "sw.js" {
			t.Errorf("module %s is not in the service worker's SHELL list", m)
		}
	}
	for p, from := range refs {
		if w := get(t, h, "GET", p, nil); w.Code != 200 {
			t.Errorf("%s names %s: %d", from, p, w.Code)
		}
	}
	if len(modules) < 10 {
		t.Errorf("found only %d modules: %v", len(modules), modules)
	}
}

// Mount the app beside the exchange API; the API's routes are more specific.
func ExampleHandler() {
	mux := http.NewServeMux()
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "the API") })
	mux.Handle("/", webapp.Handler())
	srv := httptest.NewServer(mux)
	defer srv.Close()
	res, err := http.Get(srv.URL + "/")
	if err != nil {
		panic(err)
	}
	res.Body.Close()
	fmt.Println(res.StatusCode, res.Header.Get("Content-Type"))
	// Output: 200 text/html; charset=utf-8
}

// messd serves the app at / beside its API, which keeps its own routes.
func TestServedByMessd(t *testing.T) {
	srv := startServer(t)
	res, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	etag := res.Header.Get("ETag")
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/html; charset=utf-8" || etag == "" {
		t.Fatalf("GET /: %d %v", res.StatusCode, res.Header)
	}
	req, _ := http.NewRequest("GET", srv.URL+"/app/main.js", nil)
	req.Header.Set("If-None-Match", get(t, webapp.Handler(), "GET", "/app/main.js", nil).Header().Get("ETag"))
	if res, err := http.DefaultClient.Do(req); err != nil || res.StatusCode != http.StatusNotModified {
		t.Errorf("revalidating main.js through messd: %v %v", res.StatusCode, err)
	}
	if res, err := http.Head(srv.URL + "/manifest.webmanifest"); err != nil || res.StatusCode != 200 {
		t.Errorf("HEAD manifest: %v %v", res.StatusCode, err)
	}
	var health map[string]any
	if code := srv.do(t, "GET", srv.URL+"/health", "", nil, &health); code != 200 || health["status"] != "ok" {
		t.Errorf("health: %d %v", code, health)
	}
	var e struct{ Error, Code string }
	if code := srv.do(t, "GET", srv.URL+"/nope", "", nil, &e); code != 404 || e.Code != "not_found" {
		t.Errorf("GET /nope: %d %+v", code, e)
	}
	key := srv.register(t, "home", "pat", nil)
	if code := srv.do(t, "GET", srv.api("home")+"/nope", key, nil, &e); code != 404 || e.Error == "" {
		t.Errorf("unknown API path: %d %+v", code, e)
	}
	if code := srv.do(t, "GET", srv.api("home")+"/requests", key, nil, nil); code != 200 {
		t.Errorf("API list: %d", code)
	}
}
