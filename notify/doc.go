// Package notify tells executors about requests and fires their hooks,
// through a durable outbox so the exchange's API never waits on a phone,
// a chat webhook or a task tracker.
//
// New(ctx, Config{Source: svc}) starts it for a *mess.Service (any Source
// will do). The Source gives notify what it needs and nothing more: the
// events, the exchanges, threads, and each executor's delivery profile
// (display name, capabilities, channels, hooks and preferences), never API
// keys. Without a Config.Store the outbox lives in memory.
//
// # Channels, preferences and routing
//
// An executor's profile lists notification channels (ntfy, slack,
// google_chat, webhook) and preferences (min_priority, quiet_hours with
// minutes and a time zone; urgent requests pass quiet hours). A new request
// notifies the executors that have every capability it requires, except
// its requestor; a status change notifies the thread's requestor and
// executor, except whoever made the change.
//
// # Hooks
//
// Hooks (webhook, ifttt, zapier, home_assistant, todoist, linear,
// google_tasks) fire on on_request_created, _claimed, _started, _completed,
// _declined, _cancelled, _failed and _needs_input; the spellings of the
// MESS exchange server 1.0 (on_request_rejected, in-progress, canceled,
// ...) are accepted.
// Strings in a hook's config are {{var}} templates. The id a hook's target
// returns becomes the thread's external_id, so a later hook of the same
// executor on the same thread can use {{external_id}}: hooks of one
// executor for one thread run one at a time in event order.
//
// A profile has at most Config.MaxChannels channels (20) and
// Config.MaxHooks hooks (50): each is a delivery per event.
// Config.ValidateProfile refuses a profile over a cap, as it refuses
// unknown types and URLs the policy does not allow.
//
// # Outbox
//
// Each event is turned into deliveries (one per destination, keyed by event
// id and destination), recorded in a journal, then sent by workers with a
// timeout, retried with exponential backoff and jitter, and given up after
// Config.MaxAttempts with the failure kept for the executor to see. Slack
// and Google Chat webhooks get at most one post per interval; deliveries
// that arrive sooner are merged into the next post, never dropped (per
// process: two processes sharing a store each keep their own interval). A
// restart replays the journal and derives deliveries again for recent
// events, skipping those already recorded, so each is sent once (at least
// once if the process dies between a send and its record). The scheduler
// keeps pending deliveries in a heap by due time, hooks behind the hook
// before them, so a wake costs O(log n) however many are pending.
//
// # Durability and fencing
//
// Each exchange has its own outbox journal in Config.Store, folded from
// time to time into a snapshot (internal/snaplog):
//
//	notify/exchange={id}/outbox/...       the journal
//	notify/exchange={id}/snap/{gen}.json  snapshots, gen counting up from 1
//	notify/started.json                   when the outbox first started
//
// Outboxes found in the store load in parallel at start; one first used
// later (a new exchange) loads then. An outbox written before journals
// were kept per exchange (notify/outbox/ and notify/snapshot.json) is read
// at every start and left in place, never written: an exchange starts
// from its part of it until it has a snapshot of its own.
//
// With Config.Fence the store may be shared with a standby that takes
// over when this process stops (package ownership). Before it reads an
// exchange's outbox, a Service claims the exchange (Fence.Claim) and
// writes its fence at the end of the journal, then replays it: the replay
// sees every record of the owner it replaced, whose next record meets the
// fence and fails. A replaced Service records and sends nothing more, and
// its handler answers 503; a delivery it had in flight may be sent again
// by its successor (delivery is at least once already). Snapshots are
// folded from the journal as stored and written with Create under the
// next generation's name, so a replaced owner that compacts before it
// notices writes a correct, merely older snapshot, and never deletes a
// fence or the snapshot's boundary.
//
// # Safety
//
// Outgoing requests go to http(s) only. They never reach the special-purpose
// ranges of the IANA IPv4 and IPv6 registries (documentation,
// benchmarking, multicast, reserved, ...; IPv4-mapped, NAT64 and 6to4
// addresses are judged by the IPv4 address they carry), nor, unless
// Config.Policy allows them, loopback and this machine's own addresses, or
// private, shared, link-local and metadata addresses. The check runs after
// DNS resolution and again on every redirect. Webhooks carry an
// HMAC-SHA256 signature over timestamp and body (see Sign and Verify). A
// header that a template fills with a line break is a permanent failure,
// not retried. Failure reports name only the host, never the URL path
// where Slack and IFTTT keep their credentials, nor the address a name
// resolved to or the resolver asked.
//
// # HTTP
//
// NewHandler serves each executor its own pending and failed deliveries.
// Errors are {"error", "code"} in the codes every service of the module
// uses (internal/httpx): invalid_input, unauthorized, forbidden,
// not_found, method_not_allowed, rate_limited, unavailable (503: closed,
// another process owns the outbox now, or the request was cancelled) and
// internal.
//
// # Concurrency
//
// A Service is safe for concurrent use. The Source's OnEvent callback only
// appends to a queue; one goroutine derives and records deliveries, one
// schedules them, and Config.Workers goroutines send them. Close stops all
// of them and waits for sends in flight. Compaction reads the journal as
// stored and takes no lock writers take; qmu and mu are never held
// together.
package notify
