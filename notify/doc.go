// Package notify tells executors about requests and fires their hooks,
// through a durable outbox so the exchange's API never waits on a phone,
// a chat webhook or a task tracker.
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
// _declined, _cancelled, _failed and _needs_input; the original server's
// spellings (on_request_rejected, in-progress, canceled, ...) are accepted.
// Strings in a hook's config are {{var}} templates. The id a hook's target
// returns becomes the thread's external_id, so a later hook of the same
// executor on the same thread can use {{external_id}}: hooks of one
// executor for one thread run one at a time in event order.
//
// # Outbox
//
// Each event is turned into deliveries (one per destination, keyed by event
// id and destination), recorded in a journal, then sent by workers with a
// timeout, retried with exponential backoff and jitter, and given up after
// Config.MaxAttempts with the failure kept for the executor to see. Slack
// and Google Chat webhooks get at most one post per interval; deliveries
// that arrive sooner are merged into the next post, never dropped. A
// restart replays the journal and derives deliveries again for recent
// events, skipping those already recorded, so each is sent once (at least
// once if the process dies between a send and its record).
//
// # Safety
//
// Outgoing requests go to http(s) only and never to loopback, private,
// link-local or metadata addresses unless Config.Policy allows them; the
// check runs after DNS resolution and again on every redirect. Webhooks
// carry an HMAC-SHA256 signature over timestamp and body (see Sign and
// Verify). Failure reports name only scheme and host, never the URL path
// where Slack and IFTTT keep their credentials.
//
// # Concurrency
//
// A Service is safe for concurrent use. The Source's OnEvent callback only
// appends to a queue; one goroutine derives and records deliveries, one
// schedules them, and Config.Workers goroutines send them. Close stops all
// of them and waits for sends in flight.
package notify
