package mess

import (
	"encoding/json"
	"net/url"
	"strconv"
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

// keepSecrets lets a client send back a profile it read: each value in
// next equal to Redacted, each redacted URL equal to the stored URL
// redacted, and each redacted header takes the stored value at the same
// place: the same key, or in a list the stored entry of the same "type"
// and rank among those of its type. A Redacted value with no stored one
// to keep is refused,
// so the placeholder is never stored as a secret.
func keepSecrets(field string, next, stored json.RawMessage) (json.RawMessage, error) {
	if len(next) == 0 || !strings.Contains(string(next), "redacted") {
		return next, nil
	}
	var n, o any
	if json.Unmarshal(next, &n) != nil {
		return next, nil // validation reports it
	}
	if len(stored) > 0 {
		json.Unmarshal(stored, &o)
	}
	out, err := restoreSecrets(field, n, o)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, errorf(ErrInvalid, "%s: %v", field, err)
	}
	return b, nil
}

func restoreSecrets(path string, next, stored any) (any, error) {
	switch x := next.(type) {
	case string:
		if x != Redacted {
			return x, nil
		}
		if stored == nil || stored == Redacted {
			return nil, errorf(ErrInvalid, "%s is %q but there is no stored secret to keep; send the secret itself", path, Redacted)
		}
		return stored, nil
	case map[string]any:
		old, _ := stored.(map[string]any)
		for k, v := range x {
			ov := old[k]
			if s, ok := v.(string); ok && urlFields[strings.ToLower(k)] {
				if was, ok := ov.(string); ok && s != was && s == redactURL(was) {
					x[k] = was
				}
				continue
			}
			r, err := restoreSecrets(path+"."+k, v, ov)
			if err != nil {
				return nil, err
			}
			x[k] = r
		}
		return x, nil
	case []any:
		// The k-th entry of a type (a channel or hook "type") takes the
		// k-th stored entry of that type, so channels may be reordered or
		// removed; entries that are not objects match by position.
		old, _ := stored.([]any)
		seen := map[string]int{}
		for i, v := range x {
			var ov any
			if t, ok := typeOf(v); ok {
				ov = nthOfType(old, t, seen[t])
				seen[t]++
			} else if i < len(old) {
				if _, isObj := typeOf(old[i]); !isObj {
					ov = old[i]
				}
			}
			r, err := restoreSecrets(path+"["+strconv.Itoa(i)+"]", v, ov)
			if err != nil {
				return nil, err
			}
			x[i] = r
		}
		return x, nil
	}
	return next, nil
}

// typeOf returns the "type" of a list entry that is an object.
func typeOf(v any) (string, bool) {
	m, ok := v.(map[string]any)
	if !ok {
		return "", false
	}
	t, _ := m["type"].(string)
	return t, true
}

// nthOfType returns the n-th (from 0) object of list whose type is t.
func nthOfType(list []any, t string, n int) any {
	for _, v := range list {
		if vt, ok := typeOf(v); ok && vt == t {
			if n == 0 {
				return v
			}
			n--
		}
	}
	return nil
}
