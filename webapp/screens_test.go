package webapp_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// Every status the exchange can return has a place in the inbox and a
// label, whether it was set as in_progress or in-progress.
func TestEveryStatusHasAHome(t *testing.T) {
	srv := startServer(t)
	agentKey := srv.register(t, "home", "agent", nil)
	patKey := srv.register(t, "home", "pat", map[string]any{"invite_token": srv.invite(t, "home", agentKey)})
	patch := func(key, ref, status string) {
		srv.must(t, 200, "PATCH", srv.api("home")+"/requests/"+ref, key, map[string]any{"status": status}, nil)
	}
	type want struct{ tab, status, label string }
	refs := map[string]want{}
	add := func(status, label, tab string, steps ...func(ref string)) {
		ref := srv.create(t, "home", agentKey, map[string]any{"intent": "Request that is " + status})
		for _, s := range steps {
			s(ref)
		}
		refs[ref] = want{tab, status, label}
	}
	by := func(key, status string) func(string) { return func(ref string) { patch(key, ref, status) } }
	add("pending", "Pending", "available")
	add("claimed", "Claimed", "mine", by(patKey, "claimed"))
	add("in_progress", "In progress", "mine", by(patKey, "in-progress"))
	add("waiting", "Waiting", "mine", by(patKey, "waiting"))
	add("held", "On hold", "mine", by(patKey, "held"))
	add("needs_input", "Needs input", "mine", by(patKey, "needs-input"))
	add("needs_confirmation", "Needs confirmation", "mine", by(patKey, "needs_confirmation"))
	add("partial", "Partly done", "mine", by(patKey, "partial"))
	add("completed", "Completed", "done", by(patKey, "completed"))
	add("failed", "Failed", "done", by(patKey, "failed"))
	add("declined", "Declined", "done", by(patKey, "claimed"), by(patKey, "rejected"))
	add("delegated", "Delegated", "done", by(patKey, "claimed"), by(patKey, "delegated"))
	add("cancelled", "Cancelled", "done", by(patKey, "claimed"), by(agentKey, "canceled"))
	add("superseded", "Superseded", "done", by(patKey, "claimed"), by(agentKey, "superseded"))
	// pat's own request expires unclaimed, and is pat's to see in Done.
	exp := srv.create(t, "home", patKey, map[string]any{"intent": "Request that is expired", "needed_by": time.Now().Add(time.Second).UTC().Format(time.RFC3339Nano)})
	refs[exp] = want{"done", "expired", "Expired"}
	deadline := time.Now().Add(30 * time.Second)
	for srv.thread(t, "home", patKey, exp).Status != "expired" {
		if time.Now().After(deadline) {
			t.Fatal("the request did not expire")
		}
		time.Sleep(100 * time.Millisecond) // polling the server, with a deadline
	}

	p := newPage(t, srv, phone)
	p.signIn("home", "pat", patKey)
	for _, tab := range []string{"available", "mine", "done"} {
		p.click(`button[data-tab=` + tab + `]`)
		p.waitJS("tab "+tab, fmt.Sprintf(`document.querySelector('button[data-tab=%s]').getAttribute('aria-selected') === 'true'`, tab))
		for ref, w := range refs {
			if w.tab != tab {
				continue
			}
			sel := fmt.Sprintf(`#inbox-list a[data-ref="%s"]`, ref)
			p.waitText(sel+" .badge[data-status]", w.label)
			if got := eval[string](p, fmt.Sprintf(`document.querySelector(%q).dataset.status`, sel)); got != w.status {
				t.Errorf("%s in %s: data-status %q, want %q", w.label, tab, got, w.status)
			}
		}
	}
	// The arrow keys move between tabs.
	p.click(`button[data-tab=done]`)
	p.run("arrow", chromedp.KeyEvent(kb.ArrowLeft))
	p.waitJS("arrow left selects Asked", `document.activeElement?.dataset.tab === 'asked' && document.activeElement.getAttribute('aria-selected') === 'true'`)
}

