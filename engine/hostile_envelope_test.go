package engine

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/sink"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// The hostileLimits profile: a sink that says what it can carry, as the
// broker does (a routing key built from the domain, a frame for the
// envelope, a copy per domain), scaled down; a policy; lines of 64 KiB.
const (
	hostileLimitDomain   = 40  // MaxDomain
	hostileLimitDomains  = 3   // MaxDomains
	hostileLimitEnvelope = 400 // MaxEnvelope, with RecipientOverhead 5
	hostileLimitBudget   = 300_000
	hostileLimitLine     = 64 << 10
	// hostileRateIP is the client hostileLimitsPolicy gives no message
	// token; the canary connects from 127.0.0.1.
	hostileRateIP = "127.0.0.4"
)

func hostileLimitsConfig() Config {
	return Config{
		MaxMessageSize:   hostileMaxSize,
		MaxLineLength:    hostileLimitLine,
		MaxInFlightBytes: hostileLimitBudget,
		IdleTimeout:      10 * time.Second,
		DataTimeout:      10 * time.Second,
		Policy:           hostileLimitsPolicy{},
		Sink: &smtptest.Recorder{Envelope: sink.Limits{
			MaxDomain:         hostileLimitDomain,
			MaxDomains:        hostileLimitDomains,
			MaxEnvelope:       hostileLimitEnvelope,
			RecipientOverhead: 5,
			CopyPerDomain:     true,
		}},
	}
}

// hostileLimitsPolicy refuses recipients at refused.test (550 5.7.1)
// and messages from hostileRateIP (450 4.7.1).
type hostileLimitsPolicy struct{}

func (hostileLimitsPolicy) ClientAllowed(netip.Addr) bool             { return true }
func (hostileLimitsPolicy) TakeConnection(netip.Addr, time.Time) bool { return true }
func (hostileLimitsPolicy) TakeMessage(ip netip.Addr, _ time.Time) bool {
	return ip != netip.MustParseAddr(hostileRateIP)
}
func (hostileLimitsPolicy) RecipientAllowed(addr []byte) bool {
	return !bytes.HasSuffix(addr, []byte("@refused.test"))
}

