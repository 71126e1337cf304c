package notify

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
)

var tmplVar = regexp.MustCompile(`\{\{\s*([\w.]+)\s*\}\}`)

// Expand replaces {{name}} and {{a.b}} in s with values from vars, as the
// MESS exchange server 1.0 does: a missing value becomes "", objects
// become JSON.
func Expand(s string, vars map[string]any) string {
	if !strings.Contains(s, "{{") {
		return s
	}
	return tmplVar.ReplaceAllStringFunc(s, func(m string) string {
		path := tmplVar.FindStringSubmatch(m)[1]
		var cur any = vars
		for _, part := range strings.Split(path, ".") {
			mm, ok := cur.(map[string]any)
			if !ok {
				return ""
			}
			if cur, ok = mm[part]; !ok {
				return ""
			}
		}
		switch v := cur.(type) {
		case nil:
			return ""
		case string:
			return v
		case *string:
			if v == nil {
				return ""
			}
			return *v
		case fmt.Stringer:
			return v.String()
		case map[string]any, []any:
			b, _ := json.Marshal(v)
			return string(b)
		default:
			return fmt.Sprint(v)
		}
	})
}

// expandValue applies Expand to every string inside v (not to keys).
func expandValue(v any, vars map[string]any) any {
	switch x := v.(type) {
	case string:
		return Expand(x, vars)
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, val := range x {
			out[k] = expandValue(val, vars)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i := range x {
			out[i] = expandValue(x[i], vars)
		}
		return out
	}
	return v
}