// The modules' logic, run in the browser on tables: status spellings, the
// actions offered, the event stream parser and the countdown.
func TestModules(t *testing.T) {
	srv := startServer(t)
	p := newPage(t, srv, phone)
	p.open("#/join")
	fails := eval[[]string](p, `(async () => {
  const st = await import('./app/status.js');
  const sse = await import('./app/sse.js');
  const dom = await import('./app/dom.js');
  const join = await import('./app/views/join.js');
  const mess = await import('./app/mess.js');
  const fails = [];
  const eq = (name, got, want) => { if (JSON.stringify(got) !== JSON.stringify(want)) fails.push(name + ': got ' + JSON.stringify(got) + ', want ' + JSON.stringify(want)); };
  for (const [in_, out] of [['in-progress', 'in_progress'], ['In-Progress', 'in_progress'], ['needs-input', 'needs_input'],
      ['needs-confirmation', 'needs_confirmation'], ['canceled', 'cancelled'], ['rejected', 'declined'], ['received', 'pending'],
      ['completed', 'completed'], [' HELD ', 'held'], ['retrying', 'retrying']]) eq('normStatus ' + in_, st.normStatus(in_), out);
  for (const s of Object.keys(st.STATUSES)) eq('label ' + s, typeof st.statusInfo(s).label, 'string');
  eq('unknown status label', st.statusInfo('retrying').label, 'retrying');
  eq('terminal', Object.keys(st.STATUSES).filter(st.isTerminal), ['completed', 'failed', 'declined', 'delegated', 'cancelled', 'expired', 'superseded']);
  const T = (o) => ({ref: 'r', requestor_id: 'agent', executor_id: null, status: 'pending', history: [], ...o});
  eq('pending, someone else asked', st.actions(T({}), 'me'), ['claim', 'decline']);
  eq('pending, I asked', st.actions(T({requestor_id: 'me'}), 'me'), ['cancel']);
  eq('claimed by me', st.actions(T({status: 'claimed', executor_id: 'me'}), 'me'), ['complete', 'note', 'ask', 'release', 'fail', 'decline']);
  eq('claimed by another', st.actions(T({status: 'in-progress', executor_id: 'bob'}), 'me'), []);
  eq('terminal', st.actions(T({status: 'completed', executor_id: 'me'}), 'me'), []);
  eq('confirm_before, unconfirmed', st.actions(T({status: 'in_progress', executor_id: 'me', request: {confirm_before: true}}), 'me'), ['request_confirmation', 'note', 'ask', 'release', 'fail', 'decline']);
  eq('confirm_before, asked', st.actions(T({status: 'needs_confirmation', executor_id: 'me', request: {confirm_before: true}}), 'me'), ['note', 'ask', 'release', 'fail', 'decline']);
  eq('confirm_before, confirmed', st.actions(T({status: 'in_progress', executor_id: 'me', request: {confirm_before: true},
    history: [{type: 'status', old_status: 'needs_confirmation', new_status: 'in_progress', actor_id: 'agent'}]}), 'me')[0], 'complete');
  eq('requestor, needs input', st.actions(T({status: 'needs-input', executor_id: 'bob', requestor_id: 'me'}), 'me'), ['answer', 'cancel']);
  eq('requestor, needs confirmation', st.actions(T({status: 'needs_confirmation', executor_id: 'bob', requestor_id: 'me'}), 'me'), ['confirm', 'cancel']);
  eq('tab pending', st.tabOf(T({}), 'me', true), 'available');
  eq('tab pending, no capability', st.tabOf(T({}), 'me', false), null);
  eq('tab mine', st.tabOf(T({status: 'waiting', executor_id: 'me'}), 'me'), 'mine');
  eq('tab asked', st.tabOf(T({requestor_id: 'me'}), 'me'), 'asked');
  eq('tab done', st.tabOf(T({status: 'canceled', requestor_id: 'me'}), 'me'), 'done');
  eq('tab other', st.tabOf(T({status: 'claimed', executor_id: 'bob'}), 'me'), null);
  eq('capIds', st.capIds(['a', {b: {x: 1}}, 3]), ['a', 'b']);
  const rows = [T({ref: 'n', priority: 'normal'}), T({ref: 'u', priority: 'urgent'}), T({ref: 'd', priority: 'normal', needed_by: '2030-01-01T00:00:00Z'}), T({ref: 'w', requestor_id: 'me', status: 'needs_input'})];
  eq('sort', rows.sort(st.compare('asked', 'me')).map((r) => r.ref), ['w', 'u', 'd', 'n']);

  const parse = (chunks) => { const out = []; const p = new sse.SSEParser((e) => out.push(e)); for (const c of chunks) p.push(c); return out; };
  eq('sse basic', parse(['id: 1\nevent: thread_created\ndata: {"a":1}\n\n']), [{type: 'thread_created', data: '{"a":1}', id: '1'}]);
  eq('sse split CRLF', parse(['id: 2\r', '\nevent: x\r\ndata: a\r', '\ndata: b\r\n\r', '\n']), [{type: 'x', data: 'a\nb', id: '2'}]);
  eq('sse CR only', parse(['data: a\r\rdata: b\r\r', ':']), [{type: 'message', data: 'a', id: ''}, {type: 'message', data: 'b', id: ''}]);
  eq('sse comment and id kept', parse([': keep-alive\n\nid: 7\ndata: x\n\ndata: y\n\n']), [{type: 'message', data: 'x', id: '7'}, {type: 'message', data: 'y', id: '7'}]);
  eq('sse BOM and no space', parse(['\ufeffdata:z\n\n']), [{type: 'message', data: 'z', id: ''}]);
  eq('sse reset', parse(['event: reset\ndata: {"reason":"gone"}\n\n']), [{type: 'reset', data: '{"reason":"gone"}', id: ''}]);
  eq('sse event without data', parse(['event: x\n\n']), []);
  eq('sse byte at a time', parse([...'id: 9\ndata: hi\n\n']), [{type: 'message', data: 'hi', id: '9'}]);

  const now = Date.parse('2030-01-01T00:00:00Z');
  eq('countdown', dom.countdown('2030-01-01T02:13:30Z', now), 'in 2h 13m');
  eq('countdown s', dom.countdown('2030-01-01T00:00:45Z', now), 'in 45s');
  eq('overdue', dom.countdown('2029-12-31T23:55:00Z', now), 'overdue 5m');
  eq('days', dom.countdown('2030-01-04T05:00:00Z', now), 'in 3d 5h');
  eq('slug', join.slug('Zoë  O\'Brien!'), 'zoe-o-brien');
  eq('invite link', join.parseInvite('http://x:3000/#/join/my_home/inv_abc'), {exchange: 'my_home', token: 'inv_abc'});
  eq('key exchange', join.keyExchange('mess_my_home_0123456789abcdef0123456789abcdef'), 'my_home');
  eq('javascript: not linked', mess.entry({url: 'javascript:alert(1)'}, {}).querySelector('a'), null);
  eq('https linked', mess.entry({url: 'https://example.org/x'}, {}).querySelector('a').href, 'https://example.org/x');
  eq('text is text', mess.entry('<b>hi</b>', {}).innerHTML, '&lt;b&gt;hi&lt;/b&gt;');
  eq('location', mess.entry({location: {lat: 1.5, lng: 2.25, accuracy: 3}}, {}).textContent, ' 1.50000, 2.25000 (±3 m) · map');
  return fails;
})()`)
	for _, f := range fails {
		t.Error(f)
	}
}

