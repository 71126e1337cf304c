package mess

// Attachments: files sent inside requests and messages, as data URIs
// ("data:image/png;base64,...") or named objects ({"name": "notes.txt",
// "data": "<base64>"}). Each is taken out of the JSON as it arrives,
// stored as an object of its own before the change that carries it is
// acknowledged, and replaced by a reference, so the in-memory projection,
// the event log and the event buffer hold one small string per file
// instead of the file. Reading a thread through the HTTP API puts the
// files back, read from storage, so clients see what was sent.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"path"
	"strings"
	"unicode/utf8"

	"github.com/meatspace-exchange/mess/storage"
)

// maxAttachmentsPerMessage bounds the objects one request or message may
// create: each is a durable write.
const maxAttachmentsPerMessage = 100

// attachmentPrefix starts the string that stands for an attachment in a
// message held in memory or in the log.
const attachmentPrefix = "mess-attachment:"

var contentTypes = map[string]string{
	"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif",
	"webp": "image/webp", "pdf": "application/pdf", "mp4": "video/mp4", "webm": "video/webm",
	"mp3": "audio/mpeg", "wav": "audio/wav",
}

var extensions = map[string]string{
	"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp",
	"application/pdf": "pdf", "video/mp4": "mp4", "video/webm": "webm", "audio/mpeg": "mp3", "audio/wav": "wav",
}

// attachmentRef is what the log and the projection keep of an attachment:
// where it was and where it is stored.
type attachmentRef struct {
	// Field is the request field it was in (context or response_hint);
	// empty for a message.
	Field string `json:"field,omitempty"`
	// Value is the position, from 0 and in document order, of the string
	// value it replaced among the string values (not member names) of the
	// message or field.
	Value int `json:"value"`
	// Name is att-{message}-{n}.{ext} for the n-th data URI of the
	// thread's message-th message, or the sender's name for a named
	// object.
	Name string `json:"name"`
	// Alias is the sender's name for a data URI inside a named object.
	Alias string `json:"alias,omitempty"`
	// Type is the content type a data URI declares.
	Type string `json:"type,omitempty"`
	// Object is the last segment of the storage key it is kept under:
	// {seq}-{k}, the k-th attachment of the thread's seq-th event.
	Object string `json:"object"`
	// Size is the bytes stored: the JSON string as sent, quotes included.
	Size int64 `json:"size"`
}

func attachmentKey(exchangeID, ref, object string) string {
	return "attachments/exchange=" + exchangeID + "/" + ref + "/" + object
}

// strValue is one string value of a JSON document.
type strValue struct {
	start, end int    // the literal, quotes included
	index      int    // among the document's string values, from 0
	member     string // the name of the member it is the value of; "" in an array
	obj        int    // the object it is a member of; -1 if none
}

// scanStrings calls fn with every string value of doc in document order,
// and objEnd at the end of each object. doc is valid JSON (it was
// decoded before); on anything else it stops without a panic.
func scanStrings(doc []byte, fn func(strValue), objEnd func(obj int)) {
	type frame struct {
		obj, wantKey bool
		id           int
		member       string
	}
	var stack []frame
	ids, index := 0, 0
	for i := 0; i < len(doc); i++ {
		switch doc[i] {
		case '{':
			stack = append(stack, frame{obj: true, wantKey: true, id: ids})
			ids++
		case '[':
			stack = append(stack, frame{})
		case '}', ']':
			if len(stack) == 0 {
				return
			}
			f := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if f.obj && objEnd != nil {
				objEnd(f.id)
			}
		case ':':
			if len(stack) > 0 {
				stack[len(stack)-1].wantKey = false
			}
		case ',':
			if len(stack) > 0 && stack[len(stack)-1].obj {
				stack[len(stack)-1].wantKey = true
			}
		case '"':
			j := i + 1
			for j < len(doc) && doc[j] != '"' {
				if doc[j] == '\\' {
					j++
				}
				j++
			}
			if j >= len(doc) {
				return
			}
			lit := doc[i : j+1]
			if n := len(stack); n > 0 && stack[n-1].obj && stack[n-1].wantKey {
				stack[n-1].member = jsonText(lit)
			} else {
				v := strValue{start: i, end: j + 1, index: index, obj: -1}
				if n > 0 && stack[n-1].obj {
					v.member, v.obj = stack[n-1].member, stack[n-1].id
				}
				index++
				fn(v)
			}
			i = j
		}
	}
}

// jsonText returns the text of a JSON string literal.
func jsonText(lit []byte) string {
	if len(lit) < 2 {
		return ""
	}
	if bytes.IndexByte(lit, '\\') < 0 {
		return string(lit[1 : len(lit)-1])
	}
	var s string
	_ = json.Unmarshal(lit, &s)
	return s
}

