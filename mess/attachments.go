package mess

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
	"unicode/utf8"
)

var contentTypes = map[string]string{
	"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif",
	"webp": "image/webp", "pdf": "application/pdf", "mp4": "video/mp4", "webm": "video/webm",
	"mp3": "audio/mpeg", "wav": "audio/wav",
}

var extensions = map[string]string{
	"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp",
	"application/pdf": "pdf", "video/mp4": "mp4", "video/webm": "webm", "audio/mpeg": "mp3", "audio/wav": "wav",
}

// Attachment returns a file embedded in a thread's messages. Two forms are
// found: named objects ({"name": "x.jpg", "data": "<base64>"}, as inside
// image, attachment or request.attachments entries) by their name, and
// data URIs ("data:image/jpeg;base64,...") by the name
// att-{message}-{n}.{ext}: the message's position in the thread and the
// URI's position in that message, both from 1.
func (s *Service) Attachment(ctx context.Context, exchangeID, ref, filename string) ([]byte, string, error) {
	if !validFilename(filename) {
		return nil, "", errorf(ErrInvalid, "Invalid filename")
	}
	t, err := s.Get(ctx, exchangeID, ref)
	if err != nil {
		return nil, "", err
	}
	for i, m := range t.Messages {
		var v any
		if json.Unmarshal(m.Mess, &v) != nil {
			continue
		}
		n := 0
		var found []byte
		var ctype string
		walkJSON(v, func(obj map[string]any) bool {
			if name, ok := obj["name"].(string); ok && name == filename {
				if data, ok := obj["data"].(string); ok {
					if b, ct, ok := decodeData(data); ok {
						found, ctype = b, ct
						return true
					}
				}
			}
			return false
		}, func(str string) bool {
			if !strings.HasPrefix(str, "data:") {
				return false
			}
			n++
			b, ct, ok := decodeData(str)
			if !ok {
				return false
			}
			ext := extensions[ct]
			if ext == "" {
				ext = "bin"
			}
			if fmt.Sprintf("att-%d-%d.%s", i+1, n, ext) == filename {
				found, ctype = b, ct
				return true
			}
			return false
		})
		if found != nil {
			if ctype == "" {
				ctype = contentTypes[strings.TrimPrefix(path.Ext(filename), ".")]
			}
			if ctype == "" {
				ctype = "application/octet-stream"
			}
			return found, ctype, nil
		}
	}
	return nil, "", errorf(ErrNotFound, "Attachment not found")
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

// walkJSON visits objects and strings depth-first until a visitor says stop.
func walkJSON(v any, onObj func(map[string]any) bool, onStr func(string) bool) bool {
	switch x := v.(type) {
	case map[string]any:
		if onObj(x) {
			return true
		}
		for _, k := range slices.Sorted(maps.Keys(x)) {
			if walkJSON(x[k], onObj, onStr) {
				return true
			}
		}
	case []any:
		for _, e := range x {
			if walkJSON(e, onObj, onStr) {
				return true
			}
		}
	case string:
		return onStr(x)
	}
	return false
}
