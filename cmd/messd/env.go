package main

import (
	"fmt"
	"strconv"
	"time"
)

// envReader reads settings from the environment, all in one way: a
// duration or an integer must be positive (negative only where the setting
// documents that it disables something), a boolean is "true" or "false",
// and an unset or empty variable leaves the default. The first bad setting
// is kept in err, naming the variable, and messd refuses to start with it.
type envReader struct {
	getenv func(string) string
	err    error
}

// negativeDisables marks a setting whose negative value turns it off.
const negativeDisables = true

func (r *envReader) fail(name, want, got string) {
	if r.err == nil {
		r.err = fmt.Errorf("%s: want %s, got %q", name, want, got)
	}
}

// duration reads a Go duration such as 30s or 1m30s.
func (r *envReader) duration(name string, def time.Duration, negOK bool) time.Duration {
	v := r.getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d == 0 || (d < 0 && !negOK) {
		want := "a positive duration such as 30s"
		if negOK {
			want += ", or a negative one to disable"
		}
		r.fail(name, want, v)
		return def
	}
	return d
}

// integer reads a decimal integer.
func (r *envReader) integer(name string, def int64, negOK bool) int64 {
	v := r.getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n == 0 || (n < 0 && !negOK) {
		want := "a positive integer"
		if negOK {
			want += ", or a negative one to disable"
		}
		r.fail(name, want, v)
		return def
	}
	return n
}

// boolean reads true or false, nothing else.
func (r *envReader) boolean(name string, def bool) bool {
	switch v := r.getenv(name); v {
	case "":
		return def
	case "true":
		return true
	case "false":
		return false
	default:
		r.fail(name, "true or false", v)
		return def
	}
}
