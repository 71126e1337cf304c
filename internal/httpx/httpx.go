// Package httpx is the one HTTP dialect every service of the module speaks:
// how a Bearer key is read, how a JSON body is decoded within a limit, and
// how a JSON answer or error is written. Each service keeps only its own
// table from its errors to a status and one of the codes below.
//
// Every error body is {"error": message, "code": code}, plus details a
// service adds (the claimant of a thread, say).
package httpx

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	fastjson "github.com/goccy/go-json"
)

// The code vocabulary. A code names what the client can do about the
// error; the status says the same to HTTP.
const (
	CodeInvalid          = "invalid_input"      // 400: a field is missing or wrong
	CodeMalformedJSON    = "malformed_json"     // 400: the body is not the JSON asked for
	CodeUnauthorized     = "unauthorized"       // 401: no key, or an unknown one
	CodeForbidden        = "forbidden"          // 403: the key may not do this
	CodeNotFound         = "not_found"          // 404
	CodeMethodNotAllowed = "method_not_allowed" // 405
	CodeConflict         = "conflict"           // 409: the state does not allow it now
	CodeTooLarge         = "too_large"          // 413
	CodeUnprocessable    = "unprocessable"      // 422: e.g. an idempotency key reused with another body
	CodeRateLimited      = "rate_limited"       // 429: try again after Retry-After
	CodeInternal         = "internal"           // 500: logged; nothing said
	CodeUnavailable      = "unavailable"        // 503: shutting down, timed out or cancelled; try again
)

// Code returns the vocabulary's code for an HTTP status.
func Code(status int) string {
	switch status {
	case http.StatusBadRequest:
		return CodeInvalid
	case http.StatusUnauthorized:
		return CodeUnauthorized
	case http.StatusForbidden:
		return CodeForbidden
	case http.StatusNotFound:
		return CodeNotFound
	case http.StatusMethodNotAllowed:
		return CodeMethodNotAllowed
	case http.StatusConflict:
		return CodeConflict
	case http.StatusRequestEntityTooLarge:
		return CodeTooLarge
	case http.StatusUnprocessableEntity:
		return CodeUnprocessable
	case http.StatusTooManyRequests:
		return CodeRateLimited
	case http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return CodeUnavailable
	}
	if status >= 500 {
		return CodeInternal
	}
	return strings.ToLower(strings.ReplaceAll(http.StatusText(status), " ", "_"))
}

// Error is an error with the status and code it is answered with.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// Errorf returns an *Error with the status's code.
func Errorf(status int, format string, args ...any) *Error {
	return &Error{Status: status, Code: Code(status), Message: fmt.Sprintf(format, args...)}
}

// Bearer returns the key of an "Authorization: Bearer <key>" header. The
// scheme is matched in any case (RFC 9110 §11.1), and space around the key
// is ignored.
func Bearer(r *http.Request) (string, bool) {
	auth := r.Header.Get("Authorization")
	if len(auth) < 7 || !strings.EqualFold(auth[:7], "bearer ") {
		return "", false
	}
	key := strings.TrimSpace(auth[7:])
	return key, key != ""
}

// ClientAddr returns the client address a request is counted under for
// rate limits: the IPv4 address, or the /64 an IPv6 address is in (one
// host usually holds a whole /64). It is the connection's remote address,
// or with trustProxy the last address in X-Forwarded-For, the one the proxy
// in front of the server added. An address that does not parse is the
// zero Prefix.
func ClientAddr(r *http.Request, trustProxy bool) netip.Prefix {
	if trustProxy {
		if vs := r.Header.Values("X-Forwarded-For"); len(vs) > 0 {
			last := vs[len(vs)-1]
			if i := strings.LastIndexByte(last, ','); i >= 0 {
				last = last[i+1:]
			}
			if a, err := netip.ParseAddr(strings.TrimSpace(last)); err == nil {
				return AddrKey(a)
			}
		}
	}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		return AddrKey(ap.Addr())
	}
	return netip.Prefix{}
}

// AddrKey is ClientAddr's key for an address: the IPv4 address, or its
// IPv6 /64.
func AddrKey(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p
}

// bufs holds request and response buffers: most bodies are a few hundred
// bytes, and pooling them keeps the allocation off every request.
var bufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooled keeps a rare large body from pinning its buffer in the pool.
const maxPooled = 64 << 10

