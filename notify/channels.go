package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/meatspace-exchange/mess/mess"
)

// Channel types on an executor's profile.
const (
	ChannelNtfy       = "ntfy"
	ChannelSlack      = "slack"
	ChannelGoogleChat = "google_chat"
	ChannelWebhook    = "webhook"
)

// Hook types.
const (
	HookWebhook       = "webhook"
	HookIFTTT         = "ifttt"
	HookZapier        = "zapier"
	HookHomeAssistant = "home_assistant"
	HookTodoist       = "todoist"
	HookLinear        = "linear"
	HookGoogleTasks   = "google_tasks"
)

// Endpoints are the third-party APIs hooks call. Zero fields mean the
// public services; tests point them at local receivers.
type Endpoints struct {
	IFTTT       string // https://maker.ifttt.com
	Todoist     string // https://api.todoist.com
	Linear      string // https://api.linear.app/graphql
	GoogleTasks string // https://tasks.googleapis.com
	GoogleOAuth string // https://oauth2.googleapis.com/token
}

func (e *Endpoints) defaults() {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
		*p = strings.TrimRight(*p, "/")
	}
	def(&e.IFTTT, "https://maker.ifttt.com")
	def(&e.Todoist, "https://api.todoist.com")
	def(&e.Linear, "https://api.linear.app/graphql")
	def(&e.GoogleTasks, "https://tasks.googleapis.com")
	def(&e.GoogleOAuth, "https://oauth2.googleapis.com/token")
}

// outReq is one HTTP request a delivery makes.
type outReq struct {
	Method string
	URL    string
	Header http.Header
	Body   []byte
	// Sign adds the HMAC signature headers (webhooks).
	Sign   bool
	Secret string
}

// doFunc sends one request and returns the response body of a 2xx answer.
type doFunc func(ctx context.Context, r *outReq) ([]byte, error)

// action performs a delivery and returns the external id it produced, if any.
type action func(ctx context.Context, do doFunc) (string, error)

func jsonReq(method, u string, v any) *outReq {
	b, _ := json.Marshal(v)
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	return &outReq{Method: method, URL: u, Header: h, Body: b}
}

func single(r *outReq, extract bool) action {
	return func(ctx context.Context, do doFunc) (string, error) {
		body, err := do(ctx, r)
		if err != nil || !extract {
			return "", err
		}
		return extractID(body), nil
	}
}

// extractID finds the id an external system gave the created object:
// id, task_id or item_id at the top level, or Linear's issueCreate.issue.id.
func extractID(body []byte) string {
	var m map[string]any
	if json.Unmarshal(body, &m) != nil {
		return ""
	}
	for _, k := range []string{"id", "task_id", "item_id"} {
		switch v := m[k].(type) {
		case string:
			return v
		case float64:
			return fmt.Sprint(int64(v))
		}
	}
	if d, ok := m["data"].(map[string]any); ok {
		if ic, ok := d["issueCreate"].(map[string]any); ok {
			if is, ok := ic["issue"].(map[string]any); ok {
				if id, ok := is["id"].(string); ok {
					return id
				}
			}
		}
	}
	return ""
}

// content is the human text of a notification.
type content struct {
	Title, Body string
}

func notificationContent(vars map[string]any) content {
	var c content
	switch vars["event_type"] {
	case EventTest:
		return content{Title: "MESS test notification", Body: fmt.Sprint(vars["intent"])}
	case mess.EventThreadCreated:
		c.Title = "New MESS request"
	default:
		c.Title = "MESS update: " + fmt.Sprint(vars["status"])
	}
	c.Body = fmt.Sprintf("%s\n\nRef: %s\nPriority: %s", vars["intent"], vars["ref"], vars["priority"])
	if vars["event_type"] == mess.EventStatusChanged {
		c.Body += fmt.Sprintf("\nStatus: %s -> %s", vars["old_status"], vars["status"])
		if m, _ := vars["message"].(string); m != "" {
			c.Body += "\n" + m
		}
	}
	return c
}

// ntfyPriority maps a request priority to ntfy's 1-5 scale.
func ntfyPriority(p string) string {
	switch mess.Priority(p) {
	case mess.PriorityUrgent:
		return "5"
	case mess.PriorityElevated:
		return "4"
	case mess.PriorityBackground:
		return "2"
	}
	return "3"
}

var ntfyTopic = regexp.MustCompile(`^[-_A-Za-z0-9]{1,64}$`)

