package mcpserver

import (
	"context"
	"encoding/json"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/meatspace-exchange/mess/mailbus"
)

// mailInput is the part of a mail message its sender chooses.
type mailInput struct {
	Type          string         `json:"type" jsonschema:"Dotted message type, e.g. task.created, coordination.request or file.lock; receivers subscribe by type."`
	Payload       map[string]any `json:"payload,omitempty" jsonschema:"The message body, a JSON object (default {})."`
	CorrelationID string         `json:"correlation_id,omitempty" jsonschema:"Ties a reply to the message it answers: reuse the id of that message."`
	AckRequired   bool           `json:"ack_required,omitempty" jsonschema:"If true the message is delivered again until its recipient acknowledges it with ack_mail."`
	ID            string         `json:"id,omitempty" jsonschema:"Your own message id; the server assigns one when omitted."`
}

func (in mailInput) message() (mailbus.Message, error) {
	m := mailbus.Message{ID: in.ID, Type: in.Type, CorrelationID: in.CorrelationID, AckRequired: in.AckRequired}
	if in.Payload != nil {
		b, err := json.Marshal(in.Payload)
		if err != nil {
			return m, invalid("payload: " + err.Error())
		}
		m.Payload = b
	}
	return m, nil
}

type sendInput struct {
	To string `json:"to" jsonschema:"The agent (executor id) to send to."`
	mailInput
}

type inboxInput struct {
	Since *int64 `json:"since,omitempty" jsonschema:"Return messages with seq above this: pass the next of your previous read_inbox. Passing it also confirms everything up to it as read. Omit to continue after the last position you confirmed."`
	Limit int    `json:"limit,omitempty" jsonschema:"At most this many messages, 1 to 1000 (default 100)."`
}

type inboxOutput struct {
	Messages []mailbus.Message `json:"messages" jsonschema:"Your messages in inbox order; seq is each one's position."`
	Next     uint64            `json:"next" jsonschema:"Pass as since on your next read_inbox."`
	URI      string            `json:"uri" jsonschema:"Your inbox resource; subscribe to it to be notified of new mail."`
}

type ackInput struct {
	MessageID string `json:"message_id" jsonschema:"The id of a message in your inbox that asked for acknowledgement (ackRequired)."`
}

type ackOutput struct {
	Acknowledged bool   `json:"acknowledged"`
	MessageID    string `json:"message_id"`
}

type presenceOutput struct {
	Agents []mailbus.Presence `json:"agents" jsonschema:"Every agent the mail bus knows in your exchange, with whether it is online and how much mail it has not fetched."`
}

type subscriptionsInput struct {
	Types []string `json:"types" jsonschema:"The message types you want broadcasts of, replacing your current list: exact types (task.created), prefixes (task.*) or * for all. Direct mail always reaches you."`
}

type subscriptionsOutput struct {
	Types []string `json:"types" jsonschema:"Your subscriptions now."`
}

type okOutput struct {
	OK bool `json:"ok"`
}

// InboxURI is the resource of an agent's inbox: mess://{exchange}/inbox/{agent}.
func InboxURI(exchange, agent string) string { return "mess://" + exchange + "/inbox/" + agent }

