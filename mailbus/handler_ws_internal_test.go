package mailbus

import (
	"testing"
	"time"
)

// Ensure replies queue up to maxQueuedReplies and no further: the waiter
// then waits until the flush takes them, or the connection closes.
func TestQueueRepliesWaitsForRoom(t *testing.T) {
	ws := &wsConn{running: true} // a busy flush: nothing takes the replies meanwhile
	ws.room.L = &ws.mu
	for range maxQueuedReplies {
		ws.queueReplies([][]byte{[]byte(`{}`)})
	}
	queued := make(chan struct{})
	go func() {
		ws.queueReplies([][]byte{[]byte(`{"n":1}`)})
		close(queued)
	}()
	select {
	case <-queued:
		t.Fatalf("queued past the bound: %d replies", len(ws.replies))
	case <-time.After(100 * time.Millisecond):
	}
	ws.mu.Lock()
	if n := len(ws.takeReplies()); n != maxQueuedReplies {
		t.Errorf("took %d replies, want %d", n, maxQueuedReplies)
	}
	ws.mu.Unlock()
	<-queued
	ws.mu.Lock()
	if n := len(ws.replies); n != 1 {
		t.Errorf("%d replies after the flush took its share, want 1", n)
	}
	ws.mu.Unlock()

	for range maxQueuedReplies - 1 {
		ws.queueReplies([][]byte{[]byte(`{}`)})
	}
	closed := make(chan struct{})
	go func() {
		ws.queueReplies([][]byte{[]byte(`{}`)})
		close(closed)
	}()
	ws.stop()
	<-closed
}
