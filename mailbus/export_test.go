package mailbus

import "errors"

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
			if s := a.sess; s != nil {
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
	SendRequest       = sendRequest
	AckRequest        = ackRequest
	InboxResponse     = inboxResponse
	SubscriptionsBody = subscriptionsBody
)