func (s *Server) addMailTools() {
	bus := s.cfg.Bus
	typeTweak := func(sc *jsonschema.Schema) { prop(sc, "type").MinLength = ptr(1) }

	tool(s, &mcp.Tool{Name: "send_mail", Annotations: annotations("Mail one agent", false, false),
		Description: "Send a message to one agent of your exchange. It is stored in their inbox (durable before this returns) " +
			"and delivered whether or not they are online."},
		func(sc *jsonschema.Schema) { typeTweak(sc); prop(sc, "to").MinLength = ptr(1) },
		func(ctx context.Context, c caller, in sendInput) (mailbus.Message, error) {
			m, err := in.message()
			if err != nil {
				return m, err
			}
			out, err := bus.SendTo(ctx, c.exchange, c.agent, in.To, m)
			if err == nil {
				s.watch.mailSent(c.exchange, c.agent, in.To)
			}
			return out, err
		})

	tool(s, &mcp.Tool{Name: "publish_mail", Annotations: annotations("Broadcast mail", false, false),
		Description: "Broadcast a message to every agent of your exchange subscribed to its type (never to yourself). " +
			"Agents that are offline find it in their inbox later."},
		typeTweak,
		func(ctx context.Context, c caller, in mailInput) (mailbus.Message, error) {
			m, err := in.message()
			if err != nil {
				return m, err
			}
			out, err := bus.Publish(ctx, c.exchange, c.agent, m)
			if err == nil {
				s.watch.mailSent(c.exchange, c.agent, "")
			}
			return out, err
		})

	tool(s, &mcp.Tool{Name: "read_inbox", Annotations: annotations("Read your mail", false, true),
		Description: "Read your inbox: direct mail and the broadcasts you are subscribed to, in order. " +
			"Pass the returned next as since on the following call to get only newer mail."},
		func(sc *jsonschema.Schema) {
			l := prop(sc, "limit")
			l.Minimum, l.Maximum = ptr(1.0), ptr(1000.0)
			prop(sc, "since").Minimum = ptr(0.0)
		},
		func(ctx context.Context, c caller, in inboxInput) (inboxOutput, error) {
			since, limit := int64(-1), 100
			if in.Since != nil {
				if *in.Since < 0 {
					return inboxOutput{}, invalid("since must be a non-negative integer")
				}
				since = *in.Since
			}
			if in.Limit != 0 {
				limit = in.Limit
			}
			if limit < 1 || limit > 1000 {
				return inboxOutput{}, invalid("limit must be 1 to 1000")
			}
			msgs, next, err := bus.Inbox(ctx, c.exchange, c.agent, since, limit)
			if msgs == nil {
				msgs = []mailbus.Message{}
			}
			return inboxOutput{Messages: msgs, Next: next, URI: InboxURI(c.exchange, c.agent)}, err
		})

	tool(s, &mcp.Tool{Name: "ack_mail", Annotations: annotations("Acknowledge mail", false, true),
		Description: "Acknowledge a message that asked for it (ackRequired), so it is not delivered to you again."},
		func(sc *jsonschema.Schema) { prop(sc, "message_id").MinLength = ptr(1) },
		func(ctx context.Context, c caller, in ackInput) (ackOutput, error) {
			err := bus.Acknowledge(ctx, c.exchange, c.agent, in.MessageID)
			return ackOutput{Acknowledged: err == nil, MessageID: in.MessageID}, err
		})

	tool(s, &mcp.Tool{Name: "list_presence", Annotations: annotations("Who is online", true, true),
		Description: "List the agents of your exchange the mail bus knows, whether each is online and how much mail it has not fetched yet."},
		nil,
		func(ctx context.Context, c caller, _ struct{}) (presenceOutput, error) {
			ps, err := bus.Presence(ctx, c.exchange)
			if ps == nil {
				ps = []mailbus.Presence{}
			}
			return presenceOutput{Agents: ps}, err
		})

	tool(s, &mcp.Tool{Name: "heartbeat", Annotations: annotations("Report yourself online", false, true),
		Description: "Tell the other agents you are alive: list_presence shows you online for the bus's presence timeout (90 s by default)."},
		nil,
		func(ctx context.Context, c caller, _ struct{}) (okOutput, error) {
			err := bus.Heartbeat(ctx, c.exchange, c.agent)
			return okOutput{OK: err == nil}, err
		})

	tool(s, &mcp.Tool{Name: "set_subscriptions", Annotations: annotations("Choose broadcasts", false, true),
		Description: "Replace the list of message types whose broadcasts reach your inbox. The list is durable: broadcasts sent while you are away wait in your inbox."},
		nil,
		func(ctx context.Context, c caller, in subscriptionsInput) (subscriptionsOutput, error) {
			if err := bus.SetSubscriptions(ctx, c.exchange, c.agent, in.Types); err != nil {
				return subscriptionsOutput{}, err
			}
			subs, err := bus.Subscriptions(ctx, c.exchange, c.agent)
			if subs == nil {
				subs = []string{}
			}
			return subscriptionsOutput{Types: subs}, err
		})
}
