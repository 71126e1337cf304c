// Package mailbus is a durable mail bus for the agents (executors) of an
// exchange: broadcast by message type, direct messages, per-recipient
// acknowledgements with redelivery, and presence, served over WebSocket and
// HTTP and usable in process.
//
// Use New to create a Bus on a storage.Store, NewHandler to serve it at
// /api/v1/exchanges/{exchange_id}/mailbus/... (and, with
// HandlerConfig.KeyExchange, at the /api/mail/... routes of Jetpack's
// worker API that its HttpMailBus calls), Bus.Agent for an agent in the
// same process and NewClient for a remote one. Local and Client both
// implement MailBus, the IMailBus method set of Jetpack's mail adapters
// (cf-mail-adapter 0.1.0).
//
// # Semantics
//
//   - Publish delivers to every agent of the exchange whose durable
//     subscriptions (a type, "prefix.*" or "*") match the message type,
//     and to every agent that has never set its subscriptions (Jetpack's
//     clients cannot state any), except the sender: an agent never
//     receives its own broadcast. An agent is known to the bus from its
//     first contact (a connection, a heartbeat, an inbox read, mail sent to
//     it). A message with To set is direct, whichever call sent it: only
//     that agent gets it, whatever its subscriptions. SendTo to oneself is
//     delivered.
//   - The server stamps From with the authenticated agent, assigns an id
//     (msg-<ms>-<8hex>) when none is given, and gives each recipient's copy a
//     sequence number Seq in that recipient's inbox.
//   - A message is accepted (HTTP 2xx, or an "accepted" frame) only once it
//     is durable in every recipient's inbox. An agent that is offline
//     receives, on its next connection and in order, every message sent to
//     it directly and every broadcast that matched its subscriptions while
//     it was away, within retention (age, count and bytes per inbox). Resume with
//     since=<last Seq seen>; without since the server resumes after the last
//     message it handed to any connection of that agent (its cursor).
//   - An ackRequired message is redelivered (same id and Seq) after the
//     visibility timeout until its recipient acknowledges it; acknowledgement
//     is per message and recipient. Delivery is therefore at-least-once for
//     ackRequired messages and exactly-in-order-once per connection for the
//     rest; receivers deduplicate redeliveries by id (Client does).
//   - Heartbeats are presence only: they update the sender's last-heartbeat
//     time and reach live subscribers of "heartbeat" with Seq 0, and are never
//     stored. An agent is online while its last heartbeat (or connect) is
//     within the presence timeout.
//   - Several connections of one agent (two processes, a page reload, an
//     overlapping reconnect) are served side by side. Each gets every
//     message of the agent's one inbox from its own start on; the inbox
//     holds each message once. Acknowledgements are per agent: one from any
//     connection stops redelivery on all of them, and an overdue message is
//     sent again on every connection that had it.
//   - A coordination.response message whose payload is {"action":"ack",
//     "messageId":id} also acknowledges id for its sender: it is how
//     Jetpack's HttpMailBus acknowledges.
//
// # Lease frames
//
// With HandlerConfig.Leases set, an agent's WebSocket also carries lease
// frames (lease frames v1, described in package lease):
// {"action":"lease.acquire","ref":"1","file":"src/a.go","ttlMs":30000},
// lease.renew, lease.release, lease.status and lease.cancel, answered with
// lease.acquired, lease.renewed, lease.released, lease.status or an error
// frame carrying the lease API's code (stale_token, not_held,
// invalid_input with its field, ...). They are pipelined like publish and
// send frames, answered in order of completion, each grant, renewal and
// release once durable, and share the lease journal's group commits. The
// welcome frame says "leases": true when they are served. Client sends its
// AcquireLease, ReleaseLease and IsLeased calls as lease frames while it is
// connected to such a server, and over the lease service's HTTP API
// otherwise.
//
// # Concurrency
//
// Bus, Client and Local are safe for concurrent use. Within an exchange,
// state changes are ordered by one mutex and written to the journal in that
// order (group commit); a single committer per exchange makes them visible
// once durable, so an agent never sees seq n+1 before seq n is durable. Lock
// order: Bus.mu, then exchange.mu, then agent.mu; no I/O happens under
// them. Each connection pulls from its agent's inbox, so a slow reader never
// blocks a publisher and costs no memory beyond the retained inbox.
// Handlers of one Client or Local run one at a time on one goroutine, in
// arrival order; a handler that fails or panics is reported to OnError and
// does not affect other handlers or messages, but a handler that blocks
// holds up the ones after it.
//
// # Caveats
//
// If a journal write fails (a broken disk), the affected message is never
// delivered and its sender gets an error, but the sequence numbers assigned
// after it may shift on the next restart. Presence is kept in memory only.
// Two connections of one agent both handle every message: processes that
// should share work need agent ids of their own.
package mailbus
