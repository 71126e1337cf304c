package lease

import (
	"fmt"
	"path"
	"unicode/utf8"

	"github.com/meatspace-exchange/mess/internal/ident"
)

// maxNameLen is the longest lease name accepted, in bytes.
const maxNameLen = 1024

// canonicalName returns the form under which a lease on name is kept:
// the name is a slash-separated path cleaned lexically, so "./a//b" and
// "a/b" are the same lease. Names must be valid UTF-8 without control
// characters; "", "." and "/" are rejected because they name nothing.
func canonicalName(name string) (string, error) {
	if name == "" || len(name) > maxNameLen || !utf8.ValidString(name) {
		return "", fmt.Errorf("%w: %q", ErrInvalidName, name)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return "", fmt.Errorf("%w: control character in %q", ErrInvalidName, name)
		}
	}
	c := path.Clean(name)
	if c == "." || c == "/" {
		return "", fmt.Errorf("%w: %q", ErrInvalidName, name)
	}
	return c, nil
}

// validID reports whether id is an acceptable exchange or agent id:
// ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$. Ids end up in journal records and, for
// exchanges, in URLs, so they are checked before any use.
func validID(id string) error {
	if !ident.Valid(id) {
		return fmt.Errorf("%w: %q", ErrInvalidID, id)
	}
	return nil
}
