package storage

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// lockStripes is how many lock files serialise writers. Writers to keys in
// different stripes never wait for each other.
const lockStripes = 64

// FS is the filesystem Store, the embedded default. Every write goes to a
// temporary file that is fsynced and renamed into place, and the directory
// is fsynced, so a write that returned survives a crash and a reader never
// sees a partial object. Conditional writes are serialised per key stripe by
// a mutex (goroutines) and flock(2) (processes sharing the directory).
type FS struct {
	root   string
	tmp    string
	locks  [lockStripes]sync.Mutex
	lockFs [lockStripes]*os.File
	dirs   sync.Map // directories known to exist durably
}

var _ Store = (*FS)(nil)

// NewFS opens (creating if needed) a filesystem store rooted at dir.
func NewFS(dir string) (*FS, error) {
	if dir == "" {
		return nil, errors.New("storage: NewFS: empty directory")
	}
	root, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("storage: NewFS: %w", err)
	}
	s := &FS{root: root, tmp: filepath.Join(root, ".tmp")}
	if err := os.MkdirAll(s.tmp, 0o755); err != nil {
		return nil, fmt.Errorf("storage: NewFS: %w", err)
	}
	// Temporary files left by a crash are garbage: their renames never
	// happened. Young ones may belong to another process writing right now.
	if ents, err := os.ReadDir(s.tmp); err == nil {
		for _, e := range ents {
			if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > time.Hour {
				_ = os.Remove(filepath.Join(s.tmp, e.Name()))
			}
		}
	}
	lockDir := filepath.Join(root, ".lock")
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, fmt.Errorf("storage: NewFS: %w", err)
	}
	for i := range s.lockFs {
		f, err := os.OpenFile(filepath.Join(lockDir, fmt.Sprintf("%02d", i)), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("storage: NewFS: %w", err)
		}
		s.lockFs[i] = f
	}
	if err := syncDir(root); err != nil {
		s.Close()
		return nil, fmt.Errorf("storage: NewFS: %w", err)
	}
	s.dirs.Store(root, true)
	return s, nil
}

// Root returns the absolute directory the store lives in.
func (s *FS) Root() string { return s.root }

// Close releases the lock files. Stored data is already durable.
func (s *FS) Close() error {
	for i, f := range s.lockFs {
		if f != nil {
			f.Close()
			s.lockFs[i] = nil
		}
	}
	return nil
}

func (s *FS) path(key string) string {
	return filepath.Join(s.root, filepath.FromSlash(key))
}

func (s *FS) lock(key string) func() {
	h := uint32(2166136261)
	for i := 0; i < len(key); i++ {
		h = (h ^ uint32(key[i])) * 16777619
	}
	i := h % lockStripes
	s.locks[i].Lock()
	fd := int(s.lockFs[i].Fd())
	for {
		err := syscall.Flock(fd, syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	return func() {
		_ = syscall.Flock(fd, syscall.LOCK_UN)
		s.locks[i].Unlock()
	}
}

// Get implements Store.
func (s *FS) Get(ctx context.Context, key string) (Object, error) {
	if err := ValidKey(key); err != nil {
		return Object{}, err
	}
	if err := ctx.Err(); err != nil {
		return Object{}, err
	}
	data, err := os.ReadFile(s.path(key))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) || isDirErr(err) {
			return Object{}, fmt.Errorf("get %s: %w", key, ErrNotFound)
		}
		return Object{}, fmt.Errorf("get %s: %w", key, err)
	}
	return Object{Data: data, Version: digest(data)}, nil
}

func isDirErr(err error) bool {
	var pe *fs.PathError
	return errors.As(err, &pe) && errors.Is(pe.Err, syscall.EISDIR)
}

// Put implements Store.
func (s *FS) Put(ctx context.Context, key string, data []byte) (string, error) {
	return s.write(ctx, key, data, func(string) error { return nil })
}

// PutStream implements Streamer: the object goes to its temporary file
// through a buffer as write produces it.
func (s *FS) PutStream(ctx context.Context, key string, write func(w io.Writer) error) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	tmp, err := s.writeTempFrom(func(f *os.File) error {
		bw := bufio.NewWriterSize(f, streamBuffer)
		if err := write(bw); err != nil {
			return err
		}
		return bw.Flush()
	})
	if err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	defer os.Remove(tmp) // no-op once renamed
	unlock := s.lock(key)
	defer unlock()
	return s.install(key, tmp)
}

// streamBuffer is the buffer PutStream writes through.
const streamBuffer = 256 << 10

// Create implements Store.
func (s *FS) Create(ctx context.Context, key string, data []byte) (string, error) {
	return s.write(ctx, key, data, func(p string) error {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("create %s: %w", key, ErrExists)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("create %s: %w", key, err)
		}
		return nil
	})
}

// Update implements Store.
func (s *FS) Update(ctx context.Context, key string, data []byte, version string) (string, error) {
	return s.write(ctx, key, data, func(p string) error {
		cur, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("update %s: %w", key, ErrNotFound)
		} else if err != nil {
			return fmt.Errorf("update %s: %w", key, err)
		}
		if digest(cur) != version {
			return fmt.Errorf("update %s: %w", key, ErrVersionMismatch)
		}
		return nil
	})
}

