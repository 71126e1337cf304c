package webapp_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// A fresh server: the first person to join creates the exchange and owns
// it, makes an invite with a link and a QR code, and a phone joins
// through the link. The used invite is refused with the server's reason.
func TestJoinThroughInvite(t *testing.T) {
	srv := startServer(t)
	owner := newPage(t, srv, desktop)
	owner.open("#/join")
	owner.fill("#join-exchange", "home")
	owner.fill("#join-name", "Olga Owner")
	owner.click("#join-submit")
	owner.waitText("main h1", "Me and my exchange")
	owner.waitText("main", "its owner")
	owner.click("#invite-create")
	owner.waitJS("invite QR code shown", `(() => { const i = document.querySelector('#invite-qr'); return !!i && i.complete && i.naturalWidth >= 240; })()`)
	link := eval[string](owner, `document.querySelector('#invite-link').value`)
	if !strings.HasPrefix(link, srv.URL+"/#/join/home/inv_") {
		t.Fatalf("invite link %q", link)
	}

	ph := newPage(t, srv, phone)
	ph.run("open invite", chromedp.Navigate(link), chromedp.WaitVisible(chromedp.CSS("#join-form")))
	ph.waitText("main h1", "invited to home")
	ph.fill("#join-name", "Bob Phone")
	if id := eval[string](ph, `document.querySelector('#join-id').value`); id != "bob-phone" {
		t.Errorf("id derived from the name = %q, want bob-phone", id)
	}
	ph.click("#join-submit")
	ph.run("inbox", chromedp.WaitVisible(chromedp.CSS(".tabs")))
	ph.waitJS("live", `document.querySelector('#live').dataset.state === 'live'`)
	cred := eval[map[string]any](ph, `JSON.parse(localStorage.getItem('mess.cred'))`)
	if cred["id"] != "bob-phone" || !strings.HasPrefix(fmt.Sprint(cred["key"]), "mess_home_") {
		t.Errorf("stored credentials %v", cred)
	}

	var members struct {
		Executors []struct {
			ID    string
			Owner bool
		}
	}
	srv.must(t, 200, "GET", srv.api("home")+"/executors", fmt.Sprint(cred["key"]), nil, &members)
	got := map[string]bool{}
	for _, e := range members.Executors {
		got[e.ID] = e.Owner
	}
	if len(got) != 2 || !got["olga-owner"] || got["bob-phone"] {
		t.Errorf("members %+v, want owner olga-owner and member bob-phone", members.Executors)
	}

	// The invite admitted one person; a second use is refused and shown.
	late := newPage(t, srv, phone)
	late.run("open used invite", chromedp.Navigate(link), chromedp.WaitVisible(chromedp.CSS("#join-form")))
	late.fill("#join-name", "Carol Late")
	late.click("#join-submit")
	late.waitText("#join-form [role=alert]", "invite used up")
	if eval[string](late, `localStorage.getItem('mess.cred') || ''`) != "" {
		t.Error("a refused join stored credentials")
	}

	// The owner sees the invite used up, and after making another (which
	// drops those no longer usable) only the new one, without its token,
	// and revokes it: its link no longer admits.
	owner.open("#/inbox")
	owner.open("#/me")
	owner.waitText("#invites", "used 1 of 1")
	owner.fill("#invite-uses", "5")
	owner.click("#invite-create")
	owner.waitJS("second invite", `(document.querySelector('#invite-link')?.value ?? `+jsString(link)+`) !== `+jsString(link))
	link2 := eval[string](owner, `document.querySelector('#invite-link').value`)
	owner.waitJS("the new invite listed alone", `document.querySelectorAll('#invites li[data-invite]').length === 1 && /used 0 of 5/.test(document.querySelector('#invites').textContent)`)
	if list := eval[string](owner, `document.querySelector('#invites').textContent`); strings.Contains(list, "inv_") {
		t.Errorf("the invite list shows a token: %q", list)
	}
	id2 := eval[string](owner, `document.querySelector('#invites li:last-child').dataset.invite`)
	owner.click(`#invites button[data-revoke="` + id2 + `"]`)
	owner.waitToast("Invite revoked.")
	owner.waitJS("no invites left", `document.querySelectorAll('#invites li[data-invite]').length === 0`)
	revoked := newPage(t, srv, phone)
	revoked.run("open revoked invite", chromedp.Navigate(link2), chromedp.WaitVisible(chromedp.CSS("#join-form")))
	revoked.fill("#join-name", "Dan Revoked")
	revoked.click("#join-submit")
	revoked.waitText("#join-form [role=alert]", "invalid invite")
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// testPhoto writes a w×h PNG with a gradient, as a camera photo stands in.
func testPhoto(t *testing.T, w, h int) string {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, color.RGBA{uint8(x * 255 / w), uint8(y * 255 / h), 120, 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "door.png")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// An agent's request appears on the phone without a reload; the person
// claims it and completes it with text, a photo and their location, and
// the agent reads all three back through the API.
func TestClaimAndCompleteWithPhotoAndLocation(t *testing.T) {
	srv := startServer(t)
	agentKey := srv.register(t, "home", "agent", nil)
	patKey := srv.register(t, "home", "pat", map[string]any{"invite_token": srv.invite(t, "home", agentKey), "capabilities": []string{"photo:capture"}})
	p := newPage(t, srv, phone)
	p.signIn("home", "pat", patKey)
	p.waitJS("live", `document.querySelector('#live').dataset.state === 'live'`)
	eval[chromedp.Void](p, `window.notReloaded = true`)

	notMine := srv.create(t, "home", agentKey, map[string]any{"intent": "Drive to the shop", "requires": []string{"drive"}})
	ref := srv.create(t, "home", agentKey, map[string]any{
		"intent": "Photograph the front door", "priority": "urgent", "context": []any{"Is it locked?"},
		"requires": []string{"photo:capture"}, "response_hint": []string{"image", "location"},
		"needed_by": time.Now().Add(2 * time.Hour).UTC().Format(time.RFC3339),
	})
	p.run("request appears live", chromedp.WaitVisible(chromedp.CSS(`#inbox-list a[data-ref="`+ref+`"]`)))
	p.waitToast("New request: Photograph the front door")
	if !eval[bool](p, `window.notReloaded === true`) {
		t.Fatal("the page reloaded")
	}
	if eval[bool](p, `!!document.querySelector('a[data-ref="`+notMine+`"]')`) {
		t.Error("a request needing a capability pat lacks is listed as available")
	}
	p.waitText(`a[data-ref="`+ref+`"] .due`, "in 1h")

	p.click(`a[data-ref="` + ref + `"]`)
	p.waitText("#intent", "Photograph the front door")
	p.waitText(".details", "Is it locked?")
	p.click(`button[data-action=claim]`)
	p.waitText("#claimant", "You have this")
	if th := srv.thread(t, "home", agentKey, ref); th.Status != "claimed" || th.ExecutorID == nil || *th.ExecutorID != "pat" {
		t.Fatalf("after claim: %s by %v", th.Status, th.ExecutorID)
	}

	p.click(`button[data-action=complete]`)
	p.fill("#f-answer", "Locked. Photo attached.")
	p.run("choose photo", chromedp.SetUploadFiles(chromedp.CSS("#f-photo"), []string{testPhoto(t, 2400, 1800)}))
	p.run("photo preview", chromedp.WaitVisible(chromedp.CSS("#f-photo-preview")))
	p.setLocation(52.520008, 13.404954, 12)
	p.click("#f-loc")
	p.waitText("#f-loc-out", "52.52001, 13.40495")
	p.click(`button[data-submit=complete]`)
	p.run("completed", chromedp.WaitVisible(chromedp.CSS(`.badges [data-status=completed]`)))
	p.waitJS("photo in the timeline", `[...document.querySelectorAll('.timeline img.att')].some((i) => i.complete && i.naturalWidth === 1600)`)

	th := srv.thread(t, "home", agentKey, ref)
	if th.Status != "completed" {
		t.Fatalf("status %s, want completed", th.Status)
	}
	last := th.Messages[len(th.Messages)-1]
	var blocks []map[string]json.RawMessage
	if err := json.Unmarshal(last.Mess, &blocks); err != nil || last.From != "pat" {
		t.Fatalf("last message from %s: %s (%v)", last.From, last.Mess, err)
	}
	var resp struct {
		Content []json.RawMessage `json:"content"`
	}
	for _, b := range blocks {
		if r, ok := b["response"]; ok {
			json.Unmarshal(r, &resp)
		}
	}
	var text string
	var photo string
	var loc struct{ Lat, Lng, Accuracy float64 }
	for _, c := range resp.Content {
		var s string
		if json.Unmarshal(c, &s) == nil {
			text = s
			continue
		}
		var e map[string]json.RawMessage
		json.Unmarshal(c, &e)
		if v, ok := e["image"]; ok {
			json.Unmarshal(v, &photo)
		}
		if v, ok := e["location"]; ok {
			json.Unmarshal(v, &loc)
		}
	}
	if text != "Locked. Photo attached." {
		t.Errorf("text %q", text)
	}
	if loc.Lat < 52.52 || loc.Lat > 52.5201 || loc.Lng < 13.4049 || loc.Lng > 13.405 || loc.Accuracy != 12 {
		t.Errorf("location %+v", loc)
	}
	if !strings.HasPrefix(photo, "data:image/jpeg;base64,") {
		t.Fatalf("photo is %.40q, want a JPEG data URI", photo)
	}
	// The agent fetches the photo as the exchange serves it.
	name := fmt.Sprintf("att-%d-1.jpg", len(th.Messages))
	req, _ := http.NewRequest("GET", srv.api("home")+"/requests/"+ref+"/attachments/"+name, nil)
	req.Header.Set("Authorization", "Bearer "+agentKey)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "image/jpeg" {
		t.Fatalf("GET %s: %d %s", name, res.StatusCode, res.Header.Get("Content-Type"))
	}
	img, err := jpeg.Decode(res.Body)
	if err != nil {
		t.Fatalf("decode the photo: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1600 || b.Dy() != 1200 {
		t.Errorf("photo is %dx%d, want the 2400x1800 original downscaled to 1600x1200", b.Dx(), b.Dy())
	}
	raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(photo, "data:image/jpeg;base64,"))
	if len(raw) > 400<<10 {
		t.Errorf("photo is %d KB", len(raw)>>10)
	}
}

// A pending request is declined without claiming it first: the decliner
// becomes its executor, the reason is in its history, and it moves to
// the decliner's Done tab.
func TestDeclinePending(t *testing.T) {
	srv := startServer(t)
	agentKey := srv.register(t, "home", "agent", nil)
	patKey := srv.register(t, "home", "pat", map[string]any{"invite_token": srv.invite(t, "home", agentKey)})
	ref := srv.create(t, "home", agentKey, map[string]any{"intent": "Mow the lawn"})
	p := newPage(t, srv, phone)
	p.signIn("home", "pat", patKey)
	p.open("#/t/" + ref)
	p.run("decline offered while pending", chromedp.WaitVisible(chromedp.CSS(`button[data-action=decline]`)))
	p.click(`button[data-action=decline]`)
	p.fill("#f-decline", "The mower is broken")
	p.click(`button[data-submit=decline]`)
	p.run("declined", chromedp.WaitVisible(chromedp.CSS(`.badges [data-status=declined]`)))
	p.run("no actions left", chromedp.WaitNotPresent(chromedp.CSS(`.actions button`)))
	th := srv.thread(t, "home", agentKey, ref)
	if th.Status != "declined" || th.ExecutorID == nil || *th.ExecutorID != "pat" {
		t.Fatalf("after decline: %s by %v, want declined by pat", th.Status, th.ExecutorID)
	}
	var h *historyEntry
	for i := range th.History {
		if th.History[i].NewStatus == "declined" {
			h = &th.History[i]
		}
	}
	if h == nil || h.OldStatus != "pending" || h.ActorID != "pat" || h.Message != "The mower is broken" {
		t.Errorf("history %+v, want pat's decline from pending with the reason", th.History)
	}
	p.open("#/inbox/done")
	p.run("in Done", chromedp.WaitVisible(chromedp.CSS(`#inbox-list a[data-ref="`+ref+`"]`)))
}

// Decline after a claim: the person claims, notes progress, releases,
// claims again, then declines with a reason.
func TestDeclineAfterClaim(t *testing.T) {
	srv := startServer(t)
	agentKey := srv.register(t, "home", "agent", nil)
	patKey := srv.register(t, "home", "pat", map[string]any{"invite_token": srv.invite(t, "home", agentKey)})
	ref := srv.create(t, "home", agentKey, map[string]any{"intent": "Clean the gutters"})
	p := newPage(t, srv, phone)
	p.signIn("home", "pat", patKey)
	p.open("#/t/" + ref)
	p.click(`button[data-action=claim]`)
	p.waitText("#claimant", "You have this")
	// A progress note, then the claim is released and taken again.
	p.click(`button[data-action=note]`)
	p.fill("#f-note", "Looking for the ladder")
	p.click(`button[data-submit=note]`)
	p.run("in progress", chromedp.WaitVisible(chromedp.CSS(`.badges [data-status=in_progress]`)))
	p.waitText(".timeline", "Looking for the ladder")
	p.click(`button[data-action=release]`)
	p.run("released", chromedp.WaitVisible(chromedp.CSS(`.badges [data-status=pending]`)))
	if th := srv.thread(t, "home", agentKey, ref); th.Status != "pending" || th.ExecutorID != nil {
		t.Fatalf("after release: %s by %v", th.Status, th.ExecutorID)
	}
	p.click(`button[data-action=claim]`)
	p.waitText("#claimant", "You have this")
	p.click(`button[data-action=decline]`)
	p.fill("#f-decline", "No ladder tall enough")
	p.click(`button[data-submit=decline]`)
	p.run("declined", chromedp.WaitVisible(chromedp.CSS(`.badges [data-status=declined]`)))
	p.run("no actions left", chromedp.WaitNotPresent(chromedp.CSS(`.actions button`)))
	th := srv.thread(t, "home", agentKey, ref)
	if th.Status != "declined" {
		t.Fatalf("status %s, want declined", th.Status)
	}
	h := th.History[len(th.History)-2] // the status change; the message follows
	if h.NewStatus != "declined" || h.ActorID != "pat" || h.Message != "No ladder tall enough" {
		t.Errorf("last history entry %+v", h)
	}
	p.open("#/inbox/done")
	p.run("in Done", chromedp.WaitVisible(chromedp.CSS(`#inbox-list a[data-ref="`+ref+`"]`)))
}

// A person asks for help in one browser and another person answers in a
// second one: claim, a question and its answer, confirmation before
// completing, and the result, each seen live on the other side.
func TestAskAnswerConfirmBetweenTwoBrowsers(t *testing.T) {
	srv := startServer(t)
	ritaKey := srv.register(t, "home", "rita", nil)
	edKey := srv.register(t, "home", "ed", map[string]any{"invite_token": srv.invite(t, "home", ritaKey)})
	rita := newPage(t, srv, desktop)
	rita.signIn("home", "rita", ritaKey)
	ed := newPage(t, srv, phone)
	ed.signIn("home", "ed", edKey)
	ed.waitJS("ed live", `document.querySelector('#live').dataset.state === 'live'`)

	rita.open("#/ask")
	rita.fill("#ask-intent", "Lock the door behind the garden")
	rita.fill("#ask-context", "The key is under the mat.")
	rita.run("priority", chromedp.SetValue(chromedp.CSS("#ask-priority"), "elevated"))
	rita.click("#ask-confirm")
	rita.click("#ask-submit")
	rita.waitText("#intent", "Lock the door behind the garden")
	ref := strings.TrimPrefix(eval[string](rita, `decodeURIComponent(location.hash)`), "#/t/")
	rita.waitJS("rita live", `document.querySelector('#live').dataset.state === 'live'`)

	ed.run("request appears", chromedp.WaitVisible(chromedp.CSS(`#inbox-list a[data-ref="`+ref+`"]`)))
	ed.click(`a[data-ref="` + ref + `"]`)
	ed.click(`button[data-action=claim]`)
	ed.waitText("#claimant", "You have this")
	rita.waitText("#claimant", "Claimed by ed")

	ed.click(`button[data-action=ask]`)
	ed.fill("#f-ask", "Which door: the shed or the house?")
	ed.click(`button[data-submit=ask]`)
	rita.run("answer offered", chromedp.WaitVisible(chromedp.CSS(`button[data-action=answer]`)))
	rita.waitText(".timeline", "Which door: the shed or the house?")
	rita.click(`button[data-action=answer]`)
	rita.waitText("[data-form=answer] .hint", "They asked: Which door")
	rita.fill("#f-answer", "The shed")
	rita.click(`button[data-submit=answer]`)
	ed.waitText(".timeline", "The shed")
	ed.run("in progress", chromedp.WaitVisible(chromedp.CSS(`.badges [data-status=in_progress]`)))

	// confirm_before: complete is not offered until rita confirms.
	if eval[bool](ed, `!!document.querySelector('button[data-action=complete]')`) {
		t.Error("complete offered before confirmation")
	}
	ed.click(`button[data-action=request_confirmation]`)
	ed.fill("#f-request_confirmation", "I will lock the shed and keep the key")
	ed.click(`button[data-submit=request_confirmation]`)
	rita.run("confirm offered", chromedp.WaitVisible(chromedp.CSS(`button[data-action=confirm]`)))
	rita.click(`button[data-action=confirm]`)
	rita.click(`button[data-submit=confirm]`)
	ed.run("complete offered", chromedp.WaitVisible(chromedp.CSS(`button[data-action=complete]`)))
	ed.click(`button[data-action=complete]`)
	ed.fill("#f-answer", "Shed locked, key in my pocket")
	ed.click(`button[data-submit=complete]`)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ed's page: %s", ed.debug())
			t.Logf("server: %+v", srv.thread(t, "home", ritaKey, ref))
		}
	})
	rita.run("completed", chromedp.WaitVisible(chromedp.CSS(`.badges [data-status=completed]`)))
	rita.waitText(".timeline", "Shed locked, key in my pocket")

	th := srv.thread(t, "home", ritaKey, ref)
	var steps []string
	for _, h := range th.History {
		if h.Type == "status" {
			steps = append(steps, h.ActorID+":"+h.NewStatus)
		}
	}
	want := "ed:claimed ed:needs_input rita:in_progress ed:needs_confirmation rita:in_progress ed:completed"
	if strings.Join(steps, " ") != want {
		t.Errorf("history %v, want %s", steps, want)
	}

	// And a request rita no longer needs is cancelled.
	rita.open("#/ask")
	rita.fill("#ask-intent", "Water the plants")
	rita.click("#ask-submit")
	rita.waitText("#intent", "Water the plants")
	ref2 := strings.TrimPrefix(eval[string](rita, `decodeURIComponent(location.hash)`), "#/t/")
	rita.click(`button[data-action=cancel]`)
	rita.click(`button[data-submit=cancel]`)
	rita.run("cancelled", chromedp.WaitVisible(chromedp.CSS(`.badges [data-status=cancelled]`)))
	if th := srv.thread(t, "home", ritaKey, ref2); th.Status != "cancelled" {
		t.Errorf("status %s, want cancelled", th.Status)
	}
}

