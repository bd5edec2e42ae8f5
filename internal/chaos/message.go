package chaos

import "bytes"

// messageBody is the message with token: a header naming the token
// (found again in the queue) and filler lines up to about size octets,
// each ending in CRLF.
func messageBody(token string, size int) []byte {
	var b bytes.Buffer
	b.Grow(size + 128)
	b.WriteString(tokenHeader + token + "\r\n")
	b.WriteString("Message-ID: <" + token + "@chaos.lsmtp.invalid>\r\nSubject: lsmtp chaos\r\n\r\n")
	const line = "The quick brown fox jumps over the lazy dog 0123456789 ABCDEFGHIJKLMNOPQRSTU\r\n"
	for b.Len()+len(line) <= size {
		b.WriteString(line)
	}
	return b.Bytes()
}

// tokenHeader is the first header of every message: it names the
// generator's message, which keeps its token across retries.
const tokenHeader = "X-Chaos-Token: "

// tokenOf finds the token in a message as stored (after lsmtp's
// Received: header).
func tokenOf(body []byte) (string, bool) {
	i := bytes.Index(body, []byte("\r\n"+tokenHeader))
	if i < 0 {
		return "", false
	}
	rest := body[i+2+len(tokenHeader):]
	j := bytes.Index(rest, []byte("\r\n"))
	if j < 0 {
		return "", false
	}
	return string(rest[:j]), true
}
