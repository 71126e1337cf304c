package lease

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// The answers to lease frames, encoded by hand: they are the hot path of
// the lease WebSocket, and each is a few fixed members. They match what
// encoding the HTTP API's answer structs gives, omitted members included
// (TestWS_sameAnswersAsHTTP).

// appendHead opens an answer: {"action":...,"ref":...
func appendHead(b []byte, action, ref string) []byte {
	b = append(b, `{"action":`...)
	b = appendString(b, action)
	if ref != "" {
		b = append(b, `,"ref":`...)
		b = appendString(b, ref)
	}
	return b
}

// appendGrant is a lease.acquired or lease.renewed answer for g, with
// flag ("acquired":true or "renewed":true) first.
func appendGrant(b []byte, action, ref, flag string, g Grant, now time.Time) []byte {
	b = appendHead(b, action, ref)
	b = append(b, ',')
	b = append(b, flag...)
	b = append(b, `,"file":`...)
	b = appendString(b, g.Name)
	b = append(b, `,"agentId":`...)
	b = appendString(b, g.Holder)
	b = append(b, `,"token":`...)
	b = strconv.AppendUint(b, g.Token, 10)
	b = append(b, `,"expiresAt":`...)
	b = strconv.AppendInt(b, g.ExpiresAt.UnixMilli(), 10)
	b = append(b, `,"remainingMs":`...)
	b = strconv.AppendInt(b, max(remainingMs(g.ExpiresAt.Sub(now)), 0), 10)
	return append(b, '}')
}

// appendHeld is the lease.acquired answer refusing a held lease, which
// leaves out the zero members as the HTTP answer does.
func appendHeld(b []byte, ref string, he *HeldError, now time.Time) []byte {
	b = appendHead(b, "lease.acquired", ref)
	b = append(b, `,"acquired":false,"file":`...)
	b = appendString(b, he.Name)
	if he.Holder != "" {
		b = append(b, `,"agentId":`...)
		b = appendString(b, he.Holder)
	}
	if ms := he.ExpiresAt.UnixMilli(); ms != 0 {
		b = append(b, `,"expiresAt":`...)
		b = strconv.AppendInt(b, ms, 10)
	}
	if ms := max(remainingMs(he.ExpiresAt.Sub(now)), 0); ms != 0 {
		b = append(b, `,"remainingMs":`...)
		b = strconv.AppendInt(b, ms, 10)
	}
	return append(b, '}')
}

// appendStatus is a lease.status answer: Status with its zero members left
// out.
func appendStatus(b []byte, ref string, st Status) []byte {
	b = appendHead(b, "lease.status", ref)
	b = append(b, `,"isLeased":`...)
	b = strconv.AppendBool(b, st.IsLeased)
	if st.AgentID != "" {
		b = append(b, `,"agentId":`...)
		b = appendString(b, st.AgentID)
	}
	if st.ExpiresAt != 0 {
		b = append(b, `,"expiresAt":`...)
		b = strconv.AppendInt(b, st.ExpiresAt, 10)
	}
	if st.Token != 0 {
		b = append(b, `,"token":`...)
		b = strconv.AppendUint(b, st.Token, 10)
	}
	if st.RemainingMs != 0 {
		b = append(b, `,"remainingMs":`...)
		b = strconv.AppendInt(b, st.RemainingMs, 10)
	}
	return append(b, '}')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. Control characters are escaped
// and bytes that are not UTF-8 become U+FFFD, so the result is always
// valid JSON in valid UTF-8.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r != utf8.RuneError || size != 1 {
				i += size
				continue
			}
			b = append(b, s[start:i]...)
			b = append(b, "\uFFFD"...)
			i++
			start = i
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		i++
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
