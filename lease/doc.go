// Package lease grants time-limited, exclusive leases on names (file paths)
// within an exchange, with fencing tokens, so that agents editing shared
// files can take turns safely.
//
// A Manager holds the leases; NewHandler serves them over HTTP as the
// lease API v1, under /api/v1/exchanges/{exchange_id}/leases/, and over a
// WebSocket as lease frames (below), and Client calls that API, over the
// WebSocket once Client.Connect has opened it. New(ctx, Config{}) is a
// working Manager that keeps its leases in memory (storage.NewMemory);
// give it a Config.Store to keep them across restarts.
//
// # Semantics
//
//   - A lease is on a name within an exchange, held by one agent until
//     its deadline. Names are slash-separated paths cleaned lexically:
//     "./a//b" and "a/b" are the same lease.
//   - Acquire grants a free or expired lease and refuses a held one with a
//     *HeldError naming the holder and its deadline. Re-acquiring one's own
//     lease renews it and never shortens it.
//   - Every grant carries a fencing token. Tokens come from one counter
//     per exchange (a name lives in one exchange), so they strictly
//     increase per name, across restarts and takeovers too. A resource
//     guarded by a lease should remember the
//     highest token it has seen and reject writes carrying a lower one:
//     that stops a holder whose lease passed (a long GC pause, a partition)
//     from overwriting its successor's work.
//   - Renew takes the token. Release takes it too, or 0 for the caller's
//     current lease: the caller is already identified by its agent id
//     (over HTTP, its API key), and mail bus clients release by name
//     only. A token that is no longer current is refused (ErrStaleToken),
//     and so is an operation on a lease the caller does not hold
//     (ErrNotHeld: free, expired or another agent's). Tokens remain what
//     fences the guarded resource.
//   - AcquireWait queues for a held lease. Waiters are served first come,
//     first served: a release or the holder's expiry hands the lease to the
//     oldest waiter only, so there is no polling and no thundering herd,
//     and a plain Acquire cannot jump the queue.
//   - TTLs must lie in [Config.MinTTL, Config.MaxTTL]. Deadlines are
//     measured on the monotonic clock: a lease counts as held strictly
//     before its deadline and free from the deadline on. A queued waiter is
//     handed an expired lease by a timer set for the deadline.
//
// # Durability
//
// Every grant, renewal and release is appended to a group-commit journal
// (internal/journal) in Config.Store before it is acknowledged. Each
// exchange has its own journal, snapshots and token counter:
//
//	{Prefix}/exchange={id}/log/...          the journal
//	{Prefix}/exchange={id}/snap/{gen}.json  snapshots, gen counting up from 1
//
// Every Config.CompactInterval and at Close, the journal objects written
// since an exchange's last snapshot are folded into its next one, and the
// objects that snapshot covers are deleted (never a fence, never the
// snapshot's boundary object). A snapshot is made from the objects as
// stored, not from memory, so it says exactly what they said. After a
// crash the leases still held are held again, each for at most the time
// it had left when last written, so a restart never extends a lease;
// tokens resume above every token the exchange's snapshot and journal
// hold. A grant whose write fails is undone before the error is returned,
// and until its write is settled nobody else hears of it: an acquire that
// would be refused in its name and a status of that name wait for the
// write, and List leaves the grant out, so that nobody is told of a holder
// that a failed write or a crash then makes never to have been.
// A release whose write fails is reported as an error, and the lease may
// come back after a crash until its deadline, which only ever delays
// others.
//
// The wall clock is only used across restarts: if it steps back while the
// server is down, a lease still ends no later than the TTL it had left.
//
// A store written before journals were kept per exchange (one journal
// under {Prefix}/log/, snapshots under {Prefix}/snap/) is read at every
// start and left in place, never written: an exchange starts from its
// leases there until it has a snapshot of its own, and every exchange's
// tokens start above the highest token there. Those objects carry that
// high-water mark, so they must not be deleted.
//
// # Fencing
//
// With Config.Fence the store may be shared with a standby that takes
// over when this process stops (package ownership). Before it reads an
// exchange, a Manager claims it (Fence.Claim) and writes its fence at the
// end of the exchange's journal, then replays the journal: the replay
// sees every write the owner it replaced made, and that owner's next write
// meets the fence and fails. Exchanges found at start load in parallel;
// one first used later is claimed and loaded then. Once replaced, a
// Manager acknowledges nothing more and answers nothing from memory: every
// operation fails with an error wrapping storage.ErrFenced (HTTP 503
// unavailable). Snapshots are written with Create under the next
// generation's name, so a replaced owner that compacts before it notices
// writes a correct, merely older snapshot, and a successor whose replay it
// disturbs (by deleting what that snapshot covers) reads again from it.
//
// # HTTP errors
//
// Error answers are {"error": message, "code": code} in the module's one
// vocabulary (internal/httpx): invalid_input (400, with a "field" member
// naming the request member at fault: file, ttlMs, token, agentId or
// exchange_id; in error frames also ref, action or frame),
// malformed_json (400), unauthorized (401), forbidden (403), not_found
// (404), method_not_allowed (405), too_large (413), unavailable (503:
// shutting down, another process serves the exchange now, or the request
// was cancelled) and internal (500); error frames carry the same codes.
// Two 409 codes are the lease API's own, because a client must tell them
// apart: stale_token (the token is not the current grant's: the lease
// passed on) and not_held (the caller holds no live lease on the name).
// Client maps every answer, over HTTP or in a frame, back onto the
// sentinel errors. A blocking acquire (waitMs) whose API key is revoked while it
// waits ends at once with 401 "API key revoked", when the Authenticator
// can watch keys (HandlerConfig.Auth).
//
// # Lease frames (WebSocket)
//
// GET .../leases/ws[?batch=1], authenticated like every lease endpoint,
// opens a WebSocket that carries the lease API as JSON text frames, lease
// frames v1; the mail bus WebSocket carries the same frames (mailbus
// HandlerConfig.Leases). Requests name their operation in "action" and
// carry a client-chosen "ref" of 1 to MaxRefLen bytes, which the answer
// echoes:
//
//	{"action":"lease.acquire","ref":"1","file":"src/a.go","ttlMs":30000,"waitMs":0}
//	{"action":"lease.renew","ref":"2","file":"src/a.go","token":7,"ttlMs":30000}
//	{"action":"lease.release","ref":"3","file":"src/a.go","token":7}   (token 0 or absent: the caller's lease)
//	{"action":"lease.status","ref":"4","file":"src/a.go"}
//	{"action":"lease.cancel","ref":"1"}                                 (ends waiting acquire 1; not answered)
//
// Answers carry the HTTP API's answer bodies, and errors its error bodies
// (code and field included):
//
//	{"action":"lease.acquired","ref":"1","acquired":true,"file":"src/a.go","agentId":"alice","token":7,"expiresAt":1763760000000,"remainingMs":30000}
//	{"action":"lease.acquired","ref":"1","acquired":false,"file":"src/a.go","agentId":"bob","expiresAt":1763760000000,"remainingMs":12000}
//	{"action":"lease.renewed","ref":"2","renewed":true,"file":...,"agentId":...,"token":7,"expiresAt":...,"remainingMs":...}
//	{"action":"lease.released","ref":"3","released":true}
//	{"action":"lease.status","ref":"4","isLeased":true,"agentId":"alice","expiresAt":...,"token":7,"remainingMs":...}
//	{"action":"error","ref":"3","error":"stale fencing token: ...","code":"stale_token"}
//
// Requests are pipelined: the server reads the next frame without waiting
// for the one before, runs them concurrently (so pipelined writes share the
// journal's group commits), and answers each once it is done, a grant,
// renewal or release once durable: answers come in order of completion.
// With batch=1, answers ready together share a frame as a JSON array; a
// client frame on this WebSocket (not the mail bus's) may likewise hold a
// JSON array of requests, which Client sends for calls made together. A
// frame that is not JSON, lacks a ref or has one too long, names an unknown
// action or is binary gets an error frame (without ref when it has no
// usable one) and the connection stays open; a frame over
// HandlerConfig.MaxBodyBytes closes it with 1009. At most 1,024 operations
// of a connection run at once, waiting acquires included; beyond that the
// server stops reading its frames until one ends. Waiting acquires end with
// their connection. The server pings every HandlerConfig.PingInterval and
// closes a connection that sent nothing, not even a pong, for a whole
// interval; it answers pings, echoes a client's close frame, and closes
// with 1002 on a frame RFC 6455 forbids. It closes the connection with
// 1001 when the Manager closes and with 1008 when its API key is revoked,
// after ending its waiting acquires; a Client's calls then in flight fail
// with an error wrapping ErrDisconnected and a *CloseError carrying the
// code. FrameSession runs lease frames on any connection; FrameClient
// makes calls on one.
//
// # Concurrency
//
// Manager, Client and the handler are safe for concurrent use. The Manager
// shards its leases over 256 mutexes; no lock is held during I/O (a
// journal write is queued under the shard lock, so that a name's records
// are journaled in the order its state changed, and waited for after; on
// the lease WebSocket, acquires that do not wait, renewals and releases
// are finished by the journal's flusher instead, with no goroutine of
// their own).
// List and ReleaseAll visit every shard in turn, so they see each shard at
// a different instant. Lock order: Manager.closeMu (shared) before a shard
// mutex; compaction takes its own mutex and never a shard mutex.
package lease
