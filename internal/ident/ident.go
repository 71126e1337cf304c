// Package ident validates the identifiers that reach storage keys, URLs and
// journal records. The three services share one definition, so an id that
// one accepts the others accept too.
package ident

// Valid reports whether s is an exchange, executor or agent id:
// ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$.
func Valid(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !alnum(c) && (i == 0 || c != '_' && c != '-') {
			return false
		}
	}
	return true
}

// ValidDotted reports whether s is one or more non-empty words of
// [A-Za-z0-9_-] joined by dots, at most max bytes long (message types).
func ValidDotted(s string, max int) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	prevDot := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if prevDot {
				return false
			}
			prevDot = true
		case alnum(c) || c == '_' || c == '-':
			prevDot = false
		default:
			return false
		}
	}
	return !prevDot
}

// ValidToken reports whether s starts with a letter or digit and goes on
// with letters, digits and the bytes in extra, at most max bytes long
// (client-chosen message ids).
func ValidToken(s string, max int, extra string) bool {
	if len(s) == 0 || len(s) > max || !alnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !alnum(c) && !contains(extra, c) {
			return false
		}
	}
	return true
}

func alnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func contains(s string, c byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return true
		}
	}
	return false
}
