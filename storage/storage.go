package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Sentinel errors. Backends wrap them; callers test with errors.Is.
var (
	// ErrNotFound is returned by Get and Update when the key does not exist.
	ErrNotFound = errors.New("storage: not found")
	// ErrExists is returned by Create when the key already exists.
	ErrExists = errors.New("storage: already exists")
	// ErrVersionMismatch is returned by Update when the stored version is not
	// the one the caller read.
	ErrVersionMismatch = errors.New("storage: version mismatch")
	// ErrInvalidKey is returned when a key is not acceptable (see ValidKey).
	ErrInvalidKey = errors.New("storage: invalid key")
	// ErrUnavailable wraps failures that trying again later may cure: the
	// store could not be reached, or kept answering busy or with server
	// errors. Services answer them with 503.
	ErrUnavailable = errors.New("storage: unavailable")
)

// Object is a stored value and the opaque version that identifies this
// revision of it (an ETag on S3, a content digest on the filesystem).
type Object struct {
	Data    []byte
	Version string
}

// ListOptions selects a page of a listing.
type ListOptions struct {
	// After, when set, starts the page strictly after this key. Pass the
	// previous page's Next to continue a listing.
	After string
	// Limit caps the number of keys returned. Zero means 1000.
	Limit int
}

// ListPage is one page of keys in ascending byte order.
type ListPage struct {
	Keys []string
	// Next is the cursor for the following page; empty when this was the last.
	Next string
}

// Store is a keyed object store with the two conditional writes that
// concurrent writers need. Every method is safe for concurrent use, and a
// successful write is durable when it returns.
//
// Keys are slash-separated paths of validated segments (see ValidKey).
type Store interface {
	// Get returns the object at key, or an error wrapping ErrNotFound.
	Get(ctx context.Context, key string) (Object, error)
	// Put writes data at key unconditionally and returns the new version.
	Put(ctx context.Context, key string, data []byte) (string, error)
	// Create writes data at key only if no object exists there; otherwise it
	// returns an error wrapping ErrExists (S3: If-None-Match: *).
	Create(ctx context.Context, key string, data []byte) (string, error)
	// Update replaces the object at key only if its current version equals
	// version (S3: If-Match). It returns ErrVersionMismatch when another
	// write came first and ErrNotFound when the key is gone.
	Update(ctx context.Context, key string, data []byte, version string) (string, error)
	// Delete removes key. Deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// List returns keys starting with prefix, sorted, one page at a time.
	List(ctx context.Context, prefix string, opts ListOptions) (ListPage, error)
}

// DefaultListLimit is the page size List uses when ListOptions.Limit is zero.
const DefaultListLimit = 1000

// ValidKey reports whether key may be stored. A key is one or more segments
// joined by "/"; a segment is 1 to 255 bytes of ASCII letters, digits and
// "-_.=@+", and may not start with "." (so "..", hidden and temporary names
// can never be addressed). Backends call it on every key; callers still
// validate their own identifiers before building keys from them.
func ValidKey(key string) error {
	if key == "" || len(key) > 1024 {
		return fmt.Errorf("%w: %q", ErrInvalidKey, key)
	}
	for seg := range strings.SplitSeq(key, "/") {
		if err := validSegment(seg); err != nil {
			return fmt.Errorf("%w: %q: %v", ErrInvalidKey, key, err)
		}
	}
	return nil
}

// ValidPrefix reports whether prefix may be listed: empty, or a key, or a key
// followed by "/" or by a partial segment.
func ValidPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	p := strings.TrimSuffix(prefix, "/")
	if err := ValidKey(p); err != nil {
		return err
	}
	return nil
}

func validSegment(seg string) error {
	if seg == "" {
		return errors.New("empty segment")
	}
	if len(seg) > 255 {
		return errors.New("segment too long")
	}
	if seg[0] == '.' {
		return errors.New("segment starts with a dot")
	}
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '-', c == '_', c == '.', c == '=', c == '@', c == '+':
		default:
			return fmt.Errorf("byte %q not allowed", c)
		}
	}
	return nil
}

// Appender is an optional capability of a Store: objects that grow in place.
// A log written through it pays one durable append per batch instead of a
// new object per batch. Callers check for it with a type assertion and fall
// back to Create when a backend (S3, say) does not offer it.
type Appender interface {
	// CreateAppend creates an empty object at key, durably, and returns a
	// writer that extends it. It returns an error wrapping ErrExists when
	// the key is taken.
	CreateAppend(ctx context.Context, key string) (AppendWriter, error)
}

// Streamer is an optional capability of a Store: writing an object as it is
// produced, so that a large one (a snapshot of many megabytes) needs no
// buffer of its own size, and no version is computed for it. Callers check
// for it with a type assertion and fall back to Put.
type Streamer interface {
	// PutStream writes the object at key from what write writes to w,
	// unconditionally, atomically and durably, as Put does. When write
	// returns an error, nothing is written and the error is returned.
	PutStream(ctx context.Context, key string, write func(w io.Writer) error) error
}

// AppendWriter extends one object. It is not safe for concurrent use.
//
// A store may reserve space ahead of the data, because a durable write
// into space already allocated is cheaper than one that grows the object.
// Until the writer is closed, and after a crash, the object may therefore
// read back as the appended bytes followed by zero bytes. Appended data must
// not contain NUL, and readers stop at the first NUL.
type AppendWriter interface {
	// Append adds p at the end of the object and returns once it is
	// durable. After an error the end of the object is undefined (part of
	// p may be there): stop using the writer and close it.
	Append(p []byte) error
	// Close releases the writer and drops any space reserved past the
	// data. What was appended stays.
	Close() error
}
