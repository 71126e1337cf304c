package mess

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
)

// Ensure take finds exactly the attachments, and inflate gives back the
// document byte for byte.
func TestTakeInflate(t *testing.T) {
	png := "data:image/png;base64," + base64.StdEncoding.EncodeToString([]byte("\x89PNG\r\n\x1a\nimage"))
	b64 := base64.StdEncoding.EncodeToString([]byte("hello"))
	tests := []struct {
		name, doc string
		want      []string // names (alias after a slash)
	}{
		{"none", `[{"response":{"content":["just text",{"json":{"a":1}}]}}]`, nil},
		{"data URI", `[{"response":{"content":[{"image":"` + png + `"},"text"]}}]`, []string{"att-3-1.png"}},
		{"escaped slashes", `[{"image":"` + strings.ReplaceAll(png, "/", `\/`) + `"}]`, []string{"att-3-1.png"}},
		{"named object", `[{"attachment":{"name":"notes.txt","data":"` + b64 + `"}}]`, []string{"notes.txt"}},
		{"name after data", `[{"attachment":{"data":"` + b64 + `","name":"n.txt"}}]`, []string{"n.txt"}},
		{"named data URI", `[{"image":{"name":"door.png","data":"` + png + `"}}]`, []string{"att-3-1.png/door.png"}},
		{"name not a file name", `[{"attachment":{"name":"a/b","data":"` + b64 + `"}}]`, nil},
		{"data not base64", `[{"attachment":{"name":"x.txt","data":"not base64!"}}]`, nil},
		{"URI not base64", `["data:text/plain,hello","data:image/png;base64,@@@"]`, nil},
		{"member name is no value", `[{"` + png + `":"x"}]`, nil},
		{"two, in document order", `{"z":"` + png + `","a":["x",{"q":"` + png + `"}]}`, []string{"att-3-1.png", "att-3-2.png"}},
		{"unknown type", `["data:application/x-thing;base64,` + b64 + `"]`, []string{"att-3-1.bin"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := &extractor{message: 3, seq: 7}
			out, refs, err := x.take("", []byte(tt.doc))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range refs {
				n := r.Name
				if r.Alias != "" {
					n += "/" + r.Alias
				}
				got = append(got, n)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("found %v, want %v", got, tt.want)
			}
			if len(refs) > 0 && (strings.Contains(string(out), "base64,") || strings.Contains(string(out), b64)) {
				t.Fatalf("data left in %s", out)
			}
			stored := map[string][]byte{}
			for _, f := range x.files {
				stored[f.ref.Object] = f.literal
			}
			back, err := inflate(out, refs, func(o string) ([]byte, error) { return stored[o], nil })
			if err != nil || string(back) != tt.doc {
				t.Fatalf("inflate = %s, %v; want %s", back, err, tt.doc)
			}
		})
	}
}

// Ensure a message with too many attachments is refused.
func TestTake_tooMany(t *testing.T) {
	uris := make([]string, maxAttachmentsPerMessage+1)
	for i := range uris {
		uris[i] = `"data:image/png;base64,AAAA"`
	}
	x := &extractor{message: 1, seq: 1}
	if _, _, err := x.take("", []byte("["+strings.Join(uris, ",")+"]")); err == nil {
		t.Fatal("101 attachments taken")
	}
}

// Ensure scanStrings never panics on a document that is not JSON.
func TestScanStrings_garbage(t *testing.T) {
	for _, doc := range []string{`"`, `["a`, `}}]]`, `{"a":"\`, `{:"x"`, `[,"x"]`, "\"\\\"", `{"a"}`} {
		scanStrings([]byte(doc), func(strValue) {}, func(int) {})
		x := &extractor{}
		x.take("", []byte(doc))
	}
}

// Ensure the event buffer holds at most its count and its bytes, and
// always the newest event.
func TestPushEvent_bounded(t *testing.T) {
	ex := newExchange("x")
	for i := range 100 {
		ex.pushEventLocked(Event{EventID: fmt.Sprint(i), Payload: make([]byte, 1000)}, 50, 10*(1000+eventOverhead))
	}
	if len(ex.ring) != 10 || ex.ring[9].EventID != "99" || ex.ring[0].EventID != "90" {
		t.Fatalf("buffer holds %d events, %s..%s", len(ex.ring), ex.ring[0].EventID, ex.ring[len(ex.ring)-1].EventID)
	}
	ex.pushEventLocked(Event{EventID: "huge", Payload: make([]byte, 1<<20)}, 50, 10*(1000+eventOverhead))
	if len(ex.ring) != 1 || ex.ringBytes != 1<<20+eventOverhead {
		t.Fatalf("after an event over the bound the buffer holds %d events, %d bytes", len(ex.ring), ex.ringBytes)
	}
}
