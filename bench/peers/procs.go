package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// server is one process started for one run, with its own data directory.
type server struct {
	name string
	cmd  *exec.Cmd
	dir  string
	log  *os.File
	done chan error
}

// serverSpec says how to start one server.
type serverSpec struct {
	name  string
	bin   string
	args  []string
	env   []string          // added to this process's environment
	files map[string]string // written into its directory before it starts
	ready func(ctx context.Context) error
}

// startServer starts sp.bin in a fresh directory under parent (also its
// working directory) and waits until sp.ready succeeds. Its output goes to
// a log in that directory, shown when it fails.
func startServer(ctx context.Context, parent string, sp serverSpec) (*server, error) {
	dir, err := os.MkdirTemp(parent, "peers-"+sp.name+"-")
	if err != nil {
		return nil, err
	}
	s := &server{name: sp.name, dir: dir, done: make(chan error, 1)}
	for name, content := range sp.files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	if s.log, err = os.Create(filepath.Join(dir, "server.log")); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s.cmd = exec.Command(sp.bin, sp.args...)
	s.cmd.Dir = dir
	s.cmd.Env = append(os.Environ(), sp.env...)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	// Its own process group, so ^C on the terminal reaches only this
	// program, which then stops the server in order; and told to stop
	// should this program die without doing so.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := s.cmd.Start(); err != nil {
		s.log.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	go func() { s.done <- s.cmd.Wait() }()
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		err := sp.ready(rctx)
		if err == nil {
			return s, nil
		}
		select {
		case werr := <-s.done:
			s.done <- werr
			err = fmt.Errorf("%s exited at start (%v): %s", sp.name, werr, s.tail())
		case <-rctx.Done():
			err = fmt.Errorf("%s not ready: %v: %s", sp.name, err, s.tail())
		case <-time.After(50 * time.Millisecond):
			continue
		}
		s.stop()
		return nil, err
	}
}

// stop ends the server with SIGTERM (SIGKILL after 20 s) and removes its
// directory.
func (s *server) stop() error {
	var err error
	if s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err = <-s.done:
		case <-time.After(20 * time.Second):
			s.cmd.Process.Kill()
			err = fmt.Errorf("%s did not stop in 20 s; killed", s.name)
			<-s.done
		}
	}
	s.log.Close()
	if rerr := os.RemoveAll(s.dir); rerr != nil && err == nil {
		err = rerr
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		// Stopped by our signal, or exited non-zero while stopping: only
		// the second is worth a word, and neither spoils the figure.
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM {
			return nil
		}
	}
	return err
}

// tail returns the end of the server's log.
func (s *server) tail() string {
	b, _ := os.ReadFile(s.log.Name())
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(bytes.TrimSpace(b))
}

// freePort finds a loopback port nobody is listening on.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// dialReady is a ready check for servers that are up once they accept.
func dialReady(addr string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	}
}