// Me: name, capabilities, an ntfy topic with quiet hours that the
// exchange then delivers to, key rotation, signing out and in again.
func TestMeSettingsKeysAndSignIn(t *testing.T) {
	srv := startServer(t)
	agentKey := srv.register(t, "home", "agent", nil)
	patKey := srv.register(t, "home", "pat", map[string]any{"invite_token": srv.invite(t, "home", agentKey)})
	p := newPage(t, srv, desktop)
	p.signIn("home", "pat", patKey)
	p.open("#/me")
	p.run("profile", chromedp.WaitVisible(chromedp.CSS("#me-name")))
	p.fill("#me-name", "Pat Smith")
	p.click("#me-profile button[type=submit]")
	p.waitText("header .exchange", "Pat Smith")

	p.run("catalogue", chromedp.WaitVisible(chromedp.CSS(`#me-caps input[value=drive]`)))
	p.click(`label[for="cap-drive"]`)
	p.fill("#me-caps-other", "ladder")
	p.click("#me-caps-form button[type=submit]")
	p.waitToast("Capabilities saved")

	// A test with no channel saved is refused with the server's reason.
	p.click("#notify-test")
	p.waitText("#me-notify [role=alert]", "no notification channels")
	p.fill("#ntfy-topic", "pat-alerts")
	p.run("min priority", chromedp.SetValue(chromedp.CSS("#min-priority"), "elevated"))
	p.click(`label[for="quiet-on"]`)
	p.run("quiet hours", chromedp.SetValue(chromedp.CSS("#quiet-start"), "22:30"), chromedp.SetValue(chromedp.CSS("#quiet-end"), "06:45"))
	p.fill("#quiet-tz", "Europe/Berlin")
	p.click("#me-notify button[type=submit]")
	p.waitToast("Notifications saved")

	var prof struct {
		Executor struct {
			DisplayName   string `json:"display_name"`
			Capabilities  []any
			Notifications []map[string]any
			Preferences   struct {
				MinPriority string `json:"min_priority"`
				QuietHours  struct {
					Enabled    bool
					Start, End string
					Timezone   string
				} `json:"quiet_hours"`
			}
		}
	}
	srv.must(t, 200, "GET", srv.api("home")+"/executors/pat", patKey, nil, &prof)
	e := prof.Executor
	q := e.Preferences.QuietHours
	if e.DisplayName != "Pat Smith" || fmt.Sprint(e.Capabilities) != "[drive ladder]" ||
		len(e.Notifications) != 1 || e.Notifications[0]["type"] != "ntfy" || e.Notifications[0]["topic"] != "pat-alerts" ||
		e.Preferences.MinPriority != "elevated" || !q.Enabled || q.Start != "22:30" || q.End != "06:45" || q.Timezone != "Europe/Berlin" {
		t.Fatalf("profile after saving: %+v", e)
	}
	// The exchange pushes an urgent request to the topic (quiet hours let
	// urgent through), on the test's own ntfy server.
	srv.create(t, "home", agentKey, map[string]any{"intent": "Urgent: water leak", "priority": "urgent"})
	select {
	case got := <-srv.pushy:
		if !strings.HasPrefix(got, "/pat-alerts ") || !strings.Contains(got, "water leak") {
			t.Errorf("ntfy got %q", got)
		}
	case <-time.After(30 * time.Second):
		t.Error("no notification reached the ntfy topic")
	}
	// Send a test: it reaches the topic now, and the app says it was sent.
	p.click("#notify-test")
	p.waitToast("Test notification sent.")
	p.waitText(`#notify-test-out [data-status=sent]`, "ntfy")
	select {
	case got := <-srv.pushy:
		if !strings.HasPrefix(got, "/pat-alerts ") || !strings.Contains(got, "test notification") {
			t.Errorf("ntfy got %q, want the test", got)
		}
	case <-time.After(30 * time.Second):
		t.Error("the test notification did not reach the ntfy topic")
	}

	p.click("#rotate-key")
	p.run("new key", chromedp.WaitVisible(chromedp.CSS("#key-value")))
	newKey := eval[string](p, `document.querySelector('#key-value').value`)
	if newKey == patKey || !strings.HasPrefix(newKey, "mess_home_") {
		t.Fatalf("rotated key %q", newKey)
	}
	if code := srv.do(t, "GET", srv.api("home")+"/requests", patKey, nil, nil); code != http.StatusUnauthorized {
		t.Errorf("old key after rotation: %d, want 401", code)
	}
	p.waitJS("live with the new key", `document.querySelector('#live').dataset.state === 'live'`)
	ref := srv.create(t, "home", agentKey, map[string]any{"intent": "After rotation", "priority": "elevated"})
	p.open("#/inbox/available")
	p.run("live after rotation", chromedp.WaitVisible(chromedp.CSS(`#inbox-list a[data-ref="`+ref+`"]`)))

	p.open("#/me")
	p.click("#sign-out")
	p.run("signed out", chromedp.WaitVisible(chromedp.CSS("#join-form")))
	if eval[string](p, `localStorage.getItem('mess.cred') || ''`) != "" {
		t.Error("signing out left the key stored")
	}
	p.click("#to-signin")
	// The key alone signs in (GET /me names its executor); the deliveries
	// endpoint, once the way to learn it, is out of reach.
	p.block("*://*:*/api/v1/exchanges/*/notifications/*")
	p.fill("#signin-key", "mess_home_00000000000000000000000000000000")
	p.click("#signin-submit")
	p.waitText("#signin-form [role=alert]", "nvalid API key")
	p.fill("#signin-key", newKey)
	p.click("#signin-submit")
	p.run("signed in", chromedp.WaitVisible(chromedp.CSS(`#inbox-list a[data-ref="`+ref+`"]`)))
	p.waitText("header .exchange", "Pat Smith")
}

