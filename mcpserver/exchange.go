package mcpserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/meatspace-exchange/mess/mess"
)

// createInput is a request as a model writes it: every field of
// mess.Request, with the protocol's shapes spelled out for the schema.
type createInput struct {
	Intent        string         `json:"intent" jsonschema:"What you need done, in one clear sentence a person can act on. Required."`
	ID            string         `json:"id,omitempty" jsonschema:"Your own identifier for this request (up to 256 bytes), echoed back in replies as re."`
	Priority      mess.Priority  `json:"priority,omitempty" jsonschema:"How urgent it is; executors filter notifications by it. Default normal."`
	Context       []any          `json:"context,omitempty" jsonschema:"What the person needs to know: plain strings for text, or objects such as {\"image\": \"https://... or data:image/jpeg;base64,...\"}, {\"url\": \"https://...\"}, {\"file\": \"uri\"}, {\"json\": {...}}."`
	ResponseHint  []any          `json:"response_hint,omitempty" jsonschema:"What kind of answer you want, e.g. [\"text\"], [\"image\"], [\"confirmation\"], [{\"structured\": {\"fields\": [...]}}] or [\"location\"]."`
	Requires      []any          `json:"requires,omitempty" jsonschema:"Capability ids an executor must have, e.g. [\"photo:capture\"], or {\"cap-id\": metadata} objects."`
	Constraints   map[string]any `json:"constraints,omitempty" jsonschema:"Limits on where, when and how: {\"location\": \"address\" or {\"lat\",\"lng\",\"radius_km\"}, \"timing\": {\"not_before\", \"expires\", \"urgency\": \"whenever|soon|now\"}, \"environment\": [...]}."`
	Precision     string         `json:"precision,omitempty" jsonschema:"How literally to follow the request: loose, guided or exact."`
	Compensation  map[string]any `json:"compensation,omitempty" jsonschema:"What is offered in return, e.g. {\"shells\": 5, \"note\": \"thanks!\"}."`
	NeededBy      *time.Time     `json:"needed_by,omitempty" jsonschema:"RFC 3339 time after which the request expires if nobody has claimed it."`
	ConfirmBefore bool           `json:"confirm_before,omitempty" jsonschema:"If true the executor must ask for your confirmation (status needs_confirmation) before completing; answer with confirm_request."`
	// IdempotencyKey makes a retried create return the first result.
	IdempotencyKey string `json:"idempotency_key,omitempty" jsonschema:"Any unique string; retrying create_request with the same key returns the request the first call made instead of a duplicate (remembered for 24 hours)."`
}

func (in createInput) request() (mess.Request, error) {
	r := mess.Request{Intent: in.Intent, ID: in.ID, Priority: in.Priority, Precision: in.Precision,
		NeededBy: in.NeededBy, ConfirmBefore: in.ConfirmBefore}
	for _, f := range []struct {
		dst *json.RawMessage
		v   any
		set bool
	}{
		{&r.Context, in.Context, in.Context != nil},
		{&r.ResponseHint, in.ResponseHint, in.ResponseHint != nil},
		{&r.Requires, in.Requires, in.Requires != nil},
		{&r.Constraints, in.Constraints, in.Constraints != nil},
		{&r.Compensation, in.Compensation, in.Compensation != nil},
	} {
		if !f.set {
			continue
		}
		b, err := json.Marshal(f.v)
		if err != nil {
			return r, err
		}
		*f.dst = b
	}
	return r, nil
}

type createOutput struct {
	Ref      string      `json:"ref" jsonschema:"The request's reference; pass it to the other tools."`
	Status   mess.Status `json:"status"`
	Replayed bool        `json:"replayed" jsonschema:"True when an earlier call with the same idempotency_key made this request."`
	URI      string      `json:"uri" jsonschema:"The request's resource; subscribe to it to be notified of changes."`
}

