package mess

import (
	"encoding/json"
	"net/url"
	"strings"
)

// secretFields are keys whose values in notification and hook configs are
// credentials. They are stored, used for delivery, and never returned.
var secretFields = map[string]bool{
	"token": true, "key": true, "secret": true, "password": true, "client_secret": true,
	"refresh_token": true, "access_token": true, "api_key": true, "webhook_url": true,
	"authorization": true, "signing_secret": true, "webhook_id": true,
}

// urlFields hold URLs that may carry a credential in their user info or
// query string; those parts are redacted, the rest stays readable.
var urlFields = map[string]bool{"url": true, "base_url": true, "server": true}

// Redacted replaces secret values in API output.
const Redacted = "[redacted]"

// redactJSON returns raw with every secret field's value replaced. Webhook
// URLs embed their credential in the path, so they count as secrets too;
// header maps are redacted whole.
func redactJSON(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 {
		return raw
	}
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return raw
	}
	out, err := json.Marshal(redactValue(v))
	if err != nil {
		return raw
	}
	return out
}

func redactValue(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			lk := strings.ToLower(k)
			switch {
			case secretFields[lk] || strings.HasSuffix(lk, "_token") || strings.HasSuffix(lk, "_secret") || strings.HasSuffix(lk, "_key"):
				if s, ok := val.(string); ok && s != "" {
					x[k] = Redacted
				} else if val != nil {
					x[k] = Redacted
				}
			case urlFields[lk]:
				if s, ok := val.(string); ok {
					x[k] = redactURL(s)
				}
			case lk == "headers":
				if m, ok := val.(map[string]any); ok {
					for hk := range m {
						m[hk] = Redacted
					}
				}
			default:
				x[k] = redactValue(val)
			}
		}
		return x
	case []any:
		for i := range x {
			x[i] = redactValue(x[i])
		}
		return x
	}
	return v
}

// redactURL hides a URL's password and query values. Unparseable URLs are
// hidden whole.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return Redacted
	}
	if u.User != nil {
		u.User = url.User(Redacted)
	}
	if u.RawQuery != "" {
		q := u.Query()
		for k := range q {
			q[k] = []string{Redacted}
		}
		u.RawQuery = q.Encode()
	}
	return u.String()
}