// hostileEnvelopeCases: no envelope reaches the sink that it could not
// carry (its Limits, enforced at RCPT: 501 5.1.3 for a domain it can
// never route, 452 4.5.3 for the rest of a full envelope, RFC 5321
// §4.5.3.1.10); a copy per domain counts in the in-flight budget; the
// HELO argument never becomes header syntax; refusals of policy count
// toward MaxErrors.
func hostileEnvelopeCases() []hostileCase {
	dom40 := strings.Repeat("a", 19) + "." + strings.Repeat("b", 20) // 40 octets
	// U+023A is two octets and lower-cases to U+2C65, three: 27 octets
	// that are 40 lower-cased, and 28 that are 41.
	u40 := strings.Repeat("Ⱥ", 13) + "a"
	u41 := u40 + "b"
	rcpt60 := func(i int) string { return string(rune('a'+i)) + strings.Repeat("r", 52) + "@d.test" } // 60 octets
	var six strings.Builder
	for i := range 6 {
		six.WriteString("RCPT TO:<" + rcpt60(i) + ">\r\n")
	}
	const mailboxTooLong = "501 5.1.3 Recipient domain too long to route here"
	return []hostileCase{{
		name: "RCPT: a domain longer than the sink routes on",
		prof: hostileLimits,
		steps: []hostileStep{hostileEHLO("MAIL FROM:<a@b.test> SMTPUTF8\r\n"+
			"RCPT TO:<x@"+dom40+">\r\nRCPT TO:<x@"+dom40+"c>\r\nRCPT TO:<y@"+strings.ToUpper(dom40)+">\r\n"+
			"RCPT TO:<x@"+u40+">\r\nRCPT TO:<x@"+u41+">\r\nDATA\r\n",
			"250 2.1.0", "250 2.1.5", mailboxTooLong, "250 2.1.5", "250 2.1.5", mailboxTooLong, "354"),
			hs("two domains\r\n.\r\n", "250 2.0.0")},
		msgs:  1,
		check: hostileEnvelopeIs("a@b.test", "x@"+dom40, "y@"+strings.ToUpper(dom40), "x@"+u40),
	}, {
		name: "RCPT: more recipient domains than the sink takes",
		prof: hostileLimits,
		steps: []hostileStep{
			hostileEHLO("MAIL FROM:<a@b.test>\r\nRCPT TO:<a@one.test>\r\nRCPT TO:<b@ONE.test>\r\nRCPT TO:<c@two.test>\r\n"+
				"RCPT TO:<d@three.test>\r\nRCPT TO:<e@four.test>\r\nRCPT TO:<f@Two.Test>\r\nDATA\r\n",
				"250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.1.5", "250 2.1.5", "452 4.5.3 Too many recipient domains", "250 2.1.5", "354"),
			// The client sends the refused one in a transaction of its own.
			hs("first\r\n.\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<e@four.test>\r\nDATA\r\n", "250 2.0.0", "250 2.1.0", "250 2.1.5", "354"),
			hs("second\r\n.\r\n", "250 2.0.0"),
		},
		msgs: 2,
		check: func(t *testing.T, msgs []smtptest.Recorded) {
			hostileEnvelopeIs("a@b.test", "a@one.test", "b@ONE.test", "c@two.test", "d@three.test", "f@Two.Test")(t, msgs)
			hostileEnvelopeIs("a@b.test", "e@four.test")(t, msgs[1:])
		},
	}, {
		// 10 octets of sender and six of 60 + 5 are exactly 400.
		name: "RCPT: an envelope larger than the sink carries",
		prof: hostileLimits,
		steps: []hostileStep{
			hostileEHLO("MAIL FROM:<abc@b.test>\r\n"+six.String()+"RCPT TO:<"+rcpt60(6)+">\r\nRCPT TO:<z@d.test>\r\nDATA\r\n",
				append(append([]string{"250 2.1.0"}, hostileRep(6, "250 2.1.5")...),
					"452 4.5.3 Too many recipients (envelope size)", "452 4.5.3 Too many recipients (envelope size)", "354")...),
			hs("first\r\n.\r\nMAIL FROM:<abc@b.test>\r\nRCPT TO:<"+rcpt60(6)+">\r\nRCPT TO:<z@d.test>\r\nDATA\r\n",
				"250 2.0.0", "250 2.1.0", "250 2.1.5", "250 2.1.5", "354"),
			hs("second\r\n.\r\n", "250 2.0.0"),
		},
		msgs: 2,
		check: func(t *testing.T, msgs []smtptest.Recorded) {
			hostileEnvelopeIs("abc@b.test", rcpt60(0), rcpt60(1), rcpt60(2), rcpt60(3), rcpt60(4), rcpt60(5))(t, msgs)
			hostileEnvelopeIs("abc@b.test", rcpt60(6), "z@d.test")(t, msgs[1:])
		},
	}, {
		name:   "RCPT: 1,000 refused recipient domains on one connection",
		prof:   hostileLimits,
		steps:  []hostileStep{hostileEHLO("MAIL FROM:<a@b.test>\r\n"+strings.Repeat("RCPT TO:<x@refused.test>\r\n", 1000), append(append([]string{"250 2.1.0"}, hostileRep(10, "550 5.7.1")...), "421 4.7.0")...)},
		closed: true,
	}, {
		name: "MAIL: 1,000 refusals of the message rate on one connection",
		prof: hostileLimits,
		run:  hostileRateFlood,
	}, {
		// Budget 300,000: a message whose stored form is 100,000 octets,
		// to three domains, fits; one octet more does not. Serial: the
		// budget is the server's.
		name:   "DATA and BDAT: a copy per recipient domain in the budget, at its bound",
		prof:   hostileLimits,
		serial: true,
		run:    hostileCopiesBudget,
		msgs:   3,
	}, {
		name: "EHLO with blanks: a forged trace header",
		steps: []hostileStep{hs("EHLO mail.bank.example [10.0.0.1] by mx.bank.example with ESMTPS id TRUSTED; Mon, 1 Jan 2001 00:00:00 +0000\r\n"+
			"HELO a b\r\nEHLO x\ty\r\nMAIL FROM:<a@b.test>\r\n", "501 5.5.4", "501 5.5.4", "501 5.5.4", "503 5.5.1")},
	}, {
		name: "EHLO neither domain nor address literal: a sanitised comment",
		prof: hostileLimits,
		run:  hostileHeloComment,
	}, {
		name: "EHLO: the longest accepted, with 64 KiB lines",
		prof: hostileLimits,
		run:  hostileHeloLongest,
	}}
}

