package engine

import (
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/lsmtp/lsmtp/internal/sink"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// The domains the sink lower-cases with strings.ToLower: ASCII, letters
// that grow (U+023A, 2 octets, lower-cases to U+2C65, 3), that fold
// alike but lower-case apart (U+017F long s and s; U+212A Kelvin and
// k lower-case alike), an invalid octet (U+FFFD, 3).
var envelopeDomains = []string{
	"example.com", "EXAMPLE.com", "exAmple.co", "",
	"ȺȺȺ.test", "ⱥⱥⱥ.test", "ⱥȺⱥ.TEST", "Ⱥ",
	"ſ.test", "s.test", "S.test", "\u212a.test", "k.test",
	"bücher.test", "BÜCHER.test", "İ.test", "i.test",
	"a\xff.test", "a\xfe.test", "a\uFFFD.test",
}

func TestLoweredLen(t *testing.T) {
	for _, d := range envelopeDomains {
		if got, want := loweredLen([]byte(d)), len(strings.ToLower(d)); got != want {
			t.Errorf("loweredLen(%q) = %d, want %d", d, got, want)
		}
	}
}

// sameDomain must agree with the sink's comparison exactly: merging two
// domains the sink keeps apart would let one copy too many through.
func TestSameDomain(t *testing.T) {
	for _, a := range envelopeDomains {
		for _, b := range envelopeDomains {
			if got, want := sameDomain([]byte(a), []byte(b)), strings.ToLower(a) == strings.ToLower(b); got != want {
				t.Errorf("sameDomain(%q, %q) = %v, want %v", a, b, got, want)
			}
		}
	}
}

// limitedNull is sink.Null with envelope limits, counting how often
// they were asked for.
type limitedNull struct {
	sink.Null
	limits sink.Limits
	asked  atomic.Int32
}

func (n *limitedNull) Limits() sink.Limits { n.asked.Add(1); return n.limits }

// The limits are asked for once per configuration, not per command.
func TestLimitsAskedPerConfiguration(t *testing.T) {
	sk := &limitedNull{limits: sink.Limits{MaxDomains: 2}}
	h := newMemHarness(t, Config{Sink: sk}, false)
	h.pass([]byte("EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@one.test>\r\nRCPT TO:<x@two.test>\r\nRCPT TO:<x@three.test>\r\n"))
	if !strings.HasSuffix(string(h.transcript), "250 2.1.5 OK\r\n250 2.1.5 OK\r\n452 4.5.3 Too many recipient domains\r\n") {
		t.Fatalf("transcript %q", h.transcript)
	}
	if n := sk.asked.Load(); n != 1 {
		t.Fatalf("Limits asked %d times by New and a session, want 1", n)
	}
	sk.limits.MaxDomains = 3
	if _, err := h.srv.Reload(Config{Listen: []string{"127.0.0.1:0"}, Hostname: "mx.test", Sink: sk}); err != nil {
		t.Fatal(err)
	}
	h.pass([]byte("RCPT TO:<x@three.test>\r\n"))
	if !strings.HasSuffix(string(h.transcript), "452 4.5.3 Too many recipient domains\r\n250 2.1.5 OK\r\n") || sk.asked.Load() != 2 {
		t.Fatalf("after Reload: asked %d times, transcript %q", sk.asked.Load(), h.transcript)
	}
}

// Enforcing the limits costs no allocation per command: the distinct
// domains are spans into the envelope, compared in place.
func TestSessionAllocsEnvelopeLimits(t *testing.T) {
	sk := &limitedNull{limits: sink.Limits{MaxDomain: 20, MaxDomains: 2, MaxEnvelope: 195, RecipientOverhead: 5, CopyPerDomain: true}}
	h := newMemHarness(t, Config{Sink: sk, MaxErrors: 1 << 30}, false)
	h.pass([]byte(allocEHLO))
	// Envelope: 8 + (8+5) + (10+5) + (8+5) + (68+5) = 122 octets, then
	// 69+5 more would be 196.
	batch := []byte("RSET\r\nMAIL FROM:<a@b.test> SMTPUTF8\r\nRCPT TO:<c@D.test>\r\nRCPT TO:<e@ⱥ.test>\r\nRCPT TO:<f@d.TEST>\r\n" +
		"RCPT TO:<g@h.test>\r\nRCPT TO:<i@" + strings.Repeat("j", 21) + ">\r\nRCPT TO:<" + strings.Repeat("k", 60) + "@Ⱥ.test>\r\n" +
		"RCPT TO:<" + strings.Repeat("l", 60) + "@ⱥ.test>\r\nRSET\r\n")
	want := "250 2.0.0 OK\r\n250 2.1.0 OK\r\n250 2.1.5 OK\r\n250 2.1.5 OK\r\n250 2.1.5 OK\r\n" +
		"452 4.5.3 Too many recipient domains\r\n501 5.1.3 Recipient domain too long to route here\r\n" +
		"250 2.1.5 OK\r\n452 4.5.3 Too many recipients (envelope size)\r\n250 2.0.0 OK\r\n"
	start := len(h.transcript)
	h.pass(batch)
	if got := string(h.transcript[start:]); got != want {
		t.Fatalf("replies to the batch:\n%q\nwant\n%q", got, want)
	}
	h.discard = true
	for i := 0; i < 10; i++ {
		h.pass(batch)
	}
	if n := testing.AllocsPerRun(200, func() { h.pass(batch) }); n != 0 && !raceEnabled {
		t.Errorf("a batch of RCPTs against the sink's limits: %v allocations per pass, want 0", n)
	}
	if h.closed {
		t.Fatal("the session was closed: the 501s must not reach MaxErrors within one batch")
	}
}

// TestReceivedLongest: our Received: header with the longest of
// everything (hostname 255 octets, HELO domain 255, an IPv6 client,
// SMTPUTF8, a recipient path of 256 octets) and 64 KiB command lines
// keeps every line within RFC 5322 §2.1.1's 998 octets.
func TestReceivedLongest(t *testing.T) {
	label := strings.Repeat("l", 63)
	dom255 := label + "." + label + "." + label + "." + strings.Repeat("m", 63)
	rcpt := strings.Repeat("r", 64) + "@" + strings.Repeat("ü", 31) + "." + strings.Repeat("e", 63) + "." + strings.Repeat("f", 62)
	if len(dom255) != 255 || len(rcpt)+2 != 256 {
		t.Fatalf("domain %d, path %d octets", len(dom255), len(rcpt)+2)
	}
	rec := &smtptest.Recorder{}
	h := newMemHarness(t, Config{Sink: rec, Hostname: dom255, MaxLineLength: 64 << 10}, false)
	h.sess.remote = netip.MustParseAddrPort("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535")
	h.sess.ipText = h.sess.remote.Addr().String()
	for _, helo := range []string{dom255, strings.Repeat("x_", 30000)} {
		h.pass([]byte("EHLO " + helo + "\r\nMAIL FROM:<a@b.test> SMTPUTF8\r\nRCPT TO:<" + rcpt + ">\r\nDATA\r\nbody\r\n.\r\n"))
	}
	msgs := rec.Messages()
	if len(msgs) != 2 {
		t.Fatalf("%d messages, want 2; transcript %q", len(msgs), trim(string(h.transcript)))
	}
	for i, m := range msgs {
		hdr := m.Data[:len(m.Data)-len(m.Content())]
		for _, l := range strings.Split(strings.TrimSuffix(hdr, "\r\n"), "\r\n") {
			if len(l) > 998 {
				t.Errorf("message %d: Received: line of %d octets: %.60q", i, len(l), l)
			}
		}
		if !strings.Contains(hdr, "with UTF8SMTP") || !strings.Contains(hdr, "for <"+rcpt+">") {
			t.Errorf("message %d: Received: %q", i, hdr)
		}
	}
	if want := "Received: from [IPv6:ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe] (helo=" + strings.Repeat("x_", 32) + ")\r\n"; !strings.HasPrefix(msgs[1].Data, want) {
		t.Errorf("second message starts %q, want %q", msgs[1].Data[:len(want)], want)
	}
}