// Available lists only requests the person is able to take, known from
// the listing alone: with single threads out of reach, a request needing a
// capability they lack never shows.
func TestAvailableFiltersFromTheListing(t *testing.T) {
	srv := startServer(t)
	agentKey := srv.register(t, "home", "agent", nil)
	patKey := srv.register(t, "home", "pat", map[string]any{"invite_token": srv.invite(t, "home", agentKey), "capabilities": []string{"drive"}})
	fits := srv.create(t, "home", agentKey, map[string]any{"intent": "Drive to the shop", "requires": []any{map[string]any{"drive": map[string]any{"licence": "B"}}}})
	plain := srv.create(t, "home", agentKey, map[string]any{"intent": "Water the plants"})
	notMine := srv.create(t, "home", agentKey, map[string]any{"intent": "Photograph the door", "requires": []string{"photo:capture"}})
	p := newPage(t, srv, phone)
	p.block("*://*:*/api/v1/exchanges/*/requests/*")
	p.signIn("home", "pat", patKey)
	p.waitJS("listed", `document.querySelector('#inbox-list').dataset.count === '2'`)
	for _, ref := range []string{fits, plain} {
		p.run("listed "+ref, chromedp.WaitVisible(chromedp.CSS(`#inbox-list a[data-ref="`+ref+`"]`)))
	}
	if eval[bool](p, `!!document.querySelector('a[data-ref="`+notMine+`"]')`) {
		t.Error("a request needing a capability pat lacks is listed as available")
	}
}

