package storage

import (
	"os"
	"syscall"
)

// datasync flushes f's data and the metadata needed to read it back (its
// size), skipping timestamps.
func datasync(f *os.File) error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if err != syscall.EINTR {
			return err
		}
	}
}

// preallocate writes n zero bytes to f from off. Zeros actually written,
// unlike fallocate's unwritten extents, need no extent conversion when data
// later lands on them, so the fdatasync after that write commits nothing to
// the filesystem journal.
func preallocate(f *os.File, off, n int64) error {
	for n > 0 {
		k := min(n, int64(len(zeros)))
		if _, err := f.WriteAt(zeros[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

var zeros = make([]byte, 256<<10)
