package webapp_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"

	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/network"
	cdppage "github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"go.uber.org/goleak"
)

// The browser tests run the real server binary as a process and drive
// Debian's Chromium against it, so they exercise what a person's phone
// does: no part of cmd/messd is imported.

const chromiumPath = "/usr/bin/chromium"

var (
	tmpRoot string

	buildOnce sync.Once
	messdBin  string
	buildErr  error

	browserOnce   sync.Once
	browserCtx    context.Context
	browserErr    error
	stopBrowser   = func() {}
	chromiumSetup sync.Mutex
)

type mainRunner struct{ m *testing.M }

func (r mainRunner) Run() int {
	var err error
	tmpRoot, err = os.MkdirTemp("", "webapp-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmpRoot)
	code := r.m.Run()
	stopBrowser()
	return code
}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(mainRunner{m})
}

// messd builds the server once per test binary.
func messd(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		messdBin = filepath.Join(tmpRoot, "messd")
		cmd := exec.Command("go", "build", "-o", messdBin, "github.com/meatspace-exchange/mess/cmd/messd")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/messd: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return messdBin
}

// ensureChromium installs Debian's chromium when it is missing. It never
// skips: a machine that cannot install it fails the test with the reason.
func ensureChromium() error {
	chromiumSetup.Lock()
	defer chromiumSetup.Unlock()
	if _, err := os.Stat(chromiumPath); err == nil {
		return nil
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("%s is missing and the tests are not running as root to apt-get install it; install the chromium package", chromiumPath)
	}
	for _, args := range [][]string{{"update"}, {"install", "-y", "--no-install-recommends", "chromium"}} {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			tail := out
			if len(tail) > 2000 {
				tail = tail[len(tail)-2000:]
			}
			return fmt.Errorf("apt-get %s: %v\n%s", strings.Join(args, " "), err, tail)
		}
	}
	if _, err := os.Stat(chromiumPath); err != nil {
		return fmt.Errorf("apt-get install chromium left no %s: %v", chromiumPath, err)
	}
	return nil
}

// theBrowser starts one headless Chromium for the test binary; each page
// gets its own browser context (cookies, storage and cache apart).
func theBrowser(t *testing.T) context.Context {
	t.Helper()
	browserOnce.Do(func() {
		if browserErr = ensureChromium(); browserErr != nil {
			return
		}
		dir, err := os.MkdirTemp(tmpRoot, "profile-")
		if err != nil {
			browserErr = err
			return
		}
		opts := append(chromedp.DefaultExecAllocatorOptions[:],
			chromedp.ExecPath(chromiumPath),
			chromedp.NoSandbox,
			chromedp.DisableGPU,
			chromedp.Flag("disable-quic", true),
			chromedp.Flag("no-first-run", true),
			chromedp.Flag("disable-background-networking", true),
			chromedp.Flag("disable-component-update", true),
			chromedp.Flag("disable-sync", true),
			chromedp.Flag("disable-features", "Translate,MediaRouter,OptimizationHints,AutofillServerCommunication"),
			chromedp.UserDataDir(dir),
			chromedp.WindowSize(1280, 900),
		)
		allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
		ctx, cancel := chromedp.NewContext(allocCtx)
		if err := chromedp.Do(ctx); err != nil {
			cancel()
			cancelAlloc()
			browserErr = fmt.Errorf("start chromium: %w", err)
			return
		}
		browserCtx = ctx
		stopBrowser = func() { cancel(); cancelAlloc() }
	})
	if browserErr != nil {
		t.Fatal(browserErr)
	}
	return browserCtx
}

// server is a messd process with its own data directory.
type server struct {
	URL   string
	cmd   *exec.Cmd
	mu    sync.Mutex
	log   bytes.Buffer
	ntfy  *httptest.Server
	pushy chan string // "path body auth=Authorization" of what the fake ntfy server received
	stop  func()      // ends the process; safe to call again
}

var listening = regexp.MustCompile(`msg="messd listening" addr=(\S+)`)