// hostileRateFlood: a client without message tokens pipelines 1,000
// MAILs. Each refusal (450 4.7.1) counts toward MaxErrors: after ten the
// session gets 421 4.7.0 and is closed.
func hostileRateFlood(t *testing.T, h *hostileServer, id string) {
	c := dialFrom(t, hostileRateIP, h.addr)
	c.expect("220 mx.test")
	c.send("EHLO " + id + "\r\n" + strings.Repeat("MAIL FROM:<a@b.test>\r\n", 1000))
	c.expect("250 ")
	for i := 0; i < 10; i++ {
		c.expect("450 4.7.1")
	}
	c.expect("421 4.7.0 mx.test Too many errors")
	c.expectClosed()
}

// hostileMessage sends one message on a connection of its own, with
// EHLO helo, and returns the reply to its end.
func hostileMessage(t *testing.T, h *hostileServer, helo string, rcpts []string, bdat bool, content string) string {
	t.Helper()
	c := dial(t, h.addr)
	c.do("EHLO "+helo, "250 ")
	c.do("MAIL FROM:<a@b.test>", "250 2.1.0")
	for _, r := range rcpts {
		c.do("RCPT TO:<"+r+">", "250 2.1.5")
	}
	var last string
	if bdat {
		c.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(content), content))
		last = c.expect("")
	} else {
		c.do("DATA", "354")
		wire := strings.ReplaceAll("\n"+content, "\n.", "\n..")[1:]
		c.send(wire + ".\r\n")
		last = c.expect("")
	}
	c.do("QUIT", "221")
	c.expectClosed()
	return last
}

// hostileCopiesBudget: with a copy per domain, a message counts size ×
// copies in the in-flight budget. The first message measures our
// Received: header (the same length for every message of this client:
// one queue ID length, one date format); then 3 × (header + body) is
// made exactly the budget, and one octet more.
func hostileCopiesBudget(t *testing.T, h *hostileServer, id string) {
	rcpts := []string{"x@one.test", "y@two.test", "z@three.test"}
	if r := hostileMessage(t, h, id, rcpts, false, "measure\r\n"); !strings.HasPrefix(r, "250 2.0.0") {
		t.Fatalf("first message: %q", r)
	}
	m := h.sink.ByHelo(id)[0]
	hdr := len(m.Data) - len(m.Content())
	size := hostileLimitBudget/3 - hdr
	if size%1000 < 3 {
		t.Fatalf("a body of %d octets cannot be built in lines (hostileBody)", size)
	}
	for _, bdat := range []bool{false, true} {
		for _, extra := range []int{0, 1} {
			_, content := hostileBody(size+extra, "")
			want := "250 2.0.0 OK queued as"
			if extra > 0 {
				want = "451 4.3.1"
			}
			if r := hostileMessage(t, h, id, rcpts, bdat, content); !strings.HasPrefix(r, want) {
				t.Fatalf("BDAT %v, 3 × %d octets, budget %d: %q, want %q", bdat, hdr+size+extra, hostileLimitBudget, r, want)
			}
		}
	}
	if n := h.srv.Stats().InFlightBytes.Load(); n != 0 {
		t.Fatalf("InFlightBytes %d after the messages, want 0", n)
	}
}

// hostileHeloMessage sends a message after EHLO arg and returns what the
// sink got, found by its HELO value helo.
func hostileHeloMessage(t *testing.T, h *hostileServer, arg, helo, rcpt string) smtptest.Recorded {
	t.Helper()
	if r := hostileMessage(t, h, arg, []string{rcpt}, false, "helo\r\n"); !strings.HasPrefix(r, "250 2.0.0") {
		t.Fatalf("EHLO %.40q: message answered %q", arg, r)
	}
	msgs := h.sink.ByHelo(helo)
	if len(msgs) != 1 {
		t.Fatalf("EHLO %.40q: %d messages with HELO %q in the sink, want 1", arg, len(msgs), helo)
	}
	return msgs[0]
}

