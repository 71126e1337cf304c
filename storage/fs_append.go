package storage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

var _ Appender = (*FS)(nil)

// CreateAppend implements Appender. The file is created in place (a reader
// may see it empty or growing, never a partial line that was acknowledged)
// and its directory entry is fsynced before the writer is returned.
func (s *FS) CreateAppend(ctx context.Context, key string) (AppendWriter, error) {
	if err := ValidKey(key); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p := s.path(key)
	dir := filepath.Dir(p)
	unlock := s.lock(key)
	defer unlock()
	if err := s.mkdirAll(dir); err != nil {
		return nil, fmt.Errorf("create %s: %w", key, err)
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o644)
	if errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("create %s: %w", key, ErrExists)
	} else if err != nil {
		return nil, fmt.Errorf("create %s: %w", key, err)
	}
	if err := syncDir(dir); err != nil {
		f.Close()
		os.Remove(p)
		return nil, fmt.Errorf("create %s: %w", key, err)
	}
	return &fsAppender{f: f, key: key}, nil
}

type fsAppender struct {
	f   *os.File
	key string
	err error
}

func (a *fsAppender) Append(p []byte) error {
	if a.err != nil {
		return a.err
	}
	if _, err := a.f.Write(p); err != nil {
		a.err = fmt.Errorf("append %s: %w", a.key, err)
		return a.err
	}
	if err := datasync(a.f); err != nil {
		// After a failed fsync the kernel may have dropped the dirty pages
		// and cleared the error; nothing written here can be trusted again.
		a.err = fmt.Errorf("append %s: %w", a.key, err)
		return a.err
	}
	return nil
}

func (a *fsAppender) Close() error {
	if a.err == nil {
		a.err = errors.New("storage: append writer closed")
	}
	return a.f.Close()
}
