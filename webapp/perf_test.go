package webapp_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/chromedp/cdproto/cdp"
	cdppage "github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
)

// The first load's size and the rendering of 500 threads, measured in the
// browser and logged (never asserted: speed depends on the machine). Run
// go test -run TestPerformance -v ./webapp to see the figures.
func TestPerformance(t *testing.T) {
	srv := startServer(t)
	agentKey := srv.register(t, "home", "agent", nil)
	patKey := srv.register(t, "home", "pat", map[string]any{"invite_token": srv.invite(t, "home", agentKey)})

	// First load: a new phone opens the app (the join screen loads every
	// module, as the inbox does).
	p := newPage(t, srv, phone)
	p.open("#/join")
	p.waitJS("loaded", `document.readyState === 'complete'`)
	load := eval[struct {
		Files, Decoded, Transfer int
		List                     []string
	}](p, `(() => {
  const es = [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')].filter((e) => !e.name.includes('/api/'));
  return {Files: es.length, Decoded: es.reduce((s, e) => s + e.decodedBodySize, 0), Transfer: es.reduce((s, e) => s + e.transferSize, 0),
    List: es.map((e) => new URL(e.name).pathname + ' ' + e.decodedBodySize)};
})()`)
	if load.Files < 10 || load.Decoded == 0 {
		t.Fatalf("first load measured %+v", load)
	}
	t.Logf("first load: %d files, %.1f KB uncompressed, %.1f KB transferred (headers included)", load.Files, float64(load.Decoded)/1024, float64(load.Transfer)/1024)
	t.Logf("files: %v", load.List)

	// 500 threads.
	var wg sync.WaitGroup
	refs := make(chan string, 500)
	for w := 0; w < 8; w++ {
		wg.Go(func() {
			for i := w; i < 500; i += 8 {
				refs <- srv.create(t, "home", agentKey, map[string]any{"intent": fmt.Sprintf("Request number %d: check something in the house", i),
					"priority": []string{"normal", "elevated", "urgent", "background"}[i%4]})
			}
		})
	}
	wg.Wait()
	close(refs)

	q := newPage(t, srv, phone)
	q.run("observe long tasks", chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, cdppage.AddScriptToEvaluateOnNewDocument, cdppage.AddScriptToEvaluateOnNewDocumentParams{Source: `
window.longTasks = [];
new PerformanceObserver((l) => { for (const e of l.getEntries()) window.longTasks.push(e.duration); }).observe({type: 'longtask', buffered: true});`})
		return err
	}))
	q.signIn("home", "pat", patKey)
	q.waitJS("500 listed", `document.querySelector('#inbox-list').dataset.count === '500'`)
	q.waitJS("requires fetched", `performance.getEntriesByName('mess-render').length > 0`)
	type figures struct {
		Render, Max, Total float64
		Renders, Long      int
		LongMax, LongSum   float64
		Listed             float64
	}
	js := `(() => {
  const r = performance.getEntriesByName('mess-render').map((e) => e.duration);
  const big = r.filter((d, i) => true);
  return {Render: r.length ? r[r.length - 1] : 0, Max: Math.max(...r), Total: r.reduce((a, b) => a + b, 0), Renders: r.length,
    Long: window.longTasks.length, LongMax: Math.max(0, ...window.longTasks), LongSum: window.longTasks.reduce((a, b) => a + b, 0),
    Listed: performance.getEntriesByName('mess-listed')[0]?.startTime || 0};
})()`
	f := eval[figures](q, js)
	t.Logf("500 threads: listed %.0f ms after navigation; %d renders, largest %.1f ms; long tasks: %d, longest %.0f ms, %.0f ms in all",
		f.Listed, f.Renders, f.Max, f.Long, f.LongMax, f.LongSum)

	// A live update re-renders the inbox; time that render.
	eval[chromedp.Void](q, `performance.clearMeasures('mess-render'); window.longTasks.length = 0`)
	ref := srv.create(t, "home", agentKey, map[string]any{"intent": "One more", "priority": "urgent"})
	q.waitJS("live item", fmt.Sprintf(`!!document.querySelector('a[data-ref="%s"]')`, ref))
	f = eval[figures](q, js)
	t.Logf("a new request with 500 listed: render %.1f ms; long tasks %d (longest %.0f ms)", f.Max, f.Long, f.LongMax)

	// Switching tabs and back renders 501 items again.
	eval[chromedp.Void](q, `performance.clearMeasures('mess-render')`)
	q.click(`button[data-tab=done]`)
	q.click(`button[data-tab=available]`)
	q.waitJS("back", `document.querySelector('#inbox-list').dataset.count === '501'`)
	f = eval[figures](q, js)
	t.Logf("tab switch to 501 items: render %.1f ms", f.Render)
}
