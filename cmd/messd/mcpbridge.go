package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

// bridgeMain is "messd mcp": it relays MCP between a client that only
// speaks the stdio transport and a running messd's /mcp endpoint. It
// returns the process's exit code.
func bridgeMain(ctx context.Context) int {
	err := runBridge(ctx, os.Args[2:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 2
	case err != nil:
		fmt.Fprintln(os.Stderr, "messd mcp:", err)
		return 1
	}
	return 0
}

func runBridge(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("messd mcp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: messd mcp [-url URL] [-key KEY]\n\nRelays MCP over stdin/stdout (one JSON-RPC message per line) to a messd's /mcp endpoint.")
		fs.PrintDefaults()
	}
	def := getenv("MESS_URL")
	if def == "" {
		def = "http://127.0.0.1:3000"
	}
	base := fs.String("url", def, "messd's base URL, or its /mcp endpoint (MESS_URL)")
	key := fs.String("key", getenv("MESS_API_KEY"), "the executor API key to act as (MESS_API_KEY)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *key == "" {
		return errors.New("an API key is required: -key or MESS_API_KEY")
	}
	endpoint, err := mcpEndpoint(*base)
	if err != nil {
		return err
	}
	b := &bridge{endpoint: endpoint, key: *key, out: bufio.NewWriter(stdout), log: stderr,
		hc: &http.Client{Transport: &http.Transport{Proxy: http.ProxyFromEnvironment, MaxIdleConnsPerHost: 64}}}
	return b.run(ctx, stdin)
}

// mcpEndpoint accepts a server's base URL or its endpoint.
func mcpEndpoint(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("invalid -url %q: want http://host:port", raw)
	}
	if p := strings.TrimRight(u.Path, "/"); p == "" {
		u.Path = "/mcp"
	}
	return u.String(), nil
}

// bridge pumps JSON-RPC messages: each line read from the client is POSTed
// to the endpoint, and every message the server answers with, on the POST
// or on the session's GET stream, is written to the client as one line.
// It forwards messages verbatim, so the client and server negotiate the
// protocol between themselves.
type bridge struct {
	endpoint, key string
	hc            *http.Client
	log           io.Writer

	outMu sync.Mutex
	out   *bufio.Writer

	mu       sync.Mutex
	session  string // Mcp-Session-Id, once the server gave one
	protocol string // the negotiated protocol version

	requests sync.WaitGroup // POSTs in flight
}

// rpcMessage is the part of a JSON-RPC message the bridge looks at.
type rpcMessage struct {
	ID     json.RawMessage `json:"id,omitempty"`
	Method string          `json:"method,omitempty"`
	Result *struct {
		ProtocolVersion string `json:"protocolVersion"`
	} `json:"result,omitempty"`
}

func (b *bridge) run(ctx context.Context, in io.Reader) error {
	streamCtx, stopStream := context.WithCancel(ctx)
	defer stopStream()
	var stream sync.WaitGroup
	// Lines are read on their own goroutine so a signal ends the bridge
	// even while the client is silent.
	lines := make(chan []byte)
	readErr := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(in)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			select {
			case lines <- bytes.Clone(sc.Bytes()):
			case <-ctx.Done():
				return
			}
		}
		readErr <- sc.Err()
		close(lines)
	}()
	var err error
loop:
	for {
		var msg []byte
		select {
		case <-ctx.Done():
			break loop // a signal: not an error
		case line, ok := <-lines:
			if !ok {
				err = <-readErr
				break loop
			}
			msg = bytes.TrimSpace(line)
		}
		if len(msg) == 0 {
			continue
		}
		var m rpcMessage
		_ = json.Unmarshal(msg, &m) // a batch or garbage is forwarded as it is
		hadSession := b.sessionID() != ""
		if !hadSession || len(m.ID) == 0 || m.Method == "" {
			// Until the session exists, and for notifications and
			// responses (quick, and order-sensitive: initialized must
			// precede the requests after it), wait for the answer.
			b.post(ctx, msg, m, nil)
		} else {
			// A request may block for minutes (wait_for_change): send
			// it, and read the next message once it is on the wire.
			written := make(chan struct{})
			b.requests.Add(1)
			go func() {
				defer b.requests.Done()
				b.post(ctx, msg, m, written)
			}()
			select {
			case <-written:
			case <-ctx.Done():
			}
		}
		if !hadSession && b.sessionID() != "" {
			stream.Go(func() { b.stream(streamCtx) })
		}
	}
	// The client is gone: finish what it asked, then end the session.
	b.requests.Wait()
	stopStream()
	stream.Wait()
	b.endSession()
	return err
}

func (b *bridge) sessionID() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.session
}

func (b *bridge) newRequest(ctx context.Context, method string, body []byte) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, b.endpoint, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+b.key)
	b.mu.Lock()
	if b.session != "" {
		req.Header.Set("Mcp-Session-Id", b.session)
	}
	if b.protocol != "" {
		req.Header.Set("Mcp-Protocol-Version", b.protocol)
	}
	b.mu.Unlock()
	return req, nil
}

