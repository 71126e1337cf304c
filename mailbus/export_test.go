package mailbus

import (
	"errors"
)

// DropConnections ends every live session as a network failure would.
func (b *Bus) DropConnections() {
	b.mu.Lock()
	exs := make([]*exchange, 0, len(b.exs))
	for _, ex := range b.exs {
		exs = append(exs, ex)
	}
	b.mu.Unlock()
	for _, ex := range exs {
		ex.mu.Lock()
		for _, a := range ex.agents {
			a.mu.Lock()
			for _, s := range a.sessions {
				s.kick(errors.New("dropped by test"))
			}
			a.mu.Unlock()
		}
		ex.mu.Unlock()
	}
}

// The wire shapes, for black-box tests of the protocol.
type (
	Frame             = frame
	AckRequest        = ackRequest
	InboxResponse     = inboxResponse
	SubscriptionsBody = subscriptionsBody
)

// SetWriteRaw selects the frame path of the handlers made from now on: the
// hand-written one (wsraw.go) or the WebSocket library's.
func SetWriteRaw(on bool) (restore func()) {
	old := writeRaw
	writeRaw = on
	return func() { writeRaw = old }
}

// SendRequest is the body of POST /send.
type SendRequest struct {
	TargetAgent string  `json:"targetAgent"`
	Message     Message `json:"message"`
}