// countValues is how many string values doc has.
func countValues(doc []byte) int {
	n := 0
	scanStrings(doc, func(strValue) { n++ }, nil)
	return n
}

// dataURI reports whether a string literal is a base64 data URI, and its
// declared type. The base64 is checked without decoding it into memory.
func dataURI(lit []byte) (ctype string, ok bool) {
	if !bytes.HasPrefix(lit, []byte(`"data:`)) {
		return "", false
	}
	s := jsonText(lit)
	meta, data, ok := strings.Cut(strings.TrimPrefix(s, "data:"), ",")
	if !ok || !strings.HasSuffix(meta, ";base64") || !validBase64(data) {
		return "", false
	}
	// A clone: a substring would keep the whole URI alive.
	return strings.Clone(strings.TrimSuffix(meta, ";base64")), true
}

func validBase64(s string) bool {
	_, err := io.Copy(io.Discard, base64.NewDecoder(base64.StdEncoding, strings.NewReader(s)))
	return err == nil
}

// found is an attachment taken out of a document: its reference and the
// JSON string to store.
type found struct {
	ref     attachmentRef
	literal []byte
}

// extractor takes the attachments out of the documents of one event.
type extractor struct {
	message int   // the thread's message they belong to, from 1, for names
	seq     int64 // the event storing them, for object keys
	uris    int   // data URIs named so far
	files   []found
}

// take returns doc with every attachment replaced by a reference, and
// the references. field names the request field doc is ("" for a
// message).
func (x *extractor) take(field string, doc []byte) ([]byte, []attachmentRef, error) {
	type named struct {
		name string
		data int // the value's index in vals; -1 for none
	}
	var vals []strValue
	objs := map[int]*named{}
	obj := func(id int) *named {
		o := objs[id]
		if o == nil {
			o = &named{data: -1}
			objs[id] = o
		}
		return o
	}
	scanStrings(doc, func(v strValue) {
		switch {
		case v.obj >= 0 && v.member == "name":
			obj(v.obj).name = jsonText(doc[v.start:v.end])
		case v.obj >= 0 && v.member == "data":
			obj(v.obj).data = len(vals)
			vals = append(vals, v)
		case bytes.HasPrefix(doc[v.start:], []byte(`"data:`)):
			vals = append(vals, v)
		}
	}, nil)
	if len(vals) == 0 {
		return doc, nil, nil
	}
	var out bytes.Buffer
	var refs []attachmentRef
	last := 0
	for i, v := range vals {
		lit := doc[v.start:v.end]
		alias := ""
		if v.obj >= 0 {
			if o := objs[v.obj]; o != nil && o.data == i && validFilename(o.name) {
				alias = o.name
			}
		}
		ref := attachmentRef{Field: field, Value: v.index, Size: int64(len(lit))}
		if ctype, ok := dataURI(lit); ok {
			x.uris++
			ext := extensions[baseType(ctype)]
			if ext == "" {
				ext = "bin"
			}
			ref.Name, ref.Alias, ref.Type = fmt.Sprintf("att-%d-%d.%s", x.message, x.uris, ext), alias, ctype
		} else if alias != "" && validBase64(jsonText(lit)) {
			ref.Name = alias
		} else {
			continue
		}
		if len(x.files) == maxAttachmentsPerMessage {
			return nil, nil, errorf(ErrTooLarge, "a request or message may carry at most %d attachments", maxAttachmentsPerMessage).
				with("limit", maxAttachmentsPerMessage)
		}
		ref.Object = fmt.Sprintf("%d-%d", x.seq, len(x.files)+1)
		x.files = append(x.files, found{ref, lit})
		refs = append(refs, ref)
		placeholder, _ := json.Marshal(attachmentPrefix + ref.Name)
		out.Write(doc[last:v.start])
		out.Write(placeholder)
		last = v.end
	}
	if refs == nil {
		return doc, nil, nil
	}
	out.Write(doc[last:])
	return out.Bytes(), refs, nil
}

// size is the bytes of the attachments found so far.
func (x *extractor) size() int64 {
	var n int64
	for _, f := range x.files {
		n += f.ref.Size
	}
	return n
}

