package mcpserver

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/meatspace-exchange/mess/internal/httpx"
	"github.com/meatspace-exchange/mess/mailbus"
	"github.com/meatspace-exchange/mess/mess"
)

// resourceKind tells the two kinds of resource apart.
type resourceKind int

const (
	threadResource resourceKind = iota + 1
	inboxResource
)

// parseURI splits mess://{exchange}/requests/{ref} and
// mess://{exchange}/inbox/{agent}.
func parseURI(uri string) (kind resourceKind, exchange, name string, ok bool) {
	rest, ok := strings.CutPrefix(uri, "mess://")
	if !ok {
		return 0, "", "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 || !mess.ValidID(parts[0]) {
		return 0, "", "", false
	}
	switch {
	case parts[1] == "requests" && mess.ValidRef(parts[2]):
		return threadResource, parts[0], parts[2], true
	case parts[1] == "inbox" && mess.ValidID(parts[2]):
		return inboxResource, parts[0], parts[2], true
	}
	return 0, "", "", false
}

// resourceError is a JSON-RPC error whose data is the HTTP API's error
// body, so a client can tell forbidden from not found.
func resourceError(te *ToolError) error {
	data, _ := json.Marshal(map[string]string{"error": te.Message, "code": te.Code})
	// MCP answers an unknown resource with invalid params (the spec's
	// former resource-not-found code is deprecated); data says which.
	code := int64(jsonrpc.CodeInvalidParams)
	if te.Status >= 500 {
		code = jsonrpc.CodeInternalError
	}
	return &jsonrpc.Error{Code: code, Message: te.Message, Data: data}
}

// authorize checks that the request's agent may read uri: its exchange's
// threads, and its own inbox only.
func (s *Server) authorize(extra *mcp.RequestExtra, uri string) (resourceKind, caller, string, error) {
	c, ok := callerOf(extra)
	if !ok {
		return 0, c, "", resourceError(classify(mess.ErrUnauthorized))
	}
	kind, ex, name, ok := parseURI(uri)
	switch {
	case !ok:
		return 0, c, "", resourceError(invalid("unknown resource " + uri + ": want mess://{exchange}/requests/{ref} or mess://{exchange}/inbox/{agent}"))
	case ex != c.exchange:
		return 0, c, "", resourceError(&ToolError{Status: http.StatusForbidden, Code: httpx.CodeForbidden, Message: "your API key is not valid for exchange " + ex})
	case kind == threadResource && s.cfg.Exchange == nil, kind == inboxResource && s.cfg.Bus == nil:
		return 0, c, "", resourceError(&ToolError{Status: http.StatusNotFound, Code: httpx.CodeNotFound, Message: "this server has no such resources"})
	case kind == inboxResource && name != c.agent:
		return 0, c, "", resourceError(&ToolError{Status: http.StatusForbidden, Code: httpx.CodeForbidden, Message: "an agent can only read its own inbox"})
	}
	return kind, c, name, nil
}

func (s *Server) addResources() {
	if s.cfg.Exchange != nil {
		s.mcp.AddResourceTemplate(&mcp.ResourceTemplate{Name: "request", Title: "A request and its conversation",
			URITemplate: "mess://{exchange}/requests/{ref}", MIMEType: "application/json",
			Description: "One request of your exchange as get_request returns it. Subscribe to be notified (resources/updated) whenever it changes."},
			s.readResource)
	}
	if s.cfg.Bus != nil {
		s.mcp.AddResourceTemplate(&mcp.ResourceTemplate{Name: "inbox", Title: "Your mail inbox",
			URITemplate: "mess://{exchange}/inbox/{agent}", MIMEType: "application/json",
			Description: "Your mail after the last position you confirmed, as read_inbox without since returns it. Subscribe to be notified of new mail."},
			s.readResource)
	}
}

