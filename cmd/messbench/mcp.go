package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
)

// MCP scenarios: tool calls over MCP's Streamable HTTP transport at /mcp,
// one session per client, each client its own agent.
//
//	mcp-lease   each client cycles acquire_lease, release_lease on its own
//	            file; every tool call is one op and all are durable.
//	mcp-create  create_request calls (durable creates).

// mcpSession is a bare MCP client: a JSON-RPC POST per call, as the
// Streamable HTTP transport defines it, so the load generator spends little
// CPU beside the server it measures.
type mcpSession struct {
	url, key, id string
	next         atomic.Int64
}

func openMCP(ctx context.Context, base, key string) (*mcpSession, error) {
	s := &mcpSession{url: base + "/mcp", key: key}
	init := map[string]any{"protocolVersion": "2025-06-18", "capabilities": map[string]any{},
		"clientInfo": map[string]any{"name": "messbench", "version": "1"}}
	if _, err := s.rpc(ctx, "initialize", init); err != nil {
		return nil, err
	}
	if s.id == "" {
		return nil, errors.New("initialize: no Mcp-Session-Id")
	}
	if _, err := s.post(ctx, map[string]any{"jsonrpc": "2.0", "method": "notifications/initialized"}); err != nil {
		return nil, err
	}
	return s, nil
}

// tool calls a tool and returns its structured result; a tool error is
// returned as an error.
func (s *mcpSession) tool(ctx context.Context, name string, args any, out any) error {
	res, err := s.rpc(ctx, "tools/call", map[string]any{"name": name, "arguments": args})
	if err != nil {
		return err
	}
	var r struct {
		IsError           bool            `json:"isError"`
		Content           json.RawMessage `json:"content"`
		StructuredContent json.RawMessage `json:"structuredContent"`
	}
	if err := json.Unmarshal(res, &r); err != nil {
		return err
	}
	if r.IsError {
		return fmt.Errorf("%s: %s", name, r.Content)
	}
	if out != nil {
		return json.Unmarshal(r.StructuredContent, out)
	}
	return nil
}

func (s *mcpSession) rpc(ctx context.Context, method string, params any) (json.RawMessage, error) {
	id := s.next.Add(1)
	body, err := s.post(ctx, map[string]any{"jsonrpc": "2.0", "id": id, "method": method, "params": params})
	if err != nil {
		return nil, err
	}
	var resp struct {
		Result json.RawMessage `json:"result"`
		Error  *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		return nil, fmt.Errorf("%s: %w: %s", method, err, body)
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("%s: JSON-RPC error %d: %s", method, resp.Error.Code, resp.Error.Message)
	}
	return resp.Result, nil
}

func (s *mcpSession) post(ctx context.Context, msg any) ([]byte, error) {
	b, err := json.Marshal(msg)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, "POST", s.url, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	h := req.Header
	h.Set("Content-Type", "application/json")
	h.Set("Accept", "application/json, text/event-stream")
	h.Set("Authorization", "Bearer "+s.key)
	h.Set("Mcp-Protocol-Version", "2025-06-18")
	if s.id != "" {
		h.Set("Mcp-Session-Id", s.id)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		return nil, fmt.Errorf("POST /mcp: %d %s", resp.StatusCode, data)
	}
	if id := resp.Header.Get("Mcp-Session-Id"); id != "" {
		s.id = id
	}
	return data, nil
}

// mcpSessions registers n agents and opens a session for each.
func mcpSessions(ctx context.Context, o options, n int) ([]*mcpSession, error) {
	agents, err := registerAgents(ctx, o, n)
	if err != nil {
		return nil, err
	}
	ss := make([]*mcpSession, len(agents))
	for i, a := range agents {
		if ss[i], err = openMCP(ctx, o.URL, a.Key); err != nil {
			return nil, err
		}
	}
	return ss, nil
}

func benchMCPLease(ctx context.Context, o options) error {
	ss, err := mcpSessions(ctx, o, o.Concurrency)
	if err != nil {
		return err
	}
	var rec recorder
	tokens := make([]uint64, len(ss))
	elapsed := loop(ctx, o, &rec, func(ctx context.Context, w, i int) error {
		file := "src/file-" + strconv.Itoa(w) + ".go"
		if i%2 == 0 {
			var g struct {
				Token uint64 `json:"token"`
			}
			err := ss[w].tool(ctx, "acquire_lease", map[string]any{"file": file, "ttl_ms": 10000}, &g)
			tokens[w] = g.Token
			return err
		}
		var r struct {
			Released bool `json:"released"`
		}
		err := ss[w].tool(ctx, "release_lease", map[string]any{"file": file, "token": tokens[w]}, &r)
		if err == nil && !r.Released {
			err = errors.New("release refused")
		}
		return err
	})
	rec.report(o.Out, "MCP tools/call acquire_lease/release_lease (durable)", elapsed)
	return nil
}

func benchMCPCreate(ctx context.Context, o options) error {
	ss, err := mcpSessions(ctx, o, o.Concurrency)
	if err != nil {
		return err
	}
	args := map[string]any{"intent": "check the front door", "priority": "normal", "context": []string{"the red one"}}
	var rec recorder
	elapsed := loop(ctx, o, &rec, func(ctx context.Context, w, _ int) error {
		return ss[w].tool(ctx, "create_request", args, nil)
	})
	rec.report(o.Out, "MCP tools/call create_request (durable creates)", elapsed)
	return nil
}
