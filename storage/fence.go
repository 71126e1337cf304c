package storage

import (
	"context"
	"errors"
)

// ErrFenced means a newer owner of a shared store has taken over: a write
// met its fence, or its owner record no longer names this process. Nothing
// written after it may be acknowledged.
var ErrFenced = errors.New("storage: fenced: another process owns this store now")

// A Fence is the authority under which one process writes a store that
// several processes can reach (an S3 bucket with a standby beside the
// writer). Package ownership provides one.
//
// The services take it as Config.Fence: their journals write Epoch on
// every line and fence each log with it before writing (see
// internal/journal), they Claim an exchange before they read or write its
// logs, and they Confirm an in-place update of an object that is not a
// log (an executor profile, an exchange record) before acknowledging it.
// A nil Fence means the store has a single writer (a local directory
// under messd's lock, or an in-memory store).
type Fence interface {
	// Epoch grows with every change of owner. It never changes for one
	// Fence.
	Epoch() uint64
	// Valid returns ErrFenced (wrapped) once this process could have been
	// replaced, judged on its own monotonic clock; it is cheap enough to
	// call before every acknowledgement.
	Valid() error
	// Claim makes this owner's epoch the exchange's in its owner record.
	// It returns ErrFenced if the record names a newer epoch.
	Claim(ctx context.Context, exchange string) error
	// Confirm reads the exchange's owner record and returns ErrFenced
	// unless it still shows this owner's epoch.
	Confirm(ctx context.Context, exchange string) error
	// Fenced tells the owner that a write met a newer owner's fence; the
	// process must stop serving.
	Fenced(err error)
}