// startServer runs messd on a free loopback port. Notifications go only
// to a local fake ntfy server.
func startServer(t *testing.T, env ...string) *server {
	t.Helper()
	bin := messd(t)
	s := &server{pushy: make(chan string, 64)}
	s.ntfy = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		select {
		case s.pushy <- r.URL.Path + " " + string(b) + " auth=" + r.Header.Get("Authorization"):
		default:
		}
	}))
	t.Cleanup(s.ntfy.Close)
	capDir := t.TempDir()
	os.WriteFile(filepath.Join(capDir, "caps.yaml"), []byte("id: photo:capture\ndescription: Can take photos\ntags: [camera]\n---\nid: drive\ndescription: Can drive a car\n---\nid: home:door\ndescription: Can reach the front door\n"), 0o644)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(),
		"ADDR=127.0.0.1:0",
		"STORAGE_PATH="+t.TempDir(),
		"CAPABILITIES_DIR="+capDir,
		"NOTIFY_ALLOW_LOOPBACK=true",
		"NOTIFY_NTFY_SERVER="+s.ntfy.URL,
		"NOTIFY_MAX_ATTEMPTS=1",
		"LOG_LEVEL=info",
	)
	cmd.Env = append(cmd.Env, env...)
	dieWithParent(cmd)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.cmd = cmd
	addr := make(chan string, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.log.WriteString(line + "\n")
			s.mu.Unlock()
			if m := listening.FindStringSubmatch(line); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
	}()
	s.stop = sync.OnceFunc(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		cmd.Wait()
	})
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			s.mu.Lock()
			t.Logf("messd log:\n%s", s.log.String())
			s.mu.Unlock()
		}
	})
	select {
	case a := <-addr:
		s.URL = "http://" + a
	case <-done:
		t.Fatalf("messd exited before listening:\n%s", s.log.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("messd did not start listening in 60s:\n%s", s.log.String())
	}
	return s
}

func (s *server) api(exchange string) string { return s.URL + "/api/v1/exchanges/" + exchange }

// do sends a JSON API request and decodes the answer into out.
func (s *server) do(t *testing.T, method, url, key string, body, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %d %s: %v", method, url, res.StatusCode, b, err)
		}
	}
	return res.StatusCode
}

// must is do that fails the test on a status other than want.
func (s *server) must(t *testing.T, want int, method, url, key string, body, out any) {
	t.Helper()
	var raw json.RawMessage
	if code := s.do(t, method, url, key, body, &raw); code != want {
		t.Fatalf("%s %s = %d %s, want %d", method, url, code, raw, want)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatal(err)
		}
	}
}

// register adds an executor through the API and returns its key.
func (s *server) register(t *testing.T, exchange, id string, extra map[string]any) string {
	t.Helper()
	body := map[string]any{"executor_id": id, "display_name": strings.ToUpper(id[:1]) + id[1:]}
	for k, v := range extra {
		body[k] = v
	}
	var res struct {
		APIKey string `json:"api_key"`
	}
	s.must(t, http.StatusCreated, "POST", s.api(exchange)+"/register", "", body, &res)
	return res.APIKey
}

// invite makes an invite as the owner and returns its token.
func (s *server) invite(t *testing.T, exchange, ownerKey string) string {
	t.Helper()
	var inv struct{ Token string }
	s.must(t, http.StatusCreated, "POST", s.api(exchange)+"/invites", ownerKey, map[string]any{"max_uses": 1}, &inv)
	return inv.Token
}

func (s *server) create(t *testing.T, exchange, key string, req map[string]any) string {
	t.Helper()
	var res struct{ Ref string }
	s.must(t, http.StatusCreated, "POST", s.api(exchange)+"/requests", key, req, &res)
	return res.Ref
}

type thread struct {
	Ref         string          `json:"ref"`
	Status      string          `json:"status"`
	ExecutorID  *string         `json:"executor_id"`
	RequestorID string          `json:"requestor_id"`
	Seq         int64           `json:"seq"`
	Messages    []threadMessage `json:"messages"`
	History     []historyEntry  `json:"history"`
}

type historyEntry struct {
	ActorID   string `json:"actor_id"`
	Type      string `json:"type"`
	OldStatus string `json:"old_status"`
	NewStatus string `json:"new_status"`
	Message   string `json:"message"`
}

type threadMessage struct {
	From string          `json:"from"`
	Mess json.RawMessage `json:"mess"`
}

func (s *server) thread(t *testing.T, exchange, key, ref string) thread {
	t.Helper()
	var res struct{ Thread thread }
	s.must(t, http.StatusOK, "GET", s.api(exchange)+"/requests/"+ref, key, nil, &res)
	return res.Thread
}

// page is one browser tab in a browser context of its own.
type page struct {
	t   *testing.T
	ctx context.Context
	srv *server

	mu         sync.Mutex
	exceptions []string
}

type viewport struct {
	w, h   int64
	mobile bool
}

