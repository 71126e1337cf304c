package webapp_test

import (
	"context"
	"encoding/base64"
	"os"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
)

// audit lists what a screen reader or a thumb would trip over on the
// current screen: unlabelled controls, nameless buttons, images without
// alt text, and touch targets under 44 px.
const audit = `(() => {
  const bad = [];
  const visible = (e) => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== 'hidden';
  for (const e of document.querySelectorAll('input, select, textarea')) {
    if (e.type === 'hidden') continue;
    if (!(e.labels && e.labels.length) && !e.getAttribute('aria-label')) bad.push('unlabelled ' + e.tagName + '#' + e.id);
  }
  for (const e of document.querySelectorAll('button, a[href]')) {
    if (!visible(e)) continue;
    const name = (e.getAttribute('aria-label') || e.textContent).trim();
    if (!name) bad.push('nameless ' + e.tagName + ' ' + e.outerHTML.slice(0, 80));
    if (e.closest('.actions, .tabs, .nav, form') && !e.classList.contains('link') && e.getBoundingClientRect().height < 44) bad.push('small target ' + e.outerHTML.slice(0, 80));
  }
  for (const e of document.querySelectorAll('img')) if (!e.hasAttribute('alt')) bad.push('img without alt ' + e.src.slice(0, 60));
  return bad;
})()`

func (p *page) audit(screen string) {
	p.t.Helper()
	for _, b := range eval[[]string](p, audit) {
		p.t.Errorf("%s: %s", screen, b)
	}
}