// headerText makes s safe for a header: ASCII stays as is (ntfy shows it
// directly); anything else is RFC 2047 encoded, which ntfy decodes. A raw
// emoji title, as the MESS exchange server 1.0 sent, is refused by HTTP
// clients.
func headerText(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf || s[i] < 0x20 {
			return mime.BEncoding.Encode("UTF-8", s)
		}
	}
	return s
}

type channelConfig struct {
	Type       string   `json:"type"`
	Topic      string   `json:"topic"`
	Server     string   `json:"server"`
	Token      string   `json:"token"`
	Tags       []string `json:"tags"`
	WebhookURL string   `json:"webhook_url"`
	URL        string   `json:"url"`
	Secret     string   `json:"secret"`
	Headers    map[string]string
}

// destination is the rate-limit and coalescing key of a channel: deliveries
// to one Slack or Google Chat webhook share it.
func destination(typ string, cfg json.RawMessage) string {
	var c channelConfig
	json.Unmarshal(cfg, &c)
	switch typ {
	case ChannelSlack, ChannelGoogleChat:
		return typ + " " + c.WebhookURL
	}
	return ""
}

func (s *Service) renderChannel(typ string, raw json.RawMessage, vars map[string]any, texts []content) (action, error) {
	var c channelConfig
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	main := texts[0]
	switch typ {
	case ChannelNtfy:
		if !ntfyTopic.MatchString(c.Topic) {
			return nil, fmt.Errorf("%w: ntfy needs a topic of letters, digits, - and _", ErrInvalidConfig)
		}
		server := c.Server
		if server == "" {
			server = s.cfg.NtfyServer
		}
		h := http.Header{}
		h.Set("Title", headerText(main.Title))
		h.Set("Priority", ntfyPriority(fmt.Sprint(vars["priority"])))
		tags := c.Tags
		if len(tags) == 0 {
			tags = []string{"mess"}
			if vars["event_type"] == mess.EventThreadCreated {
				tags = append(tags, "new")
			} else {
				tags = append(tags, fmt.Sprint(vars["status"]))
			}
		}
		h.Set("Tags", headerText(strings.Join(tags, ",")))
		if u, _ := vars["url"].(string); u != "" {
			h.Set("Click", u)
		}
		if c.Token != "" {
			h.Set("Authorization", "Bearer "+c.Token)
		}
		h.Set("Content-Type", "text/plain; charset=utf-8")
		return single(&outReq{Method: http.MethodPost, URL: strings.TrimRight(server, "/") + "/" + c.Topic, Header: h, Body: []byte(main.Body)}, false), nil
	case ChannelSlack, ChannelGoogleChat:
		if c.WebhookURL == "" {
			return nil, fmt.Errorf("%w: %s needs webhook_url", ErrInvalidConfig, typ)
		}
		parts := make([]string, len(texts))
		for i, t := range texts {
			parts[i] = "*" + t.Title + "*\n" + t.Body
		}
		return single(jsonReq(http.MethodPost, c.WebhookURL, map[string]string{"text": strings.Join(parts, "\n\n")}), false), nil
	case ChannelWebhook:
		if c.URL == "" {
			return nil, fmt.Errorf("%w: webhook needs url", ErrInvalidConfig)
		}
		body := map[string]any{
			"title": main.Title, "body": main.Body,
			"event_type": vars["event_type"], "event_id": vars["event_id"], "event": vars["event"],
			"exchange_id": vars["exchange_id"], "ref": vars["ref"], "intent": vars["intent"],
			"status": vars["status"], "old_status": vars["old_status"], "priority": vars["priority"],
			"requestor_id": vars["requestor_id"], "executor_id": vars["executor_id"], "actor_id": vars["actor_id"],
			"url": vars["url"], "ts": vars["ts"],
		}
		r := jsonReq(http.MethodPost, c.URL, body)
		for k, v := range c.Headers {
			r.Header.Set(k, v)
		}
		r.Sign, r.Secret = true, c.Secret
		return single(r, false), nil
	}
	return nil, fmt.Errorf("%w: unknown channel type %q", ErrInvalidConfig, typ)
}