// hostileReceivedLines checks that every line of our Received: header
// is within RFC 5322 §2.1.1's 998 octets, and returns its first line.
func hostileReceivedLines(t *testing.T, m smtptest.Recorded) string {
	t.Helper()
	hdr := strings.TrimSuffix(m.Data[:len(m.Data)-len(m.Content())], "\r\n")
	lines := strings.Split(hdr, "\r\n")
	for _, l := range lines {
		if len(l) > 998 {
			t.Fatalf("Received: line of %d octets: %.80q...", len(l), l)
		}
	}
	return lines[0]
}

// hostileHeloComment: single tokens that are no domain and no address
// literal are taken (real clients send them), but our Received: header
// names the client by its address and has the argument only in a
// comment, sanitised and cut to 64 octets; smtp-helo gets the same.
func hostileHeloComment(t *testing.T, h *hostileServer, id string) {
	long := id + "_" + strings.Repeat("a", 60000)
	label := strings.Repeat("l", 63)
	dom256 := id + "." + label + "." + label + "." + label + "."
	dom256 += strings.Repeat("m", 256-len(dom256))
	for _, tc := range []struct{ arg, helo string }{
		{id + "_pc", id + "_pc"},
		{"192.168.1.1", "192.168.1.1"}, // RFC 3696 §2: an all-numeric top-level label
		{"_" + id + `(by)\x;<>"`, "_" + id + `?by??x;<>"`},
		{long, long[:64]},
		{dom256, dom256[:64]},
	} {
		m := hostileHeloMessage(t, h, tc.arg, tc.helo, "c@d.test")
		if want := "Received: from [127.0.0.1] (helo=" + tc.helo + ")"; hostileReceivedLines(t, m) != want {
			t.Fatalf("EHLO %.40q: Received: starts %q, want %q", tc.arg, hostileReceivedLines(t, m), want)
		}
	}
}

// hostileHeloLongest: the longest HELO argument taken as it is (a domain
// of 255 octets, RFC 5321 §4.5.3.1.2) and the longest recipient this
// sink takes keep every line of our Received: header within 998 octets,
// even with 64 KiB command lines. (TestReceivedLongest has the longest
// of everything.)
func hostileHeloLongest(t *testing.T, h *hostileServer, id string) {
	label := strings.Repeat("l", 63)
	dom := id + "." + label + "." + label + "." + label + "."
	dom += strings.Repeat("m", 255-len(dom))
	rcpt := strings.Repeat("r", 64) + "@" + strings.Repeat("d", 20) + "." + strings.Repeat("e", hostileLimitDomain-21)
	if len(dom) != 255 {
		t.Fatalf("domain of %d octets", len(dom))
	}
	m := hostileHeloMessage(t, h, dom, dom, rcpt)
	if want := "Received: from " + dom + " ([127.0.0.1])"; hostileReceivedLines(t, m) != want {
		t.Fatalf("Received: starts %q, want %q", hostileReceivedLines(t, m), want)
	}
	if !strings.Contains(m.Data, "\r\n\tfor <"+rcpt+">;") {
		t.Fatalf("Received: has no for clause naming the recipient: %q", m.Data[:len(m.Data)-len(m.Content())])
	}
	// Labels of a domain, as long as a line may be: no longer a domain
	// (over 255 octets), so a comment of 64.
	huge := id + strings.Repeat("."+label, (hostileLimitLine-100-len(id))/64)
	m = hostileHeloMessage(t, h, huge, huge[:64], rcpt)
	if want := "Received: from [127.0.0.1] (helo=" + huge[:64] + ")"; hostileReceivedLines(t, m) != want {
		t.Fatalf("EHLO of %d octets: Received: starts %q, want %q", len(huge), hostileReceivedLines(t, m), want)
	}
}
