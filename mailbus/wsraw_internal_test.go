//go:build unix

package mailbus

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/internal/wsframe"
)

// A delivery written on the goroutine that wakes a thousand connections
// must not wait for a frame lock that a ping or reply stuck on a full
// socket holds: tryWrite leaves the whole frame to finish instead.
func TestTryWriteDoesNotWaitForTheFrameLock(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	fc := wsframe.NewConn(server)
	rf := newRawFrames(fc, func() { server.Close() }, 5*time.Second).(*rawFrames)
	buf := append(make([]byte, frameHeadroom), "hello"...)

	fc.Lock() // as a write blocked on a full socket would
	done := make(chan struct{})
	var whole bool
	go func() {
		defer close(done)
		whole, err = rf.tryWrite(buf)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("tryWrite waited for the frame lock")
	}
	fc.Unlock(nil)
	if err != nil || whole || rf.locked || !bytes.Equal(rf.rest, wsframe.Frame(buf)) {
		t.Fatalf("with the lock held elsewhere: whole %v, rest %q, locked %v, err %v; want the whole frame left, unlocked", whole, rf.rest, rf.locked, err)
	}
	if err := rf.finish(); err != nil {
		t.Fatal(err)
	}

	// Free, the frame goes out whole and the lock is released.
	if whole, err = rf.tryWrite(buf); err != nil || !whole {
		t.Fatalf("with the lock free: whole %v, err %v", whole, err)
	}
	if ok, err := fc.TryLock(); !ok || err != nil {
		t.Fatal("tryWrite kept the frame lock after a whole write")
	}
	fc.Unlock(nil)
	got := make([]byte, 14)
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(client, got); err != nil || string(got) != "\x81\x05hello\x81\x05hello" {
		t.Fatalf("read %q, %v", got, err)
	}
}
