package ident

import (
	"regexp"
	"strings"
	"testing"
)

// The hand-written checks must accept exactly what these expressions
// accept; the expressions are the specification.
var (
	idRE    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)
	typeRE  = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)
	tokenRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)
)

var cases = []string{
	"", "a", "A9", "a_b-c", "_a", "-a", "a.b", "a..b", ".a", "a.", "a.b.c", "a/b", "a b",
	"é", "a\x00", "msg-1700000000000-0badf00d", "a:b", "x.y_z-1",
	strings.Repeat("a", 64), strings.Repeat("a", 65), strings.Repeat("a", 128), strings.Repeat("a", 129),
	"a." + strings.Repeat("b", 126), "a." + strings.Repeat("b", 127),
}

func TestValid(t *testing.T) {
	for _, s := range cases {
		if got, want := Valid(s), idRE.MatchString(s); got != want {
			t.Errorf("Valid(%q) = %v, want %v", s, got, want)
		}
		if got, want := ValidDotted(s, 128), len(s) <= 128 && typeRE.MatchString(s); got != want {
			t.Errorf("ValidDotted(%q) = %v, want %v", s, got, want)
		}
		if got, want := ValidToken(s, 128, "._:-"), tokenRE.MatchString(s); got != want {
			t.Errorf("ValidToken(%q) = %v, want %v", s, got, want)
		}
	}
}

func FuzzValid(f *testing.F) {
	for _, s := range cases {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if Valid(s) != idRE.MatchString(s) {
			t.Errorf("Valid(%q) disagrees with %s", s, idRE)
		}
		if ValidDotted(s, 128) != (len(s) <= 128 && typeRE.MatchString(s)) {
			t.Errorf("ValidDotted(%q) disagrees with %s", s, typeRE)
		}
		if ValidToken(s, 128, "._:-") != tokenRE.MatchString(s) {
			t.Errorf("ValidToken(%q) disagrees with %s", s, tokenRE)
		}
	})
}