// post sends one message and relays the answer. written, if not nil, is
// closed once the request is on the wire (or failed).
func (b *bridge) post(ctx context.Context, msg []byte, m rpcMessage, written chan struct{}) {
	var once sync.Once
	wrote := func() {
		if written != nil {
			once.Do(func() { close(written) })
		}
	}
	defer wrote()
	req, err := b.newRequest(ctx, http.MethodPost, msg)
	if err != nil {
		b.fail(m, err.Error())
		return
	}
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		WroteRequest: func(httptrace.WroteRequestInfo) { wrote() }}))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	resp, err := b.hc.Do(req)
	if err != nil {
		b.fail(m, "cannot reach "+b.endpoint+": "+err.Error())
		return
	}
	defer resp.Body.Close()
	if id := resp.Header.Get("Mcp-Session-Id"); id != "" {
		b.mu.Lock()
		if b.session == "" {
			b.session = id
		}
		b.mu.Unlock()
	}
	switch {
	case resp.StatusCode == http.StatusAccepted:
	case resp.StatusCode >= 300:
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		// A JSON-RPC error body (the SDK sends some) goes to the client
		// as it is; anything else (messd's 401 JSON) becomes one.
		var reply rpcMessage
		if json.Unmarshal(body, &reply) == nil && len(reply.ID) > 0 {
			b.write(body)
			return
		}
		b.fail(m, fmt.Sprintf("HTTP %d from %s: %s", resp.StatusCode, b.endpoint, bytes.TrimSpace(body)))
	case strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream"):
		b.relayEvents(resp.Body, m)
	default:
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			b.fail(m, "reading the answer: "+err.Error())
			return
		}
		b.relay(body, m)
	}
}

// relay writes a server message to the client, noting the protocol
// version an initialize result settles.
func (b *bridge) relay(msg []byte, req rpcMessage) {
	if len(bytes.TrimSpace(msg)) == 0 {
		return
	}
	if req.Method == "initialize" {
		var r rpcMessage
		if json.Unmarshal(msg, &r) == nil && r.Result != nil && r.Result.ProtocolVersion != "" {
			b.mu.Lock()
			b.protocol = r.Result.ProtocolVersion
			b.mu.Unlock()
		}
	}
	b.write(msg)
}

// relayEvents relays the data of each server-sent event.
func (b *bridge) relayEvents(r io.Reader, req rpcMessage) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var data []byte
	for sc.Scan() {
		line := sc.Bytes()
		switch {
		case len(line) == 0:
			b.relay(data, req)
			data = data[:0]
		case bytes.HasPrefix(line, []byte("data:")):
			if len(data) > 0 {
				data = append(data, '\n')
			}
			data = append(data, bytes.TrimPrefix(bytes.TrimPrefix(line, []byte("data:")), []byte(" "))...)
		}
	}
	b.relay(data, req)
}

// stream holds the session's GET stream open, reconnecting with backoff,
// to relay what the server sends unasked (resources/updated).
func (b *bridge) stream(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		req, err := b.newRequest(ctx, http.MethodGet, nil)
		if err != nil {
			return
		}
		req.Header.Set("Accept", "text/event-stream")
		resp, err := b.hc.Do(req)
		if err == nil {
			if resp.StatusCode == http.StatusOK {
				backoff = 100 * time.Millisecond
				b.relayEvents(resp.Body, rpcMessage{})
			}
			resp.Body.Close()
			switch resp.StatusCode {
			case http.StatusMethodNotAllowed:
				return // the server offers no stream
			case http.StatusNotFound:
				fmt.Fprintln(b.log, "messd mcp: the server ended the MCP session; restart the client to open a new one")
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// endSession tells the server the session is over.
func (b *bridge) endSession() {
	if b.sessionID() == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if req, err := b.newRequest(ctx, http.MethodDelete, nil); err == nil {
		if resp, err := b.hc.Do(req); err == nil {
			resp.Body.Close()
		}
	}
}

// fail answers a request the bridge could not deliver with a JSON-RPC
// error, so the client does not wait for ever; it is logged either way.
func (b *bridge) fail(m rpcMessage, msg string) {
	fmt.Fprintln(b.log, "messd mcp:", msg)
	if len(m.ID) == 0 || m.Method == "" {
		return
	}
	reply, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": m.ID,
		"error": map[string]any{"code": -32000, "message": msg}})
	b.write(reply)
}

// write sends one message to the client as one line.
func (b *bridge) write(msg []byte) {
	var buf bytes.Buffer
	if json.Compact(&buf, msg) != nil {
		fmt.Fprintf(b.log, "messd mcp: dropping a server message that is not JSON: %.200q\n", msg)
		return
	}
	buf.WriteByte('\n')
	b.outMu.Lock()
	defer b.outMu.Unlock()
	b.out.Write(buf.Bytes())
	b.out.Flush()
}