type refInput struct {
	Ref string `json:"ref" jsonschema:"The request's reference, as create_request or list_requests returned it (e.g. 2025-02-01-XY1Z)."`
}

type threadOutput struct {
	Thread mess.Thread `json:"thread" jsonschema:"The request with its status, executor, MESS messages and history of changes."`
	URI    string      `json:"uri"`
}

type listInput struct {
	Statuses    []mess.Status `json:"statuses,omitempty" jsonschema:"Keep only requests in these statuses."`
	ExecutorID  string        `json:"executor_id,omitempty" jsonschema:"Keep only requests claimed by this executor."`
	RequestorID string        `json:"requestor_id,omitempty" jsonschema:"Keep only requests made by this executor (use your own id for yours)."`
	Priority    mess.Priority `json:"priority,omitempty" jsonschema:"Keep only requests of this priority."`
	Since       *time.Time    `json:"since,omitempty" jsonschema:"Keep only requests updated at or after this RFC 3339 time."`
	Limit       int           `json:"limit,omitempty" jsonschema:"Page size, 1 to 1000 (default 200)."`
	Cursor      string        `json:"cursor,omitempty" jsonschema:"next_cursor of the previous page, to continue a listing."`
}

type waitInput struct {
	Ref            string        `json:"ref,omitempty" jsonschema:"The request to watch. Omit to wait for any change in the exchange."`
	AfterSeq       *int64        `json:"after_seq,omitempty" jsonschema:"With ref: return once the request's seq passes this; pass the seq of the last result you saw so no change is missed. Default: its current seq (wait for the next change)."`
	AfterVersion   *uint64       `json:"after_version,omitempty" jsonschema:"Without ref: return once the exchange's version passes this (from the previous call or list_requests). Default: the current version."`
	Statuses       []mess.Status `json:"statuses,omitempty" jsonschema:"Without ref: list only requests in these statuses in the result (e.g. [\"pending\"] to find work)."`
	TimeoutSeconds *float64      `json:"timeout_seconds,omitempty" jsonschema:"How long to wait, in seconds (default 30, at most 120). The result says changed false when nothing changed in time."`
}

// seqMessage is a MESS message with the seq of the change that added it.
type seqMessage struct {
	Seq  int64           `json:"seq"`
	From string          `json:"from"`
	TS   time.Time       `json:"ts"`
	Mess json.RawMessage `json:"mess"`
}

type waitOutput struct {
	Changed bool `json:"changed" jsonschema:"True when something changed; false when the timeout passed first."`
	// With ref.
	Ref         string              `json:"ref,omitempty"`
	Status      mess.Status         `json:"status,omitempty" jsonschema:"The request's status now."`
	ExecutorID  *string             `json:"executor_id,omitempty" jsonschema:"Who has claimed it, if anyone."`
	Seq         int64               `json:"seq,omitempty" jsonschema:"Pass as after_seq to wait for the next change."`
	NewMessages []seqMessage        `json:"new_messages,omitempty" jsonschema:"MESS messages added after after_seq (responses, questions, answers)."`
	NewHistory  []mess.HistoryEntry `json:"new_history,omitempty" jsonschema:"Status changes and messages after after_seq, with the notes sent with them."`
	// Without ref.
	Version uint64         `json:"version,omitempty" jsonschema:"Without ref: pass as after_version to wait for the next change."`
	Threads []mess.Summary `json:"threads,omitempty" jsonschema:"Without ref: the most recently updated requests (filtered by statuses)."`
}

type answerInput struct {
	Ref     string         `json:"ref" jsonschema:"The request that asked a question (status needs_input)."`
	Answer  string         `json:"answer" jsonschema:"Your answer to the executor's question, as text."`
	Answers map[string]any `json:"answers,omitempty" jsonschema:"Answers to structured questions, keyed by the question's field or id."`
}

type confirmInput struct {
	Ref  string `json:"ref" jsonschema:"The request waiting for your confirmation (status needs_confirmation)."`
	Note string `json:"note,omitempty" jsonschema:"Anything the executor should know with your go-ahead."`
}