// The main screens at phone and desktop widths, audited for labels and
// touch targets; with MESS_SCREENSHOTS=1 they are saved to
// docs/screenshots.
func TestScreens(t *testing.T) {
	srv := startServer(t)
	ownerKey := srv.register(t, "home", "olga", map[string]any{"display_name": "Olga"})
	patKey := srv.register(t, "home", "pat", map[string]any{"invite_token": srv.invite(t, "home", ownerKey), "display_name": "Pat", "capabilities": []string{"photo:capture"}})
	srv.register(t, "home", "agent", map[string]any{"invite_token": srv.invite(t, "home", ownerKey), "display_name": "House agent"})
	agentKey := srv.register(t, "home", "kitchen-bot", map[string]any{"invite_token": srv.invite(t, "home", ownerKey)})
	in := func(d time.Duration) string { return time.Now().Add(d).UTC().Format(time.RFC3339) }
	srv.create(t, "home", agentKey, map[string]any{"intent": "Is the stove off? Send a photo of the knobs.", "priority": "urgent", "needed_by": in(25 * time.Minute), "requires": []string{"photo:capture"}})
	srv.create(t, "home", agentKey, map[string]any{"intent": "Bring the parcel in from the porch before it rains", "priority": "elevated", "needed_by": in(3 * time.Hour)})
	srv.create(t, "home", agentKey, map[string]any{"intent": "How much milk is left in the fridge?", "response_hint": []string{"text", "image"}})
	srv.create(t, "home", agentKey, map[string]any{"intent": "Water the tomatoes on the balcony", "priority": "background"})
	srv.create(t, "home", agentKey, map[string]any{"intent": "Drive the recycling to the depot", "requires": []string{"drive"}})
	mine := srv.create(t, "home", agentKey, map[string]any{
		"intent": "Check the back door is locked", "priority": "elevated", "needed_by": in(90 * time.Minute),
		"context":       []any{"The motion sensor saw the door open at 21:04.", map[string]any{"image": map[string]any{"name": "sensor.png", "data": pngBase64(t, 320, 180)}}},
		"response_hint": []string{"image", "location"}, "compensation": map[string]any{"shells": 5, "note": "and thanks"},
	})
	patch := func(key string, body map[string]any) {
		srv.must(t, 200, "PATCH", srv.api("home")+"/requests/"+mine, key, body, nil)
	}
	patch(patKey, map[string]any{"status": "claimed", "mess": []any{map[string]any{"status": map[string]any{"re": mine, "code": "claimed"}}}})
	patch(patKey, map[string]any{"status": "needs_input", "message": "The wooden one or the glass one?", "mess": []any{map[string]any{"status": map[string]any{"re": mine, "code": "needs_input", "questions": []any{map[string]any{"question": "The wooden one or the glass one?"}}}}}})
	patch(agentKey, map[string]any{"status": "in_progress", "message": "The glass one", "mess": []any{map[string]any{"answer": map[string]any{"re": mine, "value": "The glass one, to the garden."}}}})
	patch(patKey, map[string]any{"mess": []any{map[string]any{"status": map[string]any{"re": mine, "code": "in_progress", "message": "On my way down."}}}})
	done := srv.create(t, "home", agentKey, map[string]any{"intent": "Turn off the hallway light"})
	srv.must(t, 200, "PATCH", srv.api("home")+"/requests/"+done, patKey, map[string]any{"status": "completed", "mess": []any{map[string]any{"response": map[string]any{"re": done, "content": []any{"Done."}}}}}, nil)
	photo := testPhoto(t, 1200, 900)

	for _, vp := range []struct {
		name string
		vp   viewport
	}{{"phone", phone}, {"desktop", desktop}} {
		p := newPage(t, srv, vp.vp)
		p.signIn("home", "pat", patKey)
		p.waitJS("items", `document.querySelectorAll('#inbox-list a').length >= 4`)
		p.audit("inbox")
		p.screenshot("inbox-" + vp.name)

		p.open("#/t/" + mine)
		p.waitText(".timeline", "On my way down.")
		p.waitJS("context image", `[...document.querySelectorAll('.context img')].some((i) => i.complete && i.naturalWidth === 320)`)
		p.audit("thread")
		p.screenshot("thread-" + vp.name)
		eval[chromedp.Void](p, `document.querySelector('#timeline-h').scrollIntoView({block: 'start'})`)
		p.screenshot("timeline-" + vp.name)

		p.click(`button[data-action=complete]`)
		p.fill("#f-answer", "Locked, and the key is back on its hook.")
		p.run("photo", chromedp.SetUploadFiles(chromedp.CSS("#f-photo"), []string{photo}), chromedp.WaitVisible(chromedp.CSS("#f-photo-preview")))
		p.setLocation(51.5007, -0.1246, 8)
		p.click("#f-loc")
		p.waitText("#f-loc-out", "51.50070")
		p.audit("complete form")
		eval[chromedp.Void](p, `document.querySelector('.panel').scrollIntoView({block: 'start'})`)
		p.screenshot("complete-" + vp.name)

		p.open("#/ask")
		p.fill("#ask-intent", "Can someone feed the cat at 6?")
		p.audit("ask")
		p.screenshot("ask-" + vp.name)

		p.open("#/me")
		p.run("me", chromedp.WaitVisible(chromedp.CSS("#me-name")))
		p.audit("me")

		o := newPage(t, srv, vp.vp)
		o.signIn("home", "olga", ownerKey)
		o.open("#/me")
		o.click("#invite-create")
		o.waitJS("QR", `(() => { const i = document.querySelector('#invite-qr'); return !!i && i.complete && i.naturalWidth > 0; })()`)
		o.waitJS("members", `document.querySelectorAll('#members li').length === 4`)
		o.audit("me (owner)")
		eval[chromedp.Void](o, `document.querySelector('#me-invite-h').parentElement.scrollIntoView({block: 'start'})`)
		o.screenshot("invite-" + vp.name)
	}

	d := newPage(t, srv, phone)
	d.run("dark", chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}}})
		return err
	}))
	d.signIn("home", "pat", patKey)
	d.waitJS("items", `document.querySelectorAll('#inbox-list a').length >= 4`)
	d.screenshot("inbox-dark-phone")
	d.open("#/t/" + mine)
	d.waitText(".timeline", "On my way down.")
	d.screenshot("thread-dark-phone")
}

func pngBase64(t *testing.T, w, h int) string {
	t.Helper()
	b, err := os.ReadFile(testPhoto(t, w, h))
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}
