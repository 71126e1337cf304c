// Package mess is the MESS exchange: requestors (often AI agents) post
// requests for real-world help, and human or machine executors claim,
// progress and complete them with responses.
//
// A Service holds any number of exchanges. Its state is an in-memory
// projection of an append-only event log kept in a storage.Store under
// events/exchange={id}/{YYYY}/{MM}/{DD}/{ULID}.jsonl, one JSON event per
// line in the schema of MESS protocol v1 (event_id, ts, exchange_id,
// thread_ref, event_type, actor_id, payload) plus a per-thread seq. DuckDB
// reads the log directly:
//
//	SELECT * FROM read_json_auto('data/events/**/*.jsonl', hive_partitioning=true);
//
// New rebuilds the projection from the log: per exchange, from the newest
// snapshot of the projection (snapshots/mess/exchange={id}/..., written
// in the background and at Close, see Config.SnapshotEvery) and the
// events after it, many exchanges at once. Reads never touch storage,
// except for attachments. Every change is appended durably, through a
// group commit that lets many concurrent writers share one fsync, before
// the method that made it returns. Executor profiles live in
// executors/exchange={id}/{executor}.json and exchange records (owner,
// invites) in exchanges/{id}.json, both written with conditional writes.
//
// # Attachments
//
// Files travel inside requests and messages as data URIs
// ("data:image/png;base64,...") or named objects ({"name": "notes.txt",
// "data": "<base64>"}). Each is stored as an object of its own,
// attachments/exchange={id}/{ref}/{seq}-{n}, before the change carrying it
// is acknowledged, and the log, the projection and the event buffer keep
// only the string "mess-attachment:{name}" in its place plus a reference
// in the event's payload ("attachments"). Get and the event stream show
// those references; GetWithAttachments, and so GET .../requests/{ref},
// puts the files back as they were sent, because clients show images from
// the thread. Attachment (GET .../attachments/{name}) serves one file.
//
// # Limits
//
// What one member can make the server hold is bounded: a request or
// message besides its attachments (Config.MaxMessageBytes), the
// attachments one member stores (Config.MaxAttachmentBytes), the
// attachments of one message (100), the number of exchanges
// (Config.MaxExchanges), the recent events buffered per exchange
// (Config.EventBuffer, Config.EventBufferBytes) and, over HTTP, anonymous
// registrations per client address (HandlerConfig.RegisterRate).
//
// # Revoked keys
//
// WatchKey gives whatever a key opened (an event stream, a long-poll, a
// WebSocket or a lease wait in another service) a channel that closes the
// moment the key is revoked or rotated away, so it ends at once.
//
// # Serving it
//
// NewHandler serves the HTTP API of MESS protocol v1 (requests, long-polls,
// the event stream, executors and "who am I" (GET /me), keys, invites (made,
// listed and revoked by the exchange's owner), the capability catalogue) as
// a plain net/http Handler to mount on any mux. LoadCapabilities reads the
// catalogue it serves. Authenticator lets the module's other services
// (lease, mailbus, notify) accept the exchange's executor keys, so one key
// works for all of them on one server.
//
// # Statuses and roles
//
// Threads follow protocol v1: pending, claimed, in_progress, waiting, held,
// needs_input, needs_confirmation, partial, and the terminal completed,
// failed, declined, cancelled, expired, superseded and delegated. ParseStatus
// accepts the spellings other clients send (in-progress, needs-input,
// rejected, canceled, received). Update enforces who may do what:
//
//   - Any executor may claim a pending thread; setting any executor status
//     on a pending thread (completing it, say) claims it implicitly.
//   - Once claimed, only the claimant changes the status; others get
//     ErrConflict naming the claimant. The claimant may release it (pending).
//   - Any executor but the requestor may decline a pending thread without
//     claiming it; the decliner becomes its executor_id and the reason
//     (the update's message) is kept in its history. Once claimed, only
//     the claimant declines. delegated needs a claim first.
//   - Only the requestor cancels or supersedes; it may also move a thread
//     from needs_input or needs_confirmation back to in_progress (answering).
//   - Only the exchange expires a thread: pending threads whose needed_by
//     passes are expired automatically.
//   - Terminal threads never change status again.
//   - A request with confirm_before cannot be completed until the requestor
//     has answered a needs_confirmation. The confirmation belongs to the
//     executor that asked for it: releasing the claim, or any change of
//     executor, clears it.
//
// # Concurrency
//
// A Service is safe for concurrent use. Changes to one thread are serialised
// (so of many concurrent claims exactly one wins); changes to different
// threads proceed in parallel and share durable writes. Callbacks registered
// with OnEvent run on the writer's goroutine and must not block.
package mess