type noteInput struct {
	Ref    string `json:"ref" jsonschema:"The request's reference."`
	Reason string `json:"reason,omitempty" jsonschema:"Why, in a sentence the other side will read."`
}

type failInput struct {
	Ref         string `json:"ref" jsonschema:"The request's reference."`
	Reason      string `json:"reason" jsonschema:"What went wrong, for the requestor."`
	Recoverable bool   `json:"recoverable,omitempty" jsonschema:"True if trying again later could succeed."`
}

type claimInput struct {
	Ref      string `json:"ref" jsonschema:"The pending request to take on."`
	Note     string `json:"note,omitempty" jsonschema:"A note for the requestor, e.g. when you expect to be done."`
	Estimate string `json:"estimate,omitempty" jsonschema:"How long it will take, as an ISO 8601 duration such as PT45M."`
}

type messageInput struct {
	Ref  string          `json:"ref" jsonschema:"The request's reference."`
	Mess json.RawMessage `json:"mess" jsonschema:"A MESS message: an array of single-key blocks, e.g. [{\"status\": {\"re\": REF, \"code\": \"in_progress\", \"message\": \"on my way\"}}], [{\"status\": {\"re\": REF, \"code\": \"needs_input\", \"questions\": [{\"id\": \"color\", \"question\": \"Which one?\"}]}}], [{\"response\": {\"re\": REF, \"content\": [\"text\", {\"image\": \"data:...\"}]}}] or [{\"answer\": {\"re\": REF, \"value\": \"...\"}}]."`
}

type completeInput struct {
	Ref        string         `json:"ref" jsonschema:"The request you did (claimed by you, or still pending: completing claims it)."`
	Text       string         `json:"text,omitempty" jsonschema:"The answer or a report of what you did."`
	Content    []any          `json:"content,omitempty" jsonschema:"More response entries: strings for text, or {\"image\": URL or data URI}, {\"file\": ...}, {\"url\": ...}, {\"location\": {\"lat\", \"lng\"}}, {\"confirmation\": true}."`
	Structured map[string]any `json:"structured,omitempty" jsonschema:"A structured answer, when the request asked for one."`
	Notes      string         `json:"notes,omitempty" jsonschema:"Anything else the requestor should know."`
}

type updateInput struct {
	Ref     string          `json:"ref" jsonschema:"The request's reference."`
	Status  mess.Status     `json:"status,omitempty" jsonschema:"The new status. Executors: claimed, in_progress, waiting, held, needs_input, needs_confirmation, partial, completed, failed, declined, delegated, or pending to release a claim. Requestors: cancelled, superseded, or in_progress to answer needs_input/needs_confirmation."`
	Message string          `json:"message,omitempty" jsonschema:"A note recorded with the status change (up to 4096 bytes)."`
	Mess    json.RawMessage `json:"mess,omitempty" jsonschema:"A MESS message (array of single-key blocks) to add, as in post_message."`
}

type updateOutput struct {
	Ref        string      `json:"ref"`
	Status     mess.Status `json:"status" jsonschema:"The request's status after the change."`
	ExecutorID *string     `json:"executor_id" jsonschema:"Who has claimed it, if anyone."`
	Seq        int64       `json:"seq" jsonschema:"Pass as after_seq to wait_for_change."`
}

// ThreadURI is the resource of a request: mess://{exchange}/requests/{ref}.
func ThreadURI(exchange, ref string) string { return "mess://" + exchange + "/requests/" + ref }

