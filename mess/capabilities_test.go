package mess_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/meatspace-exchange/mess/mess"
)

func TestLoadCapabilities(t *testing.T) {
	tests := []struct {
		name    string
		files   fstest.MapFS
		want    string // id:tag,tag;... in catalogue order
		wantErr string // a substring of the error
	}{
		{"empty", fstest.MapFS{}, "", ""},
		{"inline tags and documents", fstest.MapFS{
			"a.yaml": {Data: []byte("id: photo:capture\ndescription: Take a photo\ntags: [camera, 'visual']\n---\n# only a comment\n---\nid: \"door:check\"\ntags:\n  - home\n- outside\n")},
		}, "photo:capture:camera,visual;door:check:home,outside", ""},
		{"files in name order, others ignored", fstest.MapFS{
			"b.yml":       {Data: []byte("id: b\n")},
			"a.yaml":      {Data: []byte("id: a\r\nparams:\r\n  size: 3\r\n  list:\r\n    - x\r\nexamples:\r\n- one\r\n")},
			"notes.txt":   {Data: []byte("not yaml at all")},
			"sub/c.yaml":  {Data: []byte("id: c\n")},
			"d.yaml.orig": {Data: []byte("junk")},
		}, "a:;b:", ""},
		{"document without id", fstest.MapFS{"x.yaml": {Data: []byte("id: a\n---\ndescription: lost\n")}}, "", "x.yaml:3: document has no id"},
		{"not key: value", fstest.MapFS{"x.yaml": {Data: []byte("id: a\njust words\n")}}, "", `x.yaml:2: want "key: value"`},
		{"not UTF-8", fstest.MapFS{"x.yaml": {Data: []byte("id: \xff\n")}}, "", "x.yaml:1: not UTF-8"},
		{"duplicate id", fstest.MapFS{"x.yaml": {Data: []byte("id: a\n")}, "y.yaml": {Data: []byte("id: a\n")}}, "", `y.yaml: id "a" is already defined in x.yaml`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cat, err := mess.LoadCapabilities(tt.files)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, c := range cat {
				got = append(got, c.ID+":"+strings.Join(c.Tags, ","))
			}
			if s := strings.Join(got, ";"); s != tt.want {
				t.Fatalf("catalogue = %q, want %q", s, tt.want)
			}
		})
	}
}

// A server without a catalogue directory serves an empty catalogue.
func TestLoadCapabilities_missingDir(t *testing.T) {
	cat, err := mess.LoadCapabilities(os.DirFS(filepath.Join(t.TempDir(), "missing")))
	if err != nil || cat == nil || len(cat) != 0 {
		t.Fatalf("LoadCapabilities = %v, %v; want an empty catalogue", cat, err)
	}
}

func TestCatalogue_Tagged(t *testing.T) {
	cat := mess.Catalogue{{ID: "a", Tags: []string{"x"}}, {ID: "b", Tags: []string{"y"}}}
	for _, tt := range []struct {
		tag  string
		want int
	}{{"", 2}, {"x", 1}, {"z", 0}} {
		if got := cat.Tagged(tt.tag); got == nil || len(got) != tt.want {
			t.Errorf("Tagged(%q) = %v, want %d non-nil", tt.tag, got, tt.want)
		}
	}
	if got := mess.Catalogue(nil).Tagged(""); got == nil {
		t.Error("nil catalogue's Tagged is nil; its JSON would be null")
	}
}
