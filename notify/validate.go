package notify

import (
	"encoding/json"
	"fmt"
)

// ValidateProfile checks an executor's notifications, hooks and
// preferences as a profile update would store them: known types, required
// fields, URLs c.Policy allows, hook keys it knows, and no more than
// c.MaxChannels channels and c.MaxHooks hooks. Empty values pass. Only the
// policy and the caps of c are used, so an exchange can check profiles
// before its Service exists; errors wrap ErrInvalidConfig or
// ErrBlockedAddress.
func (c Config) ValidateProfile(notifications, hooks, preferences json.RawMessage) error {
	c, err := c.withDefaults()
	if err != nil {
		return err
	}
	policy := c.Policy
	if _, err := ParsePreferences(preferences); err != nil {
		return err
	}
	if len(notifications) > 0 && string(notifications) != "null" {
		var chans []channelConfig
		if err := json.Unmarshal(notifications, &chans); err != nil {
			return fmt.Errorf("%w: notifications must be an array of channel objects", ErrInvalidConfig)
		}
		if len(chans) > c.MaxChannels {
			return fmt.Errorf("%w: %d notification channels; a profile may have at most %d", ErrInvalidConfig, len(chans), c.MaxChannels)
		}
		for i, c := range chans {
			var u string
			switch c.Type {
			case ChannelNtfy:
				if !ntfyTopic.MatchString(c.Topic) {
					return fmt.Errorf("%w: notifications[%d]: ntfy needs a topic of letters, digits, - and _", ErrInvalidConfig, i)
				}
				u = c.Server
			case ChannelSlack, ChannelGoogleChat:
				if u = c.WebhookURL; u == "" {
					return fmt.Errorf("%w: notifications[%d]: %s needs webhook_url", ErrInvalidConfig, i, c.Type)
				}
			case ChannelWebhook:
				if u = c.URL; u == "" {
					return fmt.Errorf("%w: notifications[%d]: webhook needs url", ErrInvalidConfig, i)
				}
			default:
				return fmt.Errorf("%w: notifications[%d]: unknown type %q", ErrInvalidConfig, i, c.Type)
			}
			if u != "" {
				if _, err := policy.CheckURL(u); err != nil {
					return fmt.Errorf("notifications[%d]: %w", i, err)
				}
			}
		}
	}
	if len(hooks) > 0 && string(hooks) != "null" {
		var hs map[string][]hookConfig
		if err := json.Unmarshal(hooks, &hs); err != nil {
			return fmt.Errorf("%w: hooks must map on_request_* events to arrays of hooks", ErrInvalidConfig)
		}
		n := 0
		for _, list := range hs {
			n += len(list)
		}
		if n > c.MaxHooks {
			return fmt.Errorf("%w: %d hooks; a profile may have at most %d", ErrInvalidConfig, n, c.MaxHooks)
		}
		for k, list := range hs {
			if _, ok := HookName(k); !ok {
				return fmt.Errorf("%w: unknown hook event %q", ErrInvalidConfig, k)
			}
			for i, h := range list {
				var u string
				switch h.Type {
				case HookWebhook:
					if u = h.URL; u == "" {
						return fmt.Errorf("%w: hooks.%s[%d]: webhook needs url", ErrInvalidConfig, k, i)
					}
				case HookZapier:
					if u = h.WebhookURL; u == "" {
						return fmt.Errorf("%w: hooks.%s[%d]: zapier needs webhook_url", ErrInvalidConfig, k, i)
					}
				case HookHomeAssistant:
					if u = h.URL; u == "" {
						u = h.BaseURL
					}
					if u == "" {
						return fmt.Errorf("%w: hooks.%s[%d]: home_assistant needs url or base_url", ErrInvalidConfig, k, i)
					}
				case HookIFTTT, HookTodoist, HookLinear, HookGoogleTasks:
				default:
					return fmt.Errorf("%w: hooks.%s[%d]: unknown type %q", ErrInvalidConfig, k, i, h.Type)
				}
				// Templated URLs are checked when sent.
				if u != "" && !containsTemplate(u) {
					if _, err := policy.CheckURL(u); err != nil {
						return fmt.Errorf("hooks.%s[%d]: %w", k, i, err)
					}
				}
			}
		}
	}
	return nil
}

func containsTemplate(s string) bool { return tmplVar.MatchString(s) }