// Notification channels holding secrets are edited on Me: the exchange
// shows them redacted and keeps the stored secrets when they come back so.
func TestEditChannelsWithSecrets(t *testing.T) {
	srv := startServer(t)
	key := srv.register(t, "home", "pat", map[string]any{"notifications": []any{
		map[string]any{"type": "slack", "webhook_url": "https://hooks.slack.com/services/T0/B0/XYZ", "enabled": false},
		map[string]any{"type": "ntfy", "topic": "pat-old", "token": "tk_pat"},
	}})
	p := newPage(t, srv, desktop)
	p.signIn("home", "pat", key)
	p.open("#/me")
	p.run("ntfy topic editable", chromedp.WaitVisible(chromedp.CSS("#ntfy-topic:enabled")))
	if got := eval[string](p, `document.querySelector('#ntfy-topic').value`); got != "pat-old" {
		t.Fatalf("topic shown %q", got)
	}
	p.fill("#ntfy-topic", "pat-new")
	p.click("#me-notify button[type=submit]")
	p.waitToast("Notifications saved")
	var prof struct {
		Executor struct{ Notifications []map[string]any }
	}
	srv.must(t, 200, "GET", srv.api("home")+"/executors/pat", key, nil, &prof)
	if n := prof.Executor.Notifications; len(n) != 2 || n[0]["type"] != "slack" || n[0]["webhook_url"] != "[redacted]" || n[1]["topic"] != "pat-new" || n[1]["token"] != "[redacted]" {
		t.Fatalf("channels after saving: %v", n)
	}
	// The stored token is still the real one: the test push carries it.
	p.click("#notify-test")
	p.waitToast("Test notification sent.")
	select {
	case got := <-srv.pushy:
		if !strings.HasPrefix(got, "/pat-new ") || !strings.HasSuffix(got, " auth=Bearer tk_pat") {
			t.Errorf("ntfy got %q, want the test to pat-new with the stored token", got)
		}
	case <-time.After(30 * time.Second):
		t.Error("the test notification did not reach the ntfy topic")
	}
}

// The shell is an installable PWA that still opens with the network gone.
func TestOfflineShell(t *testing.T) {
	srv := startServer(t)
	key := srv.register(t, "home", "pat", nil)
	p := newPage(t, srv, phone)
	p.signIn("home", "pat", key)
	p.waitJS("service worker in control", `navigator.serviceWorker.ready.then(() => !!navigator.serviceWorker.controller || new Promise((r) => navigator.serviceWorker.addEventListener('controllerchange', () => r(true))))`)
	p.waitJS("shell cached", `caches.open('mess-shell-v1').then((c) => c.keys()).then((k) => k.length >= 20)`)
	srv.stop() // the exchange is out of reach
	p.run("reload offline", chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS(".tabs")))
	p.waitText("#live", "Offline")
}