var (
	phone   = viewport{390, 844, true}
	desktop = viewport{1280, 800, false}
)

// newPage opens a tab with its own storage, sized as vp. Uncaught
// exceptions in the page fail the test; dialogs (confirm) are accepted.
func newPage(t *testing.T, srv *server, vp viewport) *page {
	t.Helper()
	root := theBrowser(t)
	ctx, cancel := chromedp.NewContext(root, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	p := &page{t: t, ctx: ctx, srv: srv}
	exc := chromedp.Events(ctx, runtime.ExceptionThrown)
	dialogs := chromedp.Events(ctx, cdppage.JavascriptDialogOpening)
	opts := []chromedp.EmulateViewportOption{chromedp.EmulateScale(1)}
	if vp.mobile {
		opts = append(opts, chromedp.EmulateMobile, chromedp.EmulatePortrait)
	}
	// A Content-Security-Policy violation is reported as an uncaught
	// exception, so it fails the test like any other.
	cspWatch := chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, cdppage.AddScriptToEvaluateOnNewDocument, cdppage.AddScriptToEvaluateOnNewDocumentParams{Source: `
addEventListener('securitypolicyviolation', (e) => setTimeout(() => { throw new Error('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI); }));`})
		return err
	})
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(vp.w, vp.h, opts...), cspWatch); err != nil {
		t.Fatalf("open tab: %v", err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for ev, err := range exc {
			if err != nil {
				return
			}
			p.mu.Lock()
			p.exceptions = append(p.exceptions, exceptionText(ev))
			p.mu.Unlock()
		}
	})
	wg.Go(func() {
		for _, err := range dialogs {
			if err != nil {
				return
			}
			chromedp.Call(ctx, cdppage.HandleJavaScriptDialog, cdppage.HandleJavaScriptDialogParams{Accept: true})
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, e := range p.exceptions {
			t.Errorf("uncaught exception in the page: %s", e)
		}
	})
	return p
}

func exceptionText(ev runtime.EventExceptionThrown) string {
	d := ev.ExceptionDetails
	if d == nil {
		return "?"
	}
	msg := d.Text
	if d.Exception != nil && d.Exception.Description != "" {
		msg += " " + d.Exception.Description
	}
	return fmt.Sprintf("%s (%s:%d)", msg, d.URL, d.LineNumber)
}

// stepTimeout bounds one step of a test: generous, for a busy machine.
const stepTimeout = 60 * time.Second

// run runs actions and fails the test, with a screenshot path in the
// log, when one fails.
func (p *page) run(what string, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		p.t.Fatalf("%s: %v%s", what, err, p.debug())
	}
}

