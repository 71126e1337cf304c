// Package mcpserver serves the MESS exchange, the mail bus and the lease
// service to AI agents as Model Context Protocol tools, over MCP's
// Streamable HTTP transport (protocol revisions 2024-11-05 to 2025-11-25),
// built on the official Go SDK (github.com/modelcontextprotocol/go-sdk).
//
// New returns a Server, an http.Handler to mount at a path of your choice
// (messd mounts it at /mcp). Every HTTP request must carry an executor's API
// key as "Authorization: Bearer mess_{exchange}_{secret}"; the key decides
// the exchange and the agent every tool acts as, exactly as for the HTTP
// API. A request without a valid key is answered 401 with the HTTP API's
// JSON error before MCP sees it, and an MCP session can only be used with
// keys of the agent that opened it.
//
// # Tools
//
// Requests (with Config.Exchange): create_request, get_request,
// list_requests, wait_for_change, answer_request, confirm_request,
// cancel_request; for executors claim_request, post_message,
// complete_request, decline_request, fail_request, and update_request for
// any other status. Mail (with Config.Bus): send_mail, publish_mail,
// read_inbox, ack_mail, list_presence, heartbeat, set_subscriptions. Leases
// (with Config.Leases): acquire_lease, renew_lease, release_lease,
// lease_status, list_leases.
//
// Tools call the services' methods, so every rule of the HTTP API holds:
// roles, status transitions, validation and limits. A refused call is a
// tool error (IsError) whose text is the HTTP API's JSON error body, such
// as {"error":"thread is claimed by bob","code":"conflict","executor_id":"bob"}.
// Codes are internal/httpx's vocabulary, plus lease's stale_token and
// not_held, which tell a fenced-out holder from an expired one.
//
// # Resources
//
// mess://{exchange}/requests/{ref} is a request and mess://{exchange}/inbox/{agent}
// the agent's own inbox, both JSON. Subscribing to one (resources/subscribe)
// brings notifications/resources/updated when it changes: at once for
// requests (the exchange's event hook) and for mail sent through these
// tools, within Config.InboxPollInterval for other mail.
//
// # Concurrency
//
// A Server is safe for concurrent use. Tools run on the SDK's goroutines;
// notifications are sent by one goroutine that coalesces bursts, so the
// exchange's writers never wait for a client. Close ends every session and
// every waiting tool.
package mcpserver