// inflate puts the attachments refs names back into doc, as sent. load
// returns an object's stored JSON string.
func inflate(doc []byte, refs []attachmentRef, load func(object string) ([]byte, error)) ([]byte, error) {
	if len(refs) == 0 {
		return doc, nil
	}
	at := make(map[int]attachmentRef, len(refs))
	for _, r := range refs {
		at[r.Value] = r
	}
	var out bytes.Buffer
	last := 0
	var err error
	scanStrings(doc, func(v strValue) {
		r, ok := at[v.index]
		if !ok || err != nil {
			return
		}
		var lit []byte
		if lit, err = load(r.Object); err != nil {
			return
		}
		out.Write(doc[last:v.start])
		out.Write(lit)
		last = v.end
	}, nil)
	if err != nil {
		return nil, err
	}
	out.Write(doc[last:])
	return out.Bytes(), nil
}

// storeAttachments writes what x found, before the event that refers to
// it. If one write fails it deletes the others.
func (s *Service) storeAttachments(ctx context.Context, exchangeID, ref string, x *extractor) error {
	var written []string
	for _, f := range x.files {
		k := attachmentKey(exchangeID, ref, f.ref.Object)
		if _, err := s.store.Put(ctx, k, f.literal); err != nil {
			for _, k := range written {
				if err := s.store.Delete(context.WithoutCancel(ctx), k); err != nil {
					s.log.Warn("delete unused attachment", "key", k, "err", err)
				}
			}
			return fmt.Errorf("mess: store attachment: %w", err)
		}
		written = append(written, k)
	}
	return nil
}

// reserveAttachments books n bytes of attachments against actor's
// allowance (Config.MaxAttachmentBytes) until release, which the caller
// calls once the event carrying them is applied or abandoned.
func (s *Service) reserveAttachments(ex *exchange, actor string, n int64) (release func(), err error) {
	if n == 0 {
		return func() {}, nil
	}
	ex.mu.Lock()
	defer ex.mu.Unlock()
	if limit := s.cfg.MaxAttachmentBytes; limit > 0 && ex.attachBytes[actor]+ex.attachHeld[actor]+n > limit {
		return nil, errorf(ErrTooLarge, "attachments of %s would pass %d bytes, the limit for one member", actor, limit).
			with("limit", limit)
	}
	ex.attachHeld[actor] += n
	return func() {
		ex.mu.Lock()
		if ex.attachHeld[actor] -= n; ex.attachHeld[actor] == 0 {
			delete(ex.attachHeld, actor)
		}
		ex.mu.Unlock()
	}, nil
}

// loader reads attachment objects of one thread, each once.
func (s *Service) loader(ctx context.Context, exchangeID, ref string) func(object string) ([]byte, error) {
	cache := map[string][]byte{}
	return func(object string) ([]byte, error) {
		if b, ok := cache[object]; ok {
			return b, nil
		}
		obj, err := s.store.Get(ctx, attachmentKey(exchangeID, ref, object))
		if errors.Is(err, storage.ErrNotFound) {
			s.log.Warn("attachment missing from storage", "exchange", exchangeID, "ref", ref, "object", object)
			b, _ := json.Marshal(attachmentPrefix + object)
			return b, nil
		} else if err != nil {
			return nil, fmt.Errorf("mess: read attachment: %w", err)
		}
		cache[object] = obj.Data
		return obj.Data, nil
	}
}

// GetWithAttachments returns a thread as Get does, with every attachment
// back in its request and messages as it was sent (data URIs and named
// objects), read from storage.
func (s *Service) GetWithAttachments(ctx context.Context, exchangeID, ref string) (Thread, error) {
	t, err := s.Get(ctx, exchangeID, ref)
	if err != nil {
		return Thread{}, err
	}
	load := s.loader(ctx, exchangeID, ref)
	for i, m := range t.Messages {
		if len(m.attachments) == 0 {
			continue
		}
		if t.Messages[i].Mess, err = inflate(m.Mess, m.attachments, load); err != nil {
			return Thread{}, err
		}
	}
	if t.Request != nil && len(t.Request.attachments) > 0 {
		req := *t.Request
		var ctxRefs, hintRefs []attachmentRef
		for _, r := range req.attachments {
			if r.Field == "response_hint" {
				hintRefs = append(hintRefs, r)
			} else {
				ctxRefs = append(ctxRefs, r)
			}
		}
		if req.Context, err = inflate(req.Context, ctxRefs, load); err != nil {
			return Thread{}, err
		}
		if req.ResponseHint, err = inflate(req.ResponseHint, hintRefs, load); err != nil {
			return Thread{}, err
		}
		req.attachments = nil
		t.Request = &req
	}
	return t, nil
}

