//go:build !linux

package main

import (
	"context"
	"io"
	"net"
	"sync"
)

// readFrames reads the data frames of every connection in subs, one
// goroutine each, and calls onFrame(i, payload) for each, never
// concurrently; payload is only valid during the call. stop closes the
// connections and waits for the readers.
func readFrames(subs []*rawConn, onFrame func(i int, payload []byte)) (stop func(), err error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, c := range subs {
		wg.Go(func() {
			var buf []byte
			for {
				var err error
				if buf, err = c.next(buf); err != nil {
					return
				}
				mu.Lock()
				onFrame(i, buf)
				mu.Unlock()
			}
		})
	}
	return func() {
		for _, c := range subs {
			c.Close()
		}
		wg.Wait()
	}, nil
}

// dialSocket connects to host:port.
func dialSocket(ctx context.Context, host string) (io.ReadWriteCloser, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", host)
}