type hookConfig struct {
	Type         string            `json:"type"`
	URL          string            `json:"url"`
	Method       string            `json:"method"`
	Headers      map[string]string `json:"headers"`
	Body         any               `json:"body"`
	Secret       string            `json:"secret"`
	Key          string            `json:"key"`
	Event        string            `json:"event"`
	Value1       string            `json:"value1"`
	Value2       string            `json:"value2"`
	Value3       string            `json:"value3"`
	WebhookURL   string            `json:"webhook_url"`
	BaseURL      string            `json:"base_url"`
	WebhookID    string            `json:"webhook_id"`
	Token        string            `json:"token"`
	Content      string            `json:"content"`
	Description  string            `json:"description"`
	Labels       []string          `json:"labels"`
	ProjectID    string            `json:"project_id"`
	DueString    string            `json:"due_string"`
	PriorityMap  map[string]int    `json:"priority_map"`
	Action       string            `json:"action"`
	TaskID       string            `json:"task_id"`
	Title        string            `json:"title"`
	TeamID       string            `json:"team_id"`
	ClientID     string            `json:"client_id"`
	ClientSecret string            `json:"client_secret"`
	RefreshToken string            `json:"refresh_token"`
	Tasklist     string            `json:"tasklist"`
	Notes        string            `json:"notes"`
	Due          string            `json:"due"`
}

func orT(v, def string, vars map[string]any) string {
	if v == "" {
		v = def
	}
	return Expand(v, vars)
}