// Two people claim the same request at once from views that have not
// heard of each other: one wins, the other is told who has it.
func TestTwoBrowsersClaimTheSameRequest(t *testing.T) {
	srv := startServer(t)
	agentKey := srv.register(t, "home", "agent", nil)
	keys := map[string]string{}
	for _, id := range []string{"kim", "lee"} {
		keys[id] = srv.register(t, "home", id, map[string]any{"invite_token": srv.invite(t, "home", agentKey)})
	}
	ref := srv.create(t, "home", agentKey, map[string]any{"intent": "Feed the cat"})
	pages := map[string]*page{}
	for _, id := range []string{"kim", "lee"} {
		p := newPage(t, srv, phone)
		p.blockEvents()
		p.signIn("home", id, keys[id])
		p.open("#/t/" + ref)
		p.run("claim offered", chromedp.WaitVisible(chromedp.CSS(`button[data-action=claim]`)))
		pages[id] = p
	}
	var wg sync.WaitGroup
	for _, p := range pages {
		wg.Go(func() {
			chromedp.Do(p.ctx, chromedp.Evaluate[chromedp.Void](`document.querySelector('button[data-action=claim]').click()`))
		})
	}
	wg.Wait()
	for _, p := range pages {
		p.waitJS("claim settled", `/You have this|Claimed by/.test(document.querySelector('#claimant')?.textContent || '')`)
	}
	th := srv.thread(t, "home", agentKey, ref)
	if th.ExecutorID == nil {
		t.Fatalf("nobody won: %+v", th)
	}
	winner := *th.ExecutorID
	for id, p := range pages {
		got := eval[string](p, `document.querySelector('#claimant').textContent`)
		if id == winner {
			if !strings.Contains(got, "You have this") {
				t.Errorf("%s won but shows %q", id, got)
			}
			continue
		}
		if !strings.Contains(got, "Claimed by "+winner) {
			t.Errorf("%s lost but shows %q", id, got)
		}
		p.waitText("#action-error", "claimed by "+winner)
	}
}