// debug describes the page for a failure message.
func (p *page) debug() string {
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	text, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + document.body.innerText.slice(0, 3000)`))
	path := filepath.Join(os.TempDir(), fmt.Sprintf("webapp-fail-%d.png", time.Now().UnixNano()))
	if png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot()); err == nil {
		os.WriteFile(path, png, 0o644)
	}
	return fmt.Sprintf("\npage (screenshot %s):\n%s", path, text)
}

// eval evaluates JavaScript (awaiting a promise) and decodes the result.
func eval[T any](p *page, js string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js, chromedp.EvalAwaitPromise))
	if err != nil {
		p.t.Fatalf("evaluate %q: %v%s", js, err, p.debug())
	}
	return v
}

// waitJS waits until a JavaScript expression is truthy.
func (p *page) waitJS(what, js string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](js, chromedp.WithPollingInterval(50*time.Millisecond))); err != nil {
		p.t.Fatalf("waiting for %s (%s): %v%s", what, js, err, p.debug())
	}
}

// waitText waits until an element's text contains want.
func (p *page) waitText(sel, want string) {
	p.t.Helper()
	js := fmt.Sprintf(`(() => { const e = document.querySelector(%q); return !!e && e.offsetParent !== null && e.textContent.includes(%q); })()`, sel, want)
	p.waitJS(fmt.Sprintf("%s to show %q", sel, want), js)
}

// waitToast waits for the polite status message to say want.
func (p *page) waitToast(want string) {
	p.t.Helper()
	p.waitJS(fmt.Sprintf("toast %q", want), fmt.Sprintf(`document.querySelector('#toast').textContent.includes(%q)`, want))
}

// open shows the app's screen at hash, loading the app first if the tab
// is elsewhere. (A navigation that changes only the hash fires no load
// event, so it is made in the page.)
func (p *page) open(hash string) {
	p.t.Helper()
	href, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](`location.href`))
	if err == nil && strings.HasPrefix(href, p.srv.URL+"/") {
		eval[chromedp.Void](p, fmt.Sprintf(`location.hash = %q`, hash))
	} else {
		p.run("open "+hash, chromedp.Navigate(p.srv.URL+"/"+hash))
	}
	p.run("show "+hash, chromedp.WaitVisible(chromedp.CSS("main h1, main .tabs")))
}

// signIn stores a key in the page's localStorage, as joining does, and
// opens the inbox.
func (p *page) signIn(exchange, id, key string) {
	p.t.Helper()
	p.run("load shell", chromedp.Navigate(p.srv.URL+"/#/join"), chromedp.WaitVisible(chromedp.CSS("#join-form")))
	cred, _ := json.Marshal(map[string]any{"exchange": exchange, "id": id, "key": key})
	eval[chromedp.Void](p, fmt.Sprintf(`localStorage.setItem("mess.cred", %q); history.replaceState(null, "", "#/inbox")`, cred))
	p.run("open inbox", chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS(`.tabs`)))
	p.waitJS("threads listed", `document.querySelector('#inbox-list')?.dataset.loaded === 'true'`)
}

// click clicks the first visible element matching a CSS selector.
func (p *page) click(sel string) {
	p.t.Helper()
	// A control a form disabled while busy takes no click: wait it out.
	p.run("click "+sel, chromedp.WaitEnabled(chromedp.CSS(sel)), chromedp.Click(chromedp.CSS(sel), chromedp.NodeVisible))
}

// fill replaces the value of an input and fires its input event.
func (p *page) fill(sel, value string) {
	p.t.Helper()
	p.run("fill "+sel, chromedp.WaitVisible(chromedp.CSS(sel)), chromedp.SetValue(chromedp.CSS(sel), value))
	eval[chromedp.Void](p, fmt.Sprintf(`document.querySelector(%q).dispatchEvent(new Event('input', {bubbles: true}))`, sel))
}

// blockEvents keeps the page off the live stream, so its view goes stale
// the way a phone's does when its connection drops.
func (p *page) blockEvents() {
	p.t.Helper()
	p.block("*://*:*/api/v1/exchanges/*/events")
}

// block makes the page's requests to URLs matching patterns fail, in
// place of those blocked before.
func (p *page) block(patterns ...string) {
	p.t.Helper()
	var bp []*network.BlockPattern
	for _, s := range patterns {
		bp = append(bp, &network.BlockPattern{URLPattern: s, Block: true})
	}
	p.run("block "+strings.Join(patterns, " "), chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, network.SetBlockedURLs, network.SetBlockedURLsParams{URLPatterns: bp})
		return err
	}))
}

// setLocation makes navigator.geolocation answer with a fixed position.
func (p *page) setLocation(lat, lng, acc float64) {
	p.t.Helper()
	c := chromedp.FromContext(p.ctx)
	if _, err := chromedp.CallBrowser(p.ctx, browser.SetPermission, browser.SetPermissionParams{
		Permission: &browser.PermissionDescriptor{Name: "geolocation"}, Setting: browser.PermissionSettingGranted,
		Origin: p.srv.URL, BrowserContextID: c.BrowserContextID,
	}); err != nil {
		p.t.Fatalf("grant geolocation: %v", err)
	}
	if _, err := chromedp.Call(p.ctx, emulation.SetGeolocationOverride, emulation.SetGeolocationOverrideParams{Latitude: &lat, Longitude: &lng, Accuracy: &acc}); err != nil {
		p.t.Fatalf("set geolocation: %v", err)
	}
}

// screenshot saves the viewport to docs/screenshots/name.png when
// MESS_SCREENSHOTS is set.
func (p *page) screenshot(name string) {
	p.t.Helper()
	if os.Getenv("MESS_SCREENSHOTS") == "" {
		return
	}
	eval[chromedp.Void](p, `(() => { document.activeElement?.blur(); const tt = document.querySelector('#toast'); if (tt) { tt.classList.remove('show'); tt.textContent = ''; } return new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))); })()`)
	png, err := chromedp.Run(p.ctx, chromedp.CaptureScreenshot())
	if err != nil {
		p.t.Fatalf("screenshot %s: %v", name, err)
	}
	dir := filepath.Join("..", "docs", "screenshots")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		p.t.Fatal(err)
	}
}