func (s *Server) addExchangeTools() {
	svc := s.cfg.Exchange
	update := func(ctx context.Context, c caller, ref string, u mess.Update) (updateOutput, error) {
		r, err := svc.Update(ctx, c.exchange, c.agent, ref, u)
		return updateOutput{Ref: r.Ref, Status: r.Status, ExecutorID: r.ExecutorID, Seq: r.Seq}, err
	}
	block := func(kind string, body map[string]any) json.RawMessage {
		b, _ := json.Marshal([]map[string]any{{kind: body}})
		return b
	}

	tool(s, &mcp.Tool{Name: "create_request", Annotations: annotations("Ask a person for help", false, false),
		Description: "Post a request for real-world help to your exchange, where people (and machine executors) can claim and do it. " +
			"Returns its ref. Then call wait_for_change with the ref to follow it: the executor may ask a question (needs_input), " +
			"ask for confirmation (needs_confirmation) and finally complete it with a response."},
		func(s *jsonschema.Schema) {
			prop(s, "precision").Enum = []any{"loose", "guided", "exact"}
			prop(s, "intent").MinLength = ptr(1)
			prop(s, "needed_by").Format = "date-time"
		},
		func(ctx context.Context, c caller, in createInput) (createOutput, error) {
			req, err := in.request()
			if err != nil {
				return createOutput{}, invalid(err.Error())
			}
			r, err := svc.CreateRequest(ctx, c.exchange, c.agent, req, in.IdempotencyKey)
			return createOutput{Ref: r.Ref, Status: r.Status, Replayed: r.Replayed, URI: ThreadURI(c.exchange, r.Ref)}, err
		})

	tool(s, &mcp.Tool{Name: "get_request", Annotations: annotations("Read a request", true, true),
		Description: "Read one request: its status, who claimed it, every MESS message (questions, responses) and the history of changes."},
		nil,
		func(ctx context.Context, c caller, in refInput) (threadOutput, error) {
			t, err := svc.Get(ctx, c.exchange, in.Ref)
			return threadOutput{Thread: t, URI: ThreadURI(c.exchange, in.Ref)}, err
		})

	tool(s, &mcp.Tool{Name: "list_requests", Annotations: annotations("List requests", true, true),
		Description: "List the exchange's requests, most recently updated first, with filters. " +
			"Executors find work with statuses [\"pending\"]; requestors find their own with requestor_id set to their id."},
		func(s *jsonschema.Schema) {
			l := prop(s, "limit")
			l.Minimum, l.Maximum = ptr(1.0), ptr(1000.0)
			prop(s, "since").Format = "date-time"
		},
		func(ctx context.Context, c caller, in listInput) (mess.ListResult, error) {
			if in.Limit < 0 || in.Limit > 1000 {
				return mess.ListResult{}, invalid("limit must be 1 to 1000")
			}
			opts := mess.ListOptions{Statuses: in.Statuses, ExecutorID: in.ExecutorID, RequestorID: in.RequestorID,
				Priority: in.Priority, Limit: in.Limit, Cursor: in.Cursor}
			if in.Since != nil {
				opts.Since = *in.Since
			}
			r, err := svc.List(ctx, c.exchange, opts)
			if r.Threads == nil {
				r.Threads = []mess.Summary{}
			}
			return r, err
		})

	tool(s, &mcp.Tool{Name: "wait_for_change", Annotations: annotations("Wait for a change", true, true),
		Description: "Block until a request changes (with ref) or anything in the exchange changes (without ref), or the timeout passes. " +
			"With ref it returns the new status and the messages and history entries added since after_seq; call it again with the returned seq " +
			"until the status is completed, failed, declined, cancelled or expired. Without ref it returns the exchange's version and its most recently updated requests."},
		func(sc *jsonschema.Schema) {
			t := prop(sc, "timeout_seconds")
			t.Minimum, t.Maximum, t.Default = ptr(0.0), ptr(s.cfg.MaxWait.Seconds()), json.RawMessage("30")
		},
		func(ctx context.Context, c caller, in waitInput) (waitOutput, error) {
			ctx, cancel := s.bound(ctx)
			defer cancel()
			wait := 30 * time.Second
			if in.TimeoutSeconds != nil {
				if *in.TimeoutSeconds < 0 {
					return waitOutput{}, invalid("timeout_seconds must not be negative")
				}
				wait = time.Duration(*in.TimeoutSeconds * float64(time.Second))
			}
			wait = min(wait, s.cfg.MaxWait)
			if in.Ref == "" {
				return s.waitExchange(ctx, c, in, wait)
			}
			return s.waitThread(ctx, c, in, wait)
		})

	tool(s, &mcp.Tool{Name: "answer_request", Annotations: annotations("Answer an executor's question", false, false),
		Description: "Answer the question of an executor working on your request (status needs_input). " +
			"Adds your answer as a MESS answer block and moves the request back to in_progress."},
		func(s *jsonschema.Schema) { prop(s, "answer").MinLength = ptr(1) },
		func(ctx context.Context, c caller, in answerInput) (updateOutput, error) {
			blocks := []map[string]any{{"answer": map[string]any{"re": in.Ref, "value": in.Answer}}}
			if len(in.Answers) > 0 {
				blocks = append(blocks, map[string]any{"reply": map[string]any{"re": in.Ref, "answers": in.Answers}})
			}
			m, err := json.Marshal(blocks)
			if err != nil {
				return updateOutput{}, invalid(err.Error())
			}
			return update(ctx, c, in.Ref, mess.Update{Status: string(mess.StatusInProgress), Mess: m})
		})

	tool(s, &mcp.Tool{Name: "confirm_request", Annotations: annotations("Confirm an executor's plan", false, false),
		Description: "Give the go-ahead an executor asked for (status needs_confirmation) on your request; it moves back to in_progress " +
			"and may then be completed. To refuse instead, use cancel_request."},
		nil,
		func(ctx context.Context, c caller, in confirmInput) (updateOutput, error) {
			reply := map[string]any{"re": in.Ref, "confirm": true}
			if in.Note != "" {
				reply["reason"] = in.Note
			}
			return update(ctx, c, in.Ref, mess.Update{Status: string(mess.StatusInProgress), Message: in.Note, Mess: block("reply", reply)})
		})

	cancelAnn := annotations("Cancel a request", false, true)
	cancelAnn.DestructiveHint = ptr(true)
	tool(s, &mcp.Tool{Name: "cancel_request", Annotations: cancelAnn,
		Description: "Cancel a request you made. Only its requestor may; a finished request cannot be cancelled."},
		nil,
		func(ctx context.Context, c caller, in noteInput) (updateOutput, error) {
			body := map[string]any{"re": in.Ref}
			if in.Reason != "" {
				body["reason"] = in.Reason
			}
			return update(ctx, c, in.Ref, mess.Update{Status: string(mess.StatusCancelled), Message: in.Reason, Mess: block("cancel", body)})
		})

	tool(s, &mcp.Tool{Name: "claim_request", Annotations: annotations("Claim a request", false, false),
		Description: "Take on a pending request as its executor, so nobody else does it. Of many concurrent claims exactly one wins; " +
			"the others get a conflict error naming the executor_id that holds it. Then complete_request, decline_request or fail_request."},
		nil,
		func(ctx context.Context, c caller, in claimInput) (updateOutput, error) {
			u := mess.Update{Status: string(mess.StatusClaimed), Message: in.Note}
			if in.Estimate != "" || in.Note != "" {
				body := map[string]any{"re": in.Ref, "code": "claimed"}
				if in.Estimate != "" {
					body["estimate"] = in.Estimate
				}
				if in.Note != "" {
					body["message"] = in.Note
				}
				u.Mess = block("status", body)
			}
			return update(ctx, c, in.Ref, u)
		})

	tool(s, &mcp.Tool{Name: "post_message", Annotations: annotations("Add a MESS message", false, false),
		Description: "Add a MESS message to a request without changing its status: a progress note, a question, a partial result. " +
			"Its requestor and executor may always post; others only while the request is open."},
		nil,
		func(ctx context.Context, c caller, in messageInput) (updateOutput, error) {
			if len(in.Mess) == 0 || string(in.Mess) == "null" {
				return updateOutput{}, invalid("mess is required: an array of MESS blocks")
			}
			return update(ctx, c, in.Ref, mess.Update{Mess: in.Mess})
		})

	tool(s, &mcp.Tool{Name: "complete_request", Annotations: annotations("Complete a request", false, false),
		Description: "Finish a request you claimed (or a pending one, which this claims) with your response: text, content entries and/or a structured answer. " +
			"A request made with confirm_before needs the requestor's confirmation first (set needs_confirmation with update_request and wait)."},
		nil,
		func(ctx context.Context, c caller, in completeInput) (updateOutput, error) {
			content := make([]any, 0, len(in.Content)+2)
			if in.Text != "" {
				content = append(content, in.Text)
			}
			content = append(content, in.Content...)
			if in.Structured != nil {
				content = append(content, map[string]any{"structured": in.Structured})
			}
			resp := map[string]any{"re": in.Ref, "content": content, "executor": c.agent}
			if in.Notes != "" {
				resp["notes"] = in.Notes
			}
			return update(ctx, c, in.Ref, mess.Update{Status: string(mess.StatusCompleted), Message: in.Notes, Mess: block("response", resp)})
		})

	tool(s, &mcp.Tool{Name: "decline_request", Annotations: annotations("Decline a request", false, false),
		Description: "Turn down a request you claimed, saying why. It ends the request for everyone; to let someone else take it instead, " +
			"release your claim with update_request status pending."},
		nil,
		func(ctx context.Context, c caller, in noteInput) (updateOutput, error) {
			body := map[string]any{"re": in.Ref, "code": "declined"}
			if in.Reason != "" {
				body["reason"] = in.Reason
			}
			return update(ctx, c, in.Ref, mess.Update{Status: string(mess.StatusDeclined), Message: in.Reason, Mess: block("status", body)})
		})

	tool(s, &mcp.Tool{Name: "fail_request", Annotations: annotations("Report a failed request", false, false),
		Description: "Report that you could not do a request you claimed, saying what went wrong."},
		func(s *jsonschema.Schema) { prop(s, "reason").MinLength = ptr(1) },
		func(ctx context.Context, c caller, in failInput) (updateOutput, error) {
			body := map[string]any{"re": in.Ref, "code": "failed", "reason": in.Reason, "recoverable": in.Recoverable}
			return update(ctx, c, in.Ref, mess.Update{Status: string(mess.StatusFailed), Message: in.Reason, Mess: block("status", body)})
		})

	tool(s, &mcp.Tool{Name: "update_request", Annotations: annotations("Change a request's status", false, false),
		Description: "Set any status of MESS protocol v1 and/or add a MESS message, for the steps the other tools do not cover: " +
			"in_progress, waiting, held, needs_input (ask the requestor a question), needs_confirmation, partial, delegated, superseded, " +
			"or pending to release your claim. The exchange enforces who may set what."},
		nil,
		func(ctx context.Context, c caller, in updateInput) (updateOutput, error) {
			if in.Status == "" && in.Message == "" && (len(in.Mess) == 0 || string(in.Mess) == "null") {
				return updateOutput{}, invalid("nothing to change: set status, message or mess")
			}
			return update(ctx, c, in.Ref, mess.Update{Status: string(in.Status), Message: in.Message, Mess: in.Mess})
		})

	s.mcp.AddPrompt(&mcp.Prompt{Name: "ask_a_person", Title: "Ask a person to do something",
		Description: "Have a person in the exchange do something in the real world for you, and follow it to the end.",
		Arguments: []*mcp.PromptArgument{
			{Name: "task", Description: "What the person should do, e.g. check whether the back door is locked", Required: true},
			{Name: "answer", Description: "What you want back, e.g. a photo, yes or no, a measurement"},
			{Name: "deadline", Description: "When it stops being useful, e.g. in 2 hours"},
		}}, askAPerson)
}

