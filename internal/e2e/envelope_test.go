package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/broker"
	"github.com/lsmtp/lsmtp/engine"
	"github.com/lsmtp/lsmtp/internal/queueid"
	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// TestEnvelopeLimitsAtRCPT: with routing key inbound.{domain}, what the
// broker could not encode is refused at RCPT, where the client can still
// be told, and never costs the broker connection. A domain that cannot
// stand in a routing key and a copy's message_id (short strings, 255
// octets, AMQP 0-9-1 §4.2.5.3) gets 501 5.1.3, whether it is too long as sent or only once
// lower-cased; recipients that would make the header table larger than
// the frame get 452 4.5.3 (RFC 5321 §4.5.3.1.10), and the client sends
// them in a second transaction. Every message is stored, on the one
// connection the broker opened.
func TestEnvelopeLimitsAtRCPT(t *testing.T) {
	bc := brokerConfig(t, rabbittest.URL)
	bc.Envelope = broker.EnvelopeHeaders // the header table is what is bounded
	bc.RoutingKey = "inbound.{domain}"
	s := startStack(t, bc, true, func(c *engine.Config) { c.MaxRecipients = 1000 })
	lim := s.brk.Limits()
	// The copy's message_id, <queue ID>.<domain>, is a short string too,
	// and binds before the routing key.
	if lim.MaxDomain != 255-queueid.Len-1 || lim.MaxEnvelope < 64<<10 {
		t.Fatalf("broker limits %+v", lim)
	}

	// Four labels of 62 octets: 251 octets, a valid domain, but
	// inbound.<domain> is 259. 120 × U+023A: 240 octets, 360 lower-cased.
	label := strings.Repeat("q", 62)
	long := label + "." + label + "." + label + "." + label
	grows := strings.Repeat("Ⱥ", 120)
	c := s.session(t, "limits.e2e.test", true)
	if _, err := c.Expect("MAIL FROM:<sender@example.org> SMTPUTF8", 250); err != nil {
		t.Fatal(err)
	}
	for _, rcpt := range []string{"x@" + long, "x@" + grows} {
		if r, err := c.Cmd("RCPT TO:<" + rcpt + ">"); err != nil || r.Last() != "501 5.1.3 Recipient domain too long to route here" {
			t.Fatalf("RCPT of a %d-octet domain: %q, %v", len(rcpt)-2, r.String(), err)
		}
	}
	if _, err := c.Expect("RCPT TO:<ok@alpha.example>", 250); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Expect("DATA", 354); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteData([]byte("Subject: after two refused recipients\r\n\r\nx\r\n")); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Read(); err != nil || r.Code != 250 {
		t.Fatalf("message after the refused recipients: %q, %v", r.String(), err)
	}

	// 600 recipients of 254 octets to one domain (the most a path holds,
	// RFC 5321 §4.5.3.1.3): about 150 KB of header table, more than the
	// frame. The broker's limits say exactly how many fit.
	const sender = "bulk@example.org"
	d58 := strings.Repeat("d", 58)
	domain := "bulk." + d58 + "." + d58 + "." + d58 + ".example" // 189 octets
	rcpts := make([]string, 600)
	for i := range rcpts {
		rcpts[i] = fmt.Sprintf("%03d%s@%s", i, strings.Repeat("r", 61), domain)
	}
	if n := len(rcpts[0]) + 2; n != 256 || len(domain) != 189 {
		t.Fatalf("path of %d octets", n)
	}
	fit := (lim.MaxEnvelope - len(sender)) / (len(rcpts[0]) + lim.RecipientOverhead)
	if fit >= len(rcpts) || fit < len(rcpts)/2 {
		t.Fatalf("%d of %d recipients fit %+v: the test needs some refused and the rest to fit a second message", fit, len(rcpts), lim)
	}
	accepted := sendBulk(t, c, sender, rcpts)
	if accepted != fit {
		t.Fatalf("%d recipients accepted, the broker's limits fit %d", accepted, fit)
	}
	if rest := sendBulk(t, c, sender, rcpts[accepted:]); rest != len(rcpts)-accepted {
		t.Fatalf("second transaction: %d of %d recipients accepted", rest, len(rcpts)-accepted)
	}

	got := consume(t, bc.Queue, 3, 500*time.Millisecond, 15*time.Second)
	counts := map[string][]int{}
	for _, d := range got {
		list, _ := d.Headers["smtp-recipients"].([]any)
		counts[d.RoutingKey] = append(counts[d.RoutingKey], len(list))
	}
	bulk := counts["inbound."+domain]
	if len(got) != 3 || len(counts["inbound.alpha.example"]) != 1 || len(bulk) != 2 || bulk[0]+bulk[1] != len(rcpts) {
		t.Fatalf("queue holds %d messages, recipients by routing key %v", len(got), counts)
	}
	if st := s.brk.Stats(); st.Connects != 1 || st.Disconnects != 0 || st.Failed != 0 {
		t.Fatalf("broker: %d connects, %d disconnects, %d failed messages; want 1, 0, 0", st.Connects, st.Disconnects, st.Failed)
	}
}

// sendBulk runs one transaction on c to rcpts, MAIL and every RCPT in
// one write (RFC 2920). RCPTs are answered 250 2.1.5 up to the envelope
// limit, 452 4.5.3 from there on; the message goes to the accepted ones
// and must get 250. It returns how many were accepted.
func sendBulk(t *testing.T, c *smtptest.Conn, sender string, rcpts []string) int {
	t.Helper()
	var b strings.Builder
	b.WriteString("MAIL FROM:<" + sender + ">\r\n")
	for _, r := range rcpts {
		b.WriteString("RCPT TO:<" + r + ">\r\n")
	}
	if err := c.Write([]byte(b.String())); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Read(); err != nil || r.Code != 250 {
		t.Fatalf("MAIL: %q, %v", r.String(), err)
	}
	accepted := 0
	for i := range rcpts {
		r, err := c.Read()
		switch {
		case err != nil:
			t.Fatalf("RCPT %d: %v", i, err)
		case r.Last() == "250 2.1.5 OK" && accepted == i:
			accepted++
		case r.Last() != "452 4.5.3 Too many recipients (envelope size)" || accepted == 0:
			t.Fatalf("RCPT %d after %d accepted: %q", i, accepted, r.String())
		}
	}
	if _, err := c.Expect("DATA", 354); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteData([]byte("Subject: many recipients\r\n\r\nx\r\n")); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Read(); err != nil || r.Code != 250 {
		t.Fatalf("message to %d recipients: %q, %v", accepted, r.String(), err)
	}
	return accepted
}