// Attachment returns a file sent in a thread's messages and its declared
// content type ("" when nothing declared one). Data URIs are found by the
// name att-{message}-{n}.{ext} (the message's position in the thread and
// the URI's in that message, both from 1); named objects ({"name":
// "x.jpg", "data": "<base64>"}, as inside image, attachment or
// request.attachments entries) by their name. The first message wins when
// two use one name.
func (s *Service) Attachment(ctx context.Context, exchangeID, ref, filename string) ([]byte, string, error) {
	if !validFilename(filename) {
		return nil, "", errorf(ErrInvalid, "Invalid filename")
	}
	ex, err := s.loadExchangeForRead(exchangeID)
	if err != nil {
		return nil, "", err
	}
	if !ValidRef(ref) {
		return nil, "", errorf(ErrNotFound, "Thread not found")
	}
	ex.mu.RLock()
	t := ex.threads[ref]
	var r attachmentRef
	var stored bool
	var legacy []Message
	if t != nil && t.ready {
		r, stored = t.files[filename]
		if !stored {
			legacy = t.Messages // appends never write into the elements it holds
		}
	}
	ex.mu.RUnlock()
	if t == nil || !t.ready {
		return nil, "", errorf(ErrNotFound, "Thread not found")
	}
	var lit []byte
	if stored {
		obj, err := s.store.Get(ctx, attachmentKey(exchangeID, ref, r.Object))
		if errors.Is(err, storage.ErrNotFound) {
			return nil, "", errorf(ErrNotFound, "Attachment not found")
		} else if err != nil {
			return nil, "", fmt.Errorf("mess: read attachment: %w", err)
		}
		lit = obj.Data
	} else {
		lit = findInline(legacy, filename)
	}
	if lit == nil {
		return nil, "", errorf(ErrNotFound, "Attachment not found")
	}
	data, ctype, ok := decodeData(jsonText(lit))
	if !ok {
		return nil, "", errorf(ErrNotFound, "Attachment not found")
	}
	if ctype == "" {
		ctype = contentTypes[strings.ToLower(strings.TrimPrefix(path.Ext(filename), "."))]
	}
	return data, ctype, nil
}

// findInline looks for an attachment still inside a message, as messages
// logged before attachments were stored apart hold them.
func findInline(msgs []Message, filename string) []byte {
	for i, m := range msgs {
		x := &extractor{message: i + 1}
		x.take("", m.Mess) // past the cap, what it found before still counts
		for _, f := range x.files {
			if f.ref.Name == filename || f.ref.Alias == filename {
				return f.literal
			}
		}
	}
	return nil
}

// validFilename reports whether name can be an attachment's name: 1 to
// 255 bytes of UTF-8 text without a path separator, a control character or
// "..". Anything else is refused as invalid rather than looked for, so a
// client that sends a path learns so instead of getting "not found".
func validFilename(name string) bool {
	if name == "" || len(name) > 255 || !utf8.ValidString(name) || strings.Contains(name, "..") {
		return false
	}
	for _, r := range name {
		if r == '/' || r == '\\' || r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// decodeData decodes base64, plain or as a data URI.
func decodeData(s string) ([]byte, string, bool) {
	ctype := ""
	if rest, ok := strings.CutPrefix(s, "data:"); ok {
		meta, data, ok := strings.Cut(rest, ",")
		if !ok || !strings.HasSuffix(meta, ";base64") {
			return nil, "", false
		}
		ctype, s = strings.TrimSuffix(meta, ";base64"), data
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, "", false
	}
	return b, ctype, true
}

// baseType is a content type without parameters, lower case.
func baseType(ctype string) string {
	t, _, _ := strings.Cut(ctype, ";")
	return strings.ToLower(strings.TrimSpace(t))
}

// servedType decides how an attachment is served: the declared type only
// when the content agrees with its family (what http.DetectContentType
// sees is the same top-level type: image, audio, video, text,
// application), else application/octet-stream; and inline only for
// images, audio and video other than SVG, which can carry script.
// Everything else is a download.
func servedType(declared string, data []byte) (ctype string, inline bool) {
	t := baseType(declared)
	if _, _, err := mime.ParseMediaType(t); err != nil || t == "" {
		return "application/octet-stream", false
	}
	family, _, _ := strings.Cut(t, "/")
	seen, _, _ := strings.Cut(baseType(http.DetectContentType(data)), "/")
	if family != seen {
		return "application/octet-stream", false
	}
	switch {
	case t == "image/svg+xml", t == "text/html", t == "application/xhtml+xml":
		return t, false
	case family == "image", family == "audio", family == "video":
		return t, true
	}
	return t, false
}

// contentDisposition is the Content-Disposition of an attachment.
func contentDisposition(inline bool, filename string) string {
	kind := "attachment"
	if inline {
		kind = "inline"
	}
	if v := mime.FormatMediaType(kind, map[string]string{"filename": filename}); v != "" {
		return v
	}
	return kind
}