// write runs check and, if it passes, replaces the object atomically and
// durably, all under the key's lock.
func (s *FS) write(ctx context.Context, key string, data []byte, check func(path string) error) (string, error) {
	if err := ValidKey(key); err != nil {
		return "", err
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	p := s.path(key)
	// The temporary file is written and fsynced before taking the lock, so
	// writers to one stripe only serialise on the check and the rename.
	tmp, err := s.writeTemp(data)
	if err != nil {
		return "", fmt.Errorf("write %s: %w", key, err)
	}
	defer os.Remove(tmp) // no-op once renamed
	unlock := s.lock(key)
	defer unlock()
	if err := check(p); err != nil {
		return "", err
	}
	if err := s.install(key, tmp); err != nil {
		return "", err
	}
	return digest(data), nil
}

// install renames the durable temporary file tmp to key's path and makes
// the rename durable. The caller holds the key's lock.
func (s *FS) install(key, tmp string) error {
	p := s.path(key)
	dir := filepath.Dir(p)
	if err := s.mkdirAll(dir); err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	return nil
}

func (s *FS) writeTemp(data []byte) (string, error) {
	return s.writeTempFrom(func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// writeTempFrom writes a fresh temporary file with write and fsyncs it; a
// failure removes it.
func (s *FS) writeTempFrom(write func(f *os.File) error) (string, error) {
	var rnd [12]byte
	_, _ = rand.Read(rnd[:])
	name := filepath.Join(s.tmp, hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return "", err
	}
	if err := write(f); err != nil {
		f.Close()
		os.Remove(name)
		return "", err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(name)
		return "", err
	}
	if err := f.Close(); err != nil {
		os.Remove(name)
		return "", err
	}
	return name, nil
}

// mkdirAll creates dir and its missing parents, fsyncing each parent so the
// new entries survive a crash.
func (s *FS) mkdirAll(dir string) error {
	if _, ok := s.dirs.Load(dir); ok {
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir && len(parent) >= len(s.root) {
		if err := s.mkdirAll(parent); err != nil {
			return err
		}
	}
	err := os.Mkdir(dir, 0o755)
	switch {
	case err == nil:
		if err := syncDir(parent); err != nil {
			return err
		}
	case errors.Is(err, fs.ErrExist):
		if fi, serr := os.Stat(dir); serr != nil || !fi.IsDir() {
			return fmt.Errorf("%s exists and is not a directory", dir)
		}
	default:
		return err
	}
	s.dirs.Store(dir, true)
	return nil
}

// Delete implements Store.
func (s *FS) Delete(ctx context.Context, key string) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	unlock := s.lock(key)
	defer unlock()
	p := s.path(key)
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("delete %s: %w", key, err)
	}
	if err := syncDir(filepath.Dir(p)); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// List implements Store. It walks the tree in key order, visiting each
// directory's entries sorted as their keys sort (a directory "d" sorts as
// "d/"), and skips whole subtrees that lie before opts.After.
func (s *FS) List(ctx context.Context, prefix string, opts ListOptions) (ListPage, error) {
	if err := ValidPrefix(prefix); err != nil {
		return ListPage{}, err
	}
	limit := opts.Limit
	if limit <= 0 {
		limit = DefaultListLimit
	}
	// Start at the deepest directory wholly named by the prefix.
	base := ""
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		base = prefix[:i]
	}
	var page ListPage
	var walk func(dirKey string) (bool, error)
	walk = func(dirKey string) (bool, error) {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		ents, err := os.ReadDir(s.path(dirKey))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				return true, nil
			}
			return false, err
		}
		type ent struct {
			key   string
			sort  string
			isDir bool
		}
		list := make([]ent, 0, len(ents))
		for _, e := range ents {
			name := e.Name()
			if name[0] == '.' {
				continue
			}
			k := name
			if dirKey != "" {
				k = dirKey + "/" + name
			}
			isDir := e.IsDir()
			sk := k
			if isDir {
				sk = k + "/"
			}
			// Prune by prefix and by cursor.
			if !strings.HasPrefix(sk, prefix) && !strings.HasPrefix(prefix, sk) {
				continue
			}
			if opts.After != "" && sk <= opts.After && !(isDir && strings.HasPrefix(opts.After, sk)) {
				continue
			}
			list = append(list, ent{k, sk, isDir})
		}
		slices.SortFunc(list, func(a, b ent) int { return strings.Compare(a.sort, b.sort) })
		for _, e := range list {
			if e.isDir {
				more, err := walk(e.key)
				if err != nil || !more {
					return more, err
				}
				continue
			}
			if !strings.HasPrefix(e.key, prefix) {
				continue
			}
			if len(page.Keys) == limit {
				page.Next = page.Keys[len(page.Keys)-1]
				return false, nil
			}
			page.Keys = append(page.Keys, e.key)
		}
		return true, nil
	}
	if _, err := walk(base); err != nil {
		return ListPage{}, fmt.Errorf("list %s: %w", prefix, err)
	}
	return page, nil
}

func digest(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:16])
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return err
	}
	return nil
}