func (s *Service) renderHook(raw json.RawMessage, vars map[string]any) (action, error) {
	var c hookConfig
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	body := func(def map[string]any) any {
		if c.Body != nil {
			return expandValue(c.Body, vars)
		}
		return expandValue(def, vars)
	}
	ep := s.cfg.Endpoints
	switch c.Type {
	case HookWebhook:
		if c.URL == "" {
			return nil, fmt.Errorf("%w: webhook hook needs url", ErrInvalidConfig)
		}
		method := strings.ToUpper(c.Method)
		if method == "" {
			method = http.MethodPost
		}
		def := map[string]any{"event": "{{event}}", "ref": "{{ref}}", "intent": "{{intent}}", "status": "{{status}}",
			"priority": "{{priority}}", "exchange_id": "{{exchange_id}}", "executor_id": "{{executor_id}}", "external_id": "{{external_id}}"}
		r := jsonReq(method, Expand(c.URL, vars), body(def))
		if method == http.MethodGet || method == http.MethodHead {
			r.Body = nil
			r.Header.Del("Content-Type")
		}
		for k, v := range c.Headers {
			r.Header.Set(k, Expand(v, vars))
		}
		r.Sign, r.Secret = true, c.Secret
		return single(r, true), nil
	case HookIFTTT:
		if c.Key == "" {
			return nil, fmt.Errorf(`%w: IFTTT hook requires "key"`, ErrInvalidConfig)
		}
		ev := orT(c.Event, "mess_request", vars)
		u := ep.IFTTT + "/trigger/" + url.PathEscape(ev) + "/with/key/" + url.PathEscape(c.Key)
		return single(jsonReq(http.MethodPost, u, map[string]string{
			"value1": orT(c.Value1, "{{intent}}", vars), "value2": orT(c.Value2, "{{ref}}", vars), "value3": orT(c.Value3, "{{priority}}", vars),
		}), false), nil
	case HookZapier:
		if c.WebhookURL == "" {
			return nil, fmt.Errorf(`%w: Zapier hook requires "webhook_url"`, ErrInvalidConfig)
		}
		return single(jsonReq(http.MethodPost, c.WebhookURL, body(map[string]any{
			"intent": "{{intent}}", "ref": "{{ref}}", "priority": "{{priority}}", "status": "{{status}}", "event": "{{event}}",
		})), true), nil
	case HookHomeAssistant:
		u := c.URL
		if u == "" {
			if c.BaseURL == "" || c.WebhookID == "" {
				return nil, fmt.Errorf(`%w: Home Assistant hook requires "url" or "base_url" and "webhook_id"`, ErrInvalidConfig)
			}
			u = strings.TrimRight(c.BaseURL, "/") + "/api/webhook/" + url.PathEscape(c.WebhookID)
		}
		r := jsonReq(http.MethodPost, u, body(map[string]any{
			"action": "mess_{{event}}", "intent": "{{intent}}", "ref": "{{ref}}", "priority": "{{priority}}",
		}))
		if c.Token != "" {
			r.Header.Set("Authorization", "Bearer "+c.Token)
		}
		return single(r, false), nil
	case HookTodoist:
		if c.Token == "" {
			return nil, fmt.Errorf(`%w: Todoist hook requires "token"`, ErrInvalidConfig)
		}
		if c.Action == "complete" || c.Action == "close" {
			id := orT(c.TaskID, "{{external_id}}", vars)
			if id == "" {
				return nil, fmt.Errorf("%w: task_id required for complete action", errNotYet)
			}
			r := &outReq{Method: http.MethodPost, URL: ep.Todoist + "/rest/v2/tasks/" + url.PathEscape(id) + "/close", Header: http.Header{}}
			r.Header.Set("Authorization", "Bearer "+c.Token)
			return single(r, false), nil
		}
		pm := map[string]int{"background": 1, "normal": 2, "elevated": 3, "urgent": 4}
		for k, v := range c.PriorityMap {
			pm[k] = v
		}
		p := pm[fmt.Sprint(vars["priority"])]
		if p == 0 {
			p = 1
		}
		task := map[string]any{
			"content": orT(c.Content, "MESS: {{intent}}", vars), "description": orT(c.Description, "Ref: {{ref}}", vars),
			"priority": p, "labels": append([]string{}, c.Labels...),
		}
		if c.ProjectID != "" {
			task["project_id"] = c.ProjectID
		}
		if c.DueString != "" {
			task["due_string"] = Expand(c.DueString, vars)
		}
		r := jsonReq(http.MethodPost, ep.Todoist+"/rest/v2/tasks", task)
		r.Header.Set("Authorization", "Bearer "+c.Token)
		return single(r, true), nil
	case HookLinear:
		if c.Token == "" || c.TeamID == "" {
			return nil, fmt.Errorf(`%w: Linear hook requires "token" and "team_id"`, ErrInvalidConfig)
		}
		q := map[string]any{
			"query": `mutation IssueCreate($input: IssueCreateInput!) { issueCreate(input: $input) { success issue { id identifier url } } }`,
			"variables": map[string]any{"input": map[string]any{
				"title":       orT(c.Title, "MESS: {{intent}}", vars),
				"description": orT(c.Description, "Ref: {{ref}}\nPriority: {{priority}}", vars),
				"teamId":      c.TeamID,
			}},
		}
		r := jsonReq(http.MethodPost, ep.Linear, q)
		r.Header.Set("Authorization", c.Token)
		return single(r, true), nil
	case HookGoogleTasks:
		if c.ClientID == "" || c.ClientSecret == "" || c.RefreshToken == "" {
			return nil, fmt.Errorf(`%w: Google Tasks hook requires "client_id", "client_secret" and "refresh_token"`, ErrInvalidConfig)
		}
		list := c.Tasklist
		if list == "" {
			list = "@default"
		}
		base := ep.GoogleTasks + "/tasks/v1/lists/" + url.PathEscape(list) + "/tasks"
		var final *outReq
		extract := false
		switch c.Action {
		case "", "create":
			t := map[string]any{"title": orT(c.Title, "MESS: {{intent}}", vars), "notes": orT(c.Notes, "Ref: {{ref}}\nPriority: {{priority}}", vars)}
			if c.Due != "" {
				t["due"] = Expand(c.Due, vars)
			}
			final, extract = jsonReq(http.MethodPost, base, t), true
		case "complete":
			id := orT(c.TaskID, "{{external_id}}", vars)
			if id == "" {
				return nil, fmt.Errorf("%w: task_id required for complete action", errNotYet)
			}
			final = jsonReq(http.MethodPatch, base+"/"+url.PathEscape(id), map[string]string{"status": "completed"})
		default:
			return nil, fmt.Errorf("%w: Google Tasks action %q (create or complete)", ErrInvalidConfig, c.Action)
		}
		form := url.Values{"client_id": {c.ClientID}, "client_secret": {c.ClientSecret}, "refresh_token": {c.RefreshToken}, "grant_type": {"refresh_token"}}
		return func(ctx context.Context, do doFunc) (string, error) {
			h := http.Header{}
			h.Set("Content-Type", "application/x-www-form-urlencoded")
			tb, err := do(ctx, &outReq{Method: http.MethodPost, URL: ep.GoogleOAuth, Header: h, Body: []byte(form.Encode())})
			if err != nil {
				return "", fmt.Errorf("token refresh: %w", err)
			}
			var tok struct {
				AccessToken string `json:"access_token"`
			}
			if json.Unmarshal(tb, &tok) != nil || tok.AccessToken == "" {
				return "", fmt.Errorf("token refresh: no access_token in answer")
			}
			r := *final
			r.Header = final.Header.Clone()
			r.Header.Set("Authorization", "Bearer "+tok.AccessToken)
			b, err := do(ctx, &r)
			if err != nil || !extract {
				return "", err
			}
			return extractID(b), nil
		}, nil
	}
	return nil, fmt.Errorf("%w: unknown hook type %q", ErrInvalidConfig, c.Type)
}

var _ = bytes.NewReader
