package mcpserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	gojson "github.com/goccy/go-json"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/meatspace-exchange/mess/internal/httpx"
	"github.com/meatspace-exchange/mess/mess"
)

// typeSchemas overrides what schema inference would make of some types:
// raw JSON is any value (not the array of bytes it is in Go), and the
// protocol's enumerations list their values so a model picks a valid one.
var typeSchemas = map[reflect.Type]*jsonschema.Schema{
	// Not the empty schema: that is written as true, which clients that
	// expect an object per property (the TypeScript SDK's) reject.
	reflect.TypeFor[json.RawMessage](): {Description: "Any JSON value."},
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

// tool registers a tool whose handler receives the calling agent. The
// SDK's typed AddTool is not used: its argument and result validation
// decode JSON through a 32 KiB buffer each time, which cost more than the
// tool's work. Arguments are instead decoded strictly (unknown ones
// refused, required ones checked), the services validate values as they do
// for the HTTP API, and results are encoded once. A handler's error becomes
// a tool error (IsError) carrying the HTTP API's JSON error body.
func tool[In, Out any](s *Server, t *mcp.Tool, in func(*jsonschema.Schema), fn func(ctx context.Context, c caller, in In) (Out, error)) {
	schema := schemaFor[In](in)
	t.InputSchema = schema
	t.OutputSchema = schemaFor[Out](nil)
	required := requiredFields[In](schema.Required)
	s.mcp.AddTool(t, func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		c, ok := callerOf(req.Extra)
		if !ok {
			return errorResult(classify(mess.ErrUnauthorized)), nil
		}
		var args In
		if err := decodeArgs(req.Params.Arguments, &args, required); err != nil {
			return errorResult(err), nil
		}
		out, err := fn(ctx, c, args)
		if err != nil {
			return errorResult(s.toolError(err)), nil
		}
		b, err := gojson.Marshal(out)
		if err != nil {
			return nil, fmt.Errorf("encoding %s result: %w", t.Name, err)
		}
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: string(b)}}, StructuredContent: json.RawMessage(b)}, nil
	})
}

// errorResult is a tool error whose text is the HTTP API's error body.
func errorResult(te *ToolError) *mcp.CallToolResult {
	r := &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: te.Error()}}}
	r.SetError(te)
	return r
}

// field is a required argument: its JSON name and where it is in the struct.
type field struct {
	name  string
	index []int
}

// requiredFields finds the struct fields of T the schema requires.
func requiredFields[T any](names []string) []field {
	byName := map[string][]int{}
	for _, f := range reflect.VisibleFields(reflect.TypeFor[T]()) {
		if n, _, _ := strings.Cut(f.Tag.Get("json"), ","); n != "" && !f.Anonymous {
			byName[n] = f.Index
		}
	}
	out := make([]field, 0, len(names))
	for _, n := range names {
		idx, ok := byName[n]
		if !ok {
			panic("mcpserver: required property " + n + " has no field")
		}
		out = append(out, field{n, idx})
	}
	return out
}

// decodeArgs decodes a tool's arguments into v, refusing unknown ones and
// reporting a missing (zero) required one by name.
func decodeArgs(raw json.RawMessage, v any, required []field) *ToolError {
	if len(raw) > 0 && string(raw) != "null" {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			return invalid(argumentError(err))
		}
		if dec.More() {
			return invalid("arguments must be one JSON object")
		}
	}
	rv := reflect.ValueOf(v).Elem()
	for _, f := range required {
		if rv.FieldByIndex(f.index).IsZero() {
			return invalid("missing required argument " + f.name)
		}
	}
	return nil
}

// argumentError words a decoding error for a model: JSON names and types,
// never Go's.
func argumentError(err error) string {
	if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		name := te.Field
		if name == "" {
			return "arguments must be a JSON object"
		}
		return "argument " + httpx.TypeErrorMessage(te)
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return "unknown argument " + name
	}
	if _, ok := errors.AsType[*time.ParseError](err); ok {
		return "times must be RFC 3339, such as 2025-02-01T15:04:05Z"
	}
	return "arguments are not valid JSON"
}

// annotations says what a tool does to its world, for clients that ask
// before running tools with side effects.
func annotations(title string, readOnly, idempotent bool) *mcp.ToolAnnotations {
	return &mcp.ToolAnnotations{Title: title, ReadOnlyHint: readOnly, IdempotentHint: idempotent,
		DestructiveHint: ptr(false), OpenWorldHint: ptr(false)}
}