func (s *Server) readResource(ctx context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
	uri := req.Params.URI
	kind, c, name, err := s.authorize(req.Extra, uri)
	if err != nil {
		return nil, err
	}
	var v any
	switch kind {
	case threadResource:
		t, err := s.cfg.Exchange.Get(ctx, c.exchange, name)
		if err != nil {
			return nil, resourceError(s.toolError(err))
		}
		v = threadOutput{Thread: t, URI: uri}
	case inboxResource:
		msgs, next, err := s.cfg.Bus.Inbox(ctx, c.exchange, c.agent, -1, 100)
		if err != nil {
			return nil, resourceError(s.toolError(err))
		}
		if msgs == nil {
			msgs = []mailbus.Message{}
		}
		v = inboxOutput{Messages: msgs, Next: next, URI: uri}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: uri, MIMEType: "application/json", Text: string(b)}}}, nil
}

// watcher turns changes into resources/updated notifications for the
// resources clients subscribed to. Threads are watched through the
// exchange's event hook. The mail bus has no such hook, so inboxes are
// notified at once when mail is sent through this server's tools, and
// otherwise by polling each watched agent's count of pending mail.
type watcher struct {
	s *Server

	mu       sync.Mutex
	subs     map[string]map[*mcp.ServerSession]struct{} // uri -> subscribed sessions
	sessions map[*mcp.ServerSession]struct{}            // sessions whose end is awaited
	pending  map[string]uint64                          // inbox uri -> mail pending at the last poll
	dirty    map[string]struct{}                        // uris to notify
	threads  atomic.Int64                               // thread subscriptions, for a cheap hook

	wake chan struct{}
	done chan struct{}
	wg   sync.WaitGroup
}

func newWatcher(s *Server) *watcher {
	return &watcher{s: s, subs: map[string]map[*mcp.ServerSession]struct{}{},
		sessions: map[*mcp.ServerSession]struct{}{}, pending: map[string]uint64{}, dirty: map[string]struct{}{},
		wake: make(chan struct{}, 1), done: make(chan struct{})}
}

func (w *watcher) start() {
	if w.s.cfg.Exchange != nil {
		w.s.cfg.Exchange.OnEvent(w.onEvent)
	}
	w.wg.Add(1)
	go w.notifier()
	if w.s.cfg.Bus != nil {
		w.wg.Add(1)
		go w.pollInboxes()
	}
}

// stop ends the watcher's goroutines; the sessions they await were closed
// by Server.Close.
func (w *watcher) stop(ctx context.Context) error {
	close(w.done)
	finished := make(chan struct{})
	go func() { w.wg.Wait(); close(finished) }()
	select {
	case <-finished:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *watcher) subscribe(ctx context.Context, req *mcp.SubscribeRequest) error {
	kind, c, _, err := w.s.authorize(req.Extra, req.Params.URI)
	if err != nil {
		return err
	}
	var pending uint64
	switch kind {
	case threadResource:
		_, _, ref, _ := parseURI(req.Params.URI)
		if _, err := w.s.cfg.Exchange.Get(ctx, c.exchange, ref); err != nil {
			return resourceError(w.s.toolError(err))
		}
	case inboxResource:
		pending = w.pendingOf(ctx, c.exchange)[c.agent]
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	set := w.subs[req.Params.URI]
	if set == nil {
		set = map[*mcp.ServerSession]struct{}{}
		w.subs[req.Params.URI] = set
		if kind == inboxResource {
			w.pending[req.Params.URI] = pending
		}
	}
	if _, dup := set[req.Session]; !dup {
		set[req.Session] = struct{}{}
		if kind == threadResource {
			w.threads.Add(1)
		}
	}
	if _, known := w.sessions[req.Session]; !known && req.Session != nil {
		// The SDK forgets a session's subscriptions when it ends without
		// telling us; wait for the end to forget them too.
		w.sessions[req.Session] = struct{}{}
		w.wg.Add(1)
		go func(ss *mcp.ServerSession) {
			defer w.wg.Done()
			ss.Wait()
			w.forget(ss)
		}(req.Session)
	}
	return nil
}

func (w *watcher) unsubscribe(_ context.Context, req *mcp.UnsubscribeRequest) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.drop(req.Params.URI, req.Session)
	return nil
}

// drop removes one subscription. Caller holds w.mu.
func (w *watcher) drop(uri string, ss *mcp.ServerSession) {
	set := w.subs[uri]
	if _, ok := set[ss]; !ok {
		return
	}
	delete(set, ss)
	if strings.Contains(uri, "/requests/") {
		w.threads.Add(-1)
	}
	if len(set) == 0 {
		delete(w.subs, uri)
		delete(w.pending, uri)
	}
}

func (w *watcher) forget(ss *mcp.ServerSession) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for uri := range w.subs {
		w.drop(uri, ss)
	}
	delete(w.sessions, ss)
}

