package mess

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Capability describes something an executor can do, as listed in the
// capability catalogue (YAML files in a directory).
type Capability struct {
	ID          string   `json:"id"`
	Description string   `json:"description"`
	Tags        []string `json:"tags"`
}

// LoadCapabilities reads every *.yaml and *.yml file in dir. Each file holds
// one or more documents separated by "---" lines, with id, description and
// tags (inline [a, b] or "- item" lines). Documents without id are skipped;
// a missing directory is an empty catalogue. A non-empty tag keeps only
// capabilities carrying it.
func LoadCapabilities(dir, tag string) ([]Capability, error) {
	out := []Capability{}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	} else if err != nil {
		return nil, err
	}
	for _, e := range ents {
		ext := filepath.Ext(e.Name())
		if e.IsDir() || (ext != ".yaml" && ext != ".yml") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		for _, doc := range splitDocs(string(b)) {
			c := parseCapability(doc)
			if c.ID == "" || (tag != "" && !slices.Contains(c.Tags, tag)) {
				continue
			}
			out = append(out, c)
		}
	}
	return out, nil
}

func splitDocs(s string) []string {
	var docs []string
	var cur strings.Builder
	for line := range strings.SplitSeq(s, "\n") {
		if strings.TrimRight(line, " \r") == "---" {
			docs = append(docs, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
	}
	return append(docs, cur.String())
}

func unquote(s string) string {
	s = strings.TrimSpace(s)
	if len(s) >= 2 && (s[0] == '"' || s[0] == '\'') && s[len(s)-1] == s[0] {
		return s[1 : len(s)-1]
	}
	return s
}

func parseCapability(doc string) Capability {
	c := Capability{Tags: []string{}}
	inTags := false
	for line := range strings.SplitSeq(doc, "\n") {
		line = strings.TrimRight(line, "\r")
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if inTags && strings.HasPrefix(trimmed, "- ") {
			c.Tags = append(c.Tags, unquote(trimmed[2:]))
			continue
		}
		inTags = false
		if line != trimmed && !strings.HasPrefix(trimmed, "- ") {
			continue // nested keys belong to fields we do not read
		}
		k, v, ok := strings.Cut(trimmed, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch strings.TrimSpace(k) {
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
			} else if v == "" {
				inTags = true
			}
		}
	}
	return c
}
