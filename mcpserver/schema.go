package mcpserver

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/meatspace-exchange/mess/mess"
)

// typeSchemas overrides what schema inference would make of some types:
// raw JSON is any value (not the array of bytes it is in Go), and the
// protocol's enumerations list their values so a model picks a valid one.
var typeSchemas = map[reflect.Type]*jsonschema.Schema{
	reflect.TypeFor[json.RawMessage](): {},
	reflect.TypeFor[mess.Priority](): {Type: "string", Enum: []any{
		string(mess.PriorityBackground), string(mess.PriorityNormal), string(mess.PriorityElevated), string(mess.PriorityUrgent)}},
	reflect.TypeFor[mess.Status](): {Type: "string", Enum: []any{
		"pending", "claimed", "in_progress", "waiting", "held", "needs_input", "needs_confirmation", "partial",
		"completed", "failed", "declined", "cancelled", "expired", "superseded", "delegated"}},
}

// schemaFor infers the JSON schema of T, then lets tweak adjust it
// (defaults, bounds). The types are fixed at compile time, so a failure is
// a programming error.
func schemaFor[T any](tweak func(s *jsonschema.Schema)) *jsonschema.Schema {
	s, err := jsonschema.For[T](&jsonschema.ForOptions{TypeSchemas: typeSchemas})
	if err != nil {
		panic(fmt.Sprintf("mcpserver: schema of %T: %v", *new(T), err))
	}
	if tweak != nil {
		tweak(s)
	}
	return s
}

// prop returns property name of an object schema, panicking when the
// struct has no such field (a typo in a tweak).
func prop(s *jsonschema.Schema, name string) *jsonschema.Schema {
	p, ok := s.Properties[name]
	if !ok {
		panic("mcpserver: schema has no property " + name)
	}
	return p
}

func ptr[T any](v T) *T { return &v }

// tool registers a tool whose handler receives the calling agent. A
// handler's error becomes a tool error (IsError) carrying the HTTP API's
// JSON error body.
func tool[In, Out any](s *Server, t *mcp.Tool, in func(*jsonschema.Schema), fn func(ctx context.Context, c caller, in In) (Out, error)) {
	t.InputSchema = schemaFor[In](in)
	t.OutputSchema = schemaFor[Out](nil)
	mcp.AddTool(s.mcp, t, func(ctx context.Context, req *mcp.CallToolRequest, args In) (*mcp.CallToolResult, Out, error) {
		var zero Out
		c, ok := callerOf(req.Extra)
		if !ok {
			return nil, zero, classify(mess.ErrUnauthorized)
		}
		out, err := fn(ctx, c, args)
		if err != nil {
			return nil, zero, s.toolError(err)
		}
		return nil, out, nil
	})
}

// annotations says what a tool does to its world, for clients that ask
// before running tools with side effects.
func annotations(title string, readOnly, idempotent bool) *mcp.ToolAnnotations {
	return &mcp.ToolAnnotations{Title: title, ReadOnlyHint: readOnly, IdempotentHint: idempotent,
		DestructiveHint: ptr(false), OpenWorldHint: ptr(false)}
}