// A refused action shows the server's reason and changes nothing.
func TestRefusedActionShowsServerReason(t *testing.T) {
	srv := startServer(t)
	agentKey := srv.register(t, "home", "agent", nil)
	patKey := srv.register(t, "home", "pat", map[string]any{"invite_token": srv.invite(t, "home", agentKey)})
	bobKey := srv.register(t, "home", "bob", map[string]any{"invite_token": srv.invite(t, "home", agentKey)})
	ref := srv.create(t, "home", agentKey, map[string]any{"intent": "Take out the bins"})
	p := newPage(t, srv, phone)
	p.blockEvents()
	p.signIn("home", "pat", patKey)
	p.open("#/t/" + ref)
	p.run("claim offered", chromedp.WaitVisible(chromedp.CSS(`button[data-action=claim]`)))
	srv.must(t, 200, "PATCH", srv.api("home")+"/requests/"+ref, bobKey, map[string]any{"status": "claimed"}, nil)
	before := srv.thread(t, "home", agentKey, ref)
	p.click(`button[data-action=claim]`)
	p.waitText("#action-error", "thread is claimed by bob")
	p.waitText("#claimant", "Claimed by bob")
	if after := srv.thread(t, "home", agentKey, ref); after.Seq != before.Seq || *after.ExecutorID != "bob" {
		t.Errorf("the refused claim changed the thread: seq %d → %d, executor %v", before.Seq, after.Seq, *after.ExecutorID)
	}
	if eval[bool](p, `!!document.querySelector('button[data-action=claim]')`) {
		t.Error("claim still offered after the refusal")
	}
}