// onEvent runs on the exchange's writer goroutine: it must not block.
func (w *watcher) onEvent(ev mess.Event) {
	if ev.ThreadRef == nil || w.threads.Load() == 0 {
		return
	}
	w.mark(ThreadURI(ev.ExchangeID, *ev.ThreadRef))
}

// mark queues a notification for uri if anyone watches it.
func (w *watcher) mark(uri string) {
	w.mu.Lock()
	_, watched := w.subs[uri]
	if watched {
		w.dirty[uri] = struct{}{}
	}
	w.mu.Unlock()
	if watched {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// mailSent notifies the recipients' inboxes of mail sent through a tool:
// to, or every watched inbox of the exchange but the sender's for a
// broadcast (the bus alone knows whose subscriptions matched).
func (w *watcher) mailSent(exchange, from, to string) {
	if to != "" {
		w.mark(InboxURI(exchange, to))
		return
	}
	prefix := "mess://" + exchange + "/inbox/"
	w.mu.Lock()
	var uris []string
	for uri := range w.subs {
		if strings.HasPrefix(uri, prefix) && uri != prefix+from {
			uris = append(uris, uri)
		}
	}
	w.mu.Unlock()
	for _, uri := range uris {
		w.mark(uri)
	}
}

// notifier sends the queued notifications, coalescing bursts of changes to
// one resource into one notification.
func (w *watcher) notifier() {
	defer w.wg.Done()
	for {
		select {
		case <-w.done:
			return
		case <-w.wake:
		}
		w.mu.Lock()
		dirty := w.dirty
		w.dirty = map[string]struct{}{}
		w.mu.Unlock()
		for uri := range dirty {
			w.s.mcp.ResourceUpdated(w.s.base, &mcp.ResourceUpdatedNotificationParams{URI: uri})
		}
	}
}

// pendingOf returns the mail each agent of exchange has not fetched.
func (w *watcher) pendingOf(ctx context.Context, exchange string) map[string]uint64 {
	ps, err := w.s.cfg.Bus.Presence(ctx, exchange)
	if err != nil {
		return nil
	}
	out := make(map[string]uint64, len(ps))
	for _, p := range ps {
		out[p.AgentID] = p.Pending
	}
	return out
}

// pollInboxes notifies a watched inbox whose pending mail grew since the
// last poll: mail that arrived over the bus's own API.
func (w *watcher) pollInboxes() {
	defer w.wg.Done()
	t := time.NewTicker(w.s.cfg.InboxPollInterval)
	defer t.Stop()
	for {
		select {
		case <-w.done:
			return
		case <-t.C:
		}
		w.mu.Lock()
		byExchange := map[string][]string{}
		for uri := range w.pending {
			_, ex, agent, _ := parseURI(uri)
			byExchange[ex] = append(byExchange[ex], agent)
		}
		w.mu.Unlock()
		for ex, agents := range byExchange {
			now := w.pendingOf(w.s.base, ex)
			for _, agent := range agents {
				uri := InboxURI(ex, agent)
				w.mu.Lock()
				last, watched := w.pending[uri]
				if watched {
					w.pending[uri] = now[agent]
				}
				w.mu.Unlock()
				if watched && now[agent] > last {
					w.mark(uri)
				}
			}
		}
	}
}