func putBuf(b *bytes.Buffer) {
	if b.Cap() <= maxPooled {
		b.Reset()
		bufs.Put(b)
	}
}

// ReadBody reads r's body, at most limit bytes. A longer body, sized or
// chunked, is a 413 *Error; a body that is not UTF-8 is a 400.
func ReadBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	buf := bufs.Get().(*bytes.Buffer)
	defer putBuf(buf)
	if err := readInto(buf, w, r, limit); err != nil {
		return nil, err
	}
	return bytes.Clone(buf.Bytes()), nil
}

func readInto(buf *bytes.Buffer, w http.ResponseWriter, r *http.Request, limit int64) error {
	if r.ContentLength > limit {
		return tooLarge(limit)
	}
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, limit)); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return tooLarge(limit)
		}
		return Errorf(http.StatusBadRequest, "could not read the request body")
	}
	if !utf8.Valid(buf.Bytes()) {
		return Errorf(http.StatusBadRequest, "the request body is not valid UTF-8")
	}
	return nil
}

func tooLarge(limit int64) *Error {
	return Errorf(http.StatusRequestEntityTooLarge, "request body over %d bytes", limit)
}

// DecodeJSON decodes r's JSON body, at most limit bytes, into v. An empty
// body leaves v as it is. Errors are *Error: 413 past the limit, 400
// (malformed_json) for bad JSON, a wrong type or data after the value.
func DecodeJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	buf := bufs.Get().(*bytes.Buffer)
	defer putBuf(buf)
	if err := readInto(buf, w, r, limit); err != nil {
		return err
	}
	return Unmarshal(buf.Bytes(), v)
}

// Unmarshal decodes data into v as DecodeJSON does. The messages name JSON
// types and byte offsets, never Go types.
func Unmarshal(data []byte, v any) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	err := json.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	if se, ok := errors.AsType[*json.SyntaxError](err); ok {
		return &Error{http.StatusBadRequest, CodeMalformedJSON, fmt.Sprintf("malformed JSON at byte %d", se.Offset)}
	}
	if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		return &Error{http.StatusBadRequest, CodeMalformedJSON, TypeErrorMessage(te)}
	}
	return &Error{http.StatusBadRequest, CodeMalformedJSON, "malformed JSON"}
}

// TypeErrorMessage says what a JSON value of the wrong type should have
// been, in JSON's terms: "priority must be a string, not number".
func TypeErrorMessage(te *json.UnmarshalTypeError) string {
	field := strings.TrimPrefix(te.Field, ".")
	if field == "" {
		field = "the body"
	}
	return fmt.Sprintf("%s must be %s, not %s", field, jsonType(te.Type), te.Value)
}

// jsonType names the JSON type a Go type is decoded from.
func jsonType(t reflect.Type) string {
	if t == nil {
		return "a value"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return "a different type"
}

// WriteJSON writes v as the JSON body of a response with status. It
// encodes with goccy/go-json, which writes the same bytes as encoding/json
// about four times faster on a page of threads, the hot read path.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	buf := bufs.Get().(*bytes.Buffer)
	defer putBuf(buf)
	if err := fastjson.NewEncoder(buf).Encode(v); err != nil {
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"error":"internal error","code":"internal"}` + "\n")
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// errorBody is the shape of every error answer.
type errorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// WriteError writes the error body {"error": msg, "code": code}.
func WriteError(w http.ResponseWriter, status int, code, msg string) {
	WriteJSON(w, status, errorBody{Error: msg, Code: code})
}

// WriteErrorDetails writes an error body with extra members, such as the
// executor that holds a claim. details may not override error or code.
func WriteErrorDetails(w http.ResponseWriter, status int, code, msg string, details map[string]any) {
	body := make(map[string]any, len(details)+2)
	for k, v := range details {
		body[k] = v
	}
	body["error"], body["code"] = msg, code
	WriteJSON(w, status, body)
}

// Write writes e. It is the fallback for errors a service's own table does
// not know: an *Error anywhere in err's chain is answered as it says.
func Write(w http.ResponseWriter, e *Error) {
	WriteError(w, e.Status, e.Code, e.Message)
}