func askAPerson(_ context.Context, req *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
	a := req.Params.Arguments
	if a["task"] == "" {
		return nil, errors.New("the task argument is required")
	}
	text := fmt.Sprintf("Ask a person to do this for me: %s\n\n", a["task"]) +
		"1. Call create_request with a one-sentence intent a stranger can act on without asking back, the details they need in context"
	if a["answer"] != "" {
		text += fmt.Sprintf(", and a response_hint for what I want back (%s)", a["answer"])
	}
	if a["deadline"] != "" {
		text += fmt.Sprintf(". It stops being useful %s: set needed_by to that time (RFC 3339)", a["deadline"])
	}
	text += ".\n2. Call wait_for_change with the ref and the seq you last saw, again and again, until the status is final.\n" +
		"3. If the status is needs_input, read the question in new_messages and answer it with answer_request; " +
		"if needs_confirmation, confirm_request if the plan is right, otherwise cancel_request.\n" +
		"4. When it is completed, tell me the response in the last message; if it failed, was declined or expired, tell me why."
	return &mcp.GetPromptResult{Description: "Ask a person: " + a["task"],
		Messages: []*mcp.PromptMessage{{Role: "user", Content: &mcp.TextContent{Text: text}}}}, nil
}

// waitThread waits for the request to pass after_seq and reports what was
// added since.
func (s *Server) waitThread(ctx context.Context, c caller, in waitInput, wait time.Duration) (waitOutput, error) {
	svc := s.cfg.Exchange
	var after int64
	if in.AfterSeq != nil {
		after = *in.AfterSeq
	} else {
		t, err := svc.Get(ctx, c.exchange, in.Ref)
		if err != nil {
			return waitOutput{}, err
		}
		after = t.Seq
	}
	if wait > 0 {
		wctx, cancel := context.WithTimeout(ctx, wait)
		err := svc.WaitThread(wctx, c.exchange, in.Ref, after)
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return waitOutput{}, err
		}
	}
	t, err := svc.Get(ctx, c.exchange, in.Ref)
	if err != nil {
		return waitOutput{}, err
	}
	out := waitOutput{Changed: t.Seq > after, Ref: t.Ref, Status: t.Status, ExecutorID: t.ExecutorID, Seq: t.Seq,
		NewMessages: []seqMessage{}, NewHistory: []mess.HistoryEntry{}}
	// The i-th message is the one the i-th "message" history entry added.
	i := 0
	for _, h := range t.History {
		if h.Seq > after {
			out.NewHistory = append(out.NewHistory, h)
		}
		if h.Type != "message" {
			continue
		}
		if h.Seq > after && i < len(t.Messages) {
			m := t.Messages[i]
			out.NewMessages = append(out.NewMessages, seqMessage{Seq: h.Seq, From: m.From, TS: m.TS, Mess: m.Mess})
		}
		i++
	}
	return out, nil
}

// waitExchange waits for the exchange's version to pass after_version and
// lists the most recently updated requests.
func (s *Server) waitExchange(ctx context.Context, c caller, in waitInput, wait time.Duration) (waitOutput, error) {
	svc := s.cfg.Exchange
	after := svc.Version(c.exchange)
	if in.AfterVersion != nil {
		after = *in.AfterVersion
	}
	if wait > 0 {
		wctx, cancel := context.WithTimeout(ctx, wait)
		_, err := svc.WaitForChange(wctx, c.exchange, after)
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return waitOutput{}, err
		}
	}
	r, err := svc.List(ctx, c.exchange, mess.ListOptions{Statuses: in.Statuses, Limit: 50})
	if err != nil {
		return waitOutput{}, err
	}
	if r.Threads == nil {
		r.Threads = []mess.Summary{}
	}
	return waitOutput{Changed: r.Version > after, Version: r.Version, Threads: r.Threads}, nil
}
