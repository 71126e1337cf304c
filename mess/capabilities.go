package mess

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"unicode/utf8"
)

// Capability describes something an executor can do, as listed in the
// capability catalogue.
type Capability struct {
	ID          string   `json:"id"`
	Description string   `json:"description"`
	Tags        []string `json:"tags"`
}

// Catalogue is the capability catalogue: what executors of this server
// can declare and requests can require, in the order of its files.
type Catalogue []Capability

// Tagged returns the capabilities carrying tag, or all of them when tag is
// empty. It never returns nil, so the catalogue's JSON is always an array.
func (c Catalogue) Tagged(tag string) Catalogue {
	if tag == "" {
		if c == nil {
			return Catalogue{}
		}
		return c
	}
	out := Catalogue{}
	for _, cp := range c {
		if slices.Contains(cp.Tags, tag) {
			out = append(out, cp)
		}
	}
	return out
}

// LoadCapabilities reads every *.yaml and *.yml file at the root of fsys,
// in name order. A file holds one or more documents separated by "---"
// lines; a document has top-level "id", "description" and "tags" (inline
// [a, b] or "- item" lines). Other top-level keys, indented lines and
// comments are ignored, and a document of only comments is skipped. A
// missing root is an empty catalogue, so a server may run without one.
//
// The error names the file and line of the first problem: a document
// without an id, a top-level line that is not "key: value", text that is
// not UTF-8, or an id defined twice.
func LoadCapabilities(fsys fs.FS) (Catalogue, error) {
	ents, err := fs.ReadDir(fsys, ".")
	if errors.Is(err, fs.ErrNotExist) {
		return Catalogue{}, nil
	} else if err != nil {
		return nil, fmt.Errorf("mess: capabilities: %w", err)
	}
	out := Catalogue{}
	seen := map[string]string{}
	for _, e := range ents {
		ext := path.Ext(e.Name())
		if e.IsDir() || (ext != ".yaml" && ext != ".yml") {
			continue
		}
		b, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, fmt.Errorf("mess: capabilities: %w", err)
		}
		caps, err := parseCapabilities(string(b))
		if err != nil {
			return nil, fmt.Errorf("mess: capabilities: %s:%w", e.Name(), err)
		}
		for _, c := range caps {
			if f, dup := seen[c.ID]; dup {
				return nil, fmt.Errorf("mess: capabilities: %s: id %q is already defined in %s", e.Name(), c.ID, f)
			}
			seen[c.ID] = e.Name()
			out = append(out, c)
		}
	}
	return out, nil
}

// parseCapabilities reads the documents of one file. Its errors start
// with the line number.
func parseCapabilities(s string) ([]Capability, error) {
	if !utf8.ValidString(s) {
		return nil, fmt.Errorf("1: not UTF-8 text")
	}
	var out []Capability
	var c Capability
	start, n, content := 1, 0, false
	block := "" // the top-level key whose "- item" lines follow
	end := func() error {
		if c.ID == "" && content {
			return fmt.Errorf("%d: document has no id", start)
		}
		if c.ID != "" {
			if c.Tags == nil {
				c.Tags = []string{}
			}
			out = append(out, c)
		}
		c, content, block = Capability{}, false, ""
		return nil
	}
	for line := range strings.SplitSeq(s, "\n") {
		n++
		line = strings.TrimRight(line, " \t\r")
		trimmed := strings.TrimLeft(line, " \t")
		if line == "---" {
			if err := end(); err != nil {
				return nil, err
			}
			start = n + 1
			continue
		}
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		content = true
		if block != "" && (trimmed == "-" || strings.HasPrefix(trimmed, "- ")) {
			if block == "tags" {
				c.Tags = append(c.Tags, unquote(strings.TrimPrefix(trimmed, "-")))
			}
			continue
		}
		if line != trimmed {
			continue // nested keys belong to fields we do not read
		}
		k, v, ok := strings.Cut(trimmed, ":")
		if !ok {
			return nil, fmt.Errorf("%d: want \"key: value\", got %q", n, trimmed)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		block = ""
		if v == "" {
			block = k
		}
		switch k {
		case "id":
			c.ID = unquote(v)
		case "description":
			c.Description = unquote(v)
		case "tags":
			if strings.HasPrefix(v, "[") && strings.HasSuffix(v, "]") {
				for t := range strings.SplitSeq(v[1:len(v)-1], ",") {
					if t = unquote(t); t != "" {
						c.Tags = append(c.Tags, t)
					}
				}
			}
		}
	}
	if err := end(); err != nil {
		return nil, err
	}
	return out, nil
}

func unquote(s string) string {
	s = strings.TrimSpace(s)
	if len(s) >= 2 && (s[0] == '"' || s[0] == '\'') && s[len(s)-1] == s[0] {
		return s[1 : len(s)-1]
	}
	return s
}
