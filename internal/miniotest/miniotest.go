// Package miniotest runs a real MinIO server on a loopback port for tests.
//
// The server binary is the pinned MinIO release below, built from the Go
// module proxy with `go install` the first time it is needed (a few
// minutes) and kept in the user's cache directory afterwards, so the
// project's test command works on a fresh machine with nothing installed
// by hand. MESS_MINIO_BIN names a binary to use instead.
package miniotest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Module is the MinIO server release the tests run.
const Module = "github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c"

// Root credentials of every test server.
const (
	AccessKey = "messtest"
	SecretKey = "messtest-secret-key"
)

// Binary returns the path of the MinIO server, installing it if needed.
// Concurrent test processes wait for one install.
func Binary() (string, error) {
	if p := os.Getenv("MESS_MINIO_BIN"); p != "" {
		return p, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "mess-tools")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	version := Module[strings.LastIndexByte(Module, '@')+1:]
	bin := filepath.Join(dir, "minio-"+version)
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".minio.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(bin); err == nil {
		return bin, nil // another process installed it while we waited
	}
	gobin, err := os.MkdirTemp(dir, "install-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(gobin)
	fmt.Fprintf(os.Stderr, "miniotest: installing %s (once; it is cached in %s)\n", Module, dir)
	cmd := exec.Command("go", "install", Module)
	cmd.Dir = gobin // outside any module
	cmd.Env = append(os.Environ(), "GOBIN="+gobin, "GOFLAGS=", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("miniotest: go install %s: %v\n%s", Module, err, out)
	}
	if err := os.Rename(filepath.Join(gobin, "minio"), bin); err != nil {
		return "", err
	}
	return bin, nil
}

// Server is one MinIO server process.
type Server struct {
	// Endpoint is host:port of the S3 API, on 127.0.0.1.
	Endpoint string

	bin, dir string
	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{}
}

// Start runs a MinIO server with its data in dir (created if missing) on a
// free loopback port and waits until it serves.
func Start(dir string) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &Server{Endpoint: fmt.Sprintf("127.0.0.1:%d", port), bin: bin, dir: dir}
	if err := s.Restart(); err != nil {
		return nil, err
	}
	return s, nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Restart starts the server again on the same address and data after Stop
// or Kill.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("miniotest: server is running")
	}
	console, err := freePort()
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, "server", "--quiet", "--address", s.Endpoint,
		"--console-address", fmt.Sprintf("127.0.0.1:%d", console), s.dir)
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+AccessKey, "MINIO_ROOT_PASSWORD="+SecretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CI_CD=1")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the test
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.cmd, s.exited = cmd, exited
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + s.Endpoint + "/minio/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			s.cmd = nil
			return errors.New("miniotest: minio exited at start")
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stopLocked(syscall.SIGKILL)
			return errors.New("miniotest: minio not ready after 60s")
		}
	}
}

// Stop ends the server gracefully and waits for it.
func (s *Server) Stop() { s.mu.Lock(); defer s.mu.Unlock(); s.stopLocked(syscall.SIGTERM) }

// Kill ends the server at once (SIGKILL) and waits for it.
func (s *Server) Kill() { s.mu.Lock(); defer s.mu.Unlock(); s.stopLocked(syscall.SIGKILL) }

func (s *Server) stopLocked(sig syscall.Signal) {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd = nil
}

// Client returns a minio-go client with the root credentials.
func (s *Server) Client() (*minio.Client, error) {
	return minio.New(s.Endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(AccessKey, SecretKey, ""),
		BucketLookup: minio.BucketLookupPath,
	})
}

// NewBucket creates a bucket with a fresh name and returns the name.
func (s *Server) NewBucket(ctx context.Context) (string, error) {
	c, err := s.Client()
	if err != nil {
		return "", err
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "test-" + hex.EncodeToString(b[:])
	if err := c.MakeBucket(ctx, name, minio.MakeBucketOptions{}); err != nil {
		return "", err
	}
	return name, nil
}
