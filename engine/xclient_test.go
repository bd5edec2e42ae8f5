package engine

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/lsmtp/lsmtp/codec"
	"github.com/lsmtp/lsmtp/internal/policy"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// XCLIENT (xclient.go), over real sockets.

func loopbackXclient() []netip.Prefix { return []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")} }

var xclientMessage = []step{{"MAIL FROM:<a@b.test>", "250 2.1.0"}, {"RCPT TO:<c@d.test>", "250 2.1.5"}, {"DATA", "354 "}, {"hi\r\n.", "250 2.0.0"}}

func TestXclientSetsClientHeloAndLogin(t *testing.T) {
	rs := &smtptest.Recorder{}
	_, addr := startServer(t, Config{Sink: rs, XclientFrom: loopbackXclient()})
	c := dial(t, addr)
	c.do("XCLIENT ADDR=192.0.2.7 NAME=relay.example HELO=mx.example LOGIN=alice", "220 mx.test ESMTP")
	// The relay greets again in its own name; the client's HELO stays.
	c.do("EHLO relay.example", "250 XCLIENT NAME ADDR PORT PROTO HELO LOGIN")
	runDialog(t, c, xclientMessage)
	m := rs.Messages()[0]
	if m.ClientIP != "192.0.2.7" || m.Helo != "mx.example" || !strings.HasPrefix(m.Data, "Received: from mx.example ([192.0.2.7])\r\n") {
		t.Fatalf("client %q, helo %q, header %q", m.ClientIP, m.Helo, m.Data[:60])
	}
}

func TestXclientIPv6AndPort(t *testing.T) {
	rs := &smtptest.Recorder{}
	_, addr := startServer(t, Config{Sink: rs, XclientFrom: loopbackXclient()})
	c := dial(t, addr)
	c.do("XCLIENT ADDR=IPV6:2001:db8::9 PORT=40000 PROTO=ESMTP HELO=[IPv6:2001:db8::9]", "220 mx.test ESMTP")
	c.do("EHLO relay.example", "250 ")
	runDialog(t, c, xclientMessage)
	m := rs.Messages()[0]
	if m.ClientIP != "2001:db8::9" || m.Helo != "[IPv6:2001:db8::9]" || !strings.Contains(m.Data, "([IPv6:2001:db8::9])") {
		t.Fatalf("client %q, helo %q, header %q", m.ClientIP, m.Helo, m.Data[:70])
	}
}

func TestXclientUnauthorized(t *testing.T) {
	rs := &smtptest.Recorder{}
	_, addr := startServer(t, Config{Sink: rs, XclientFrom: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}})
	c := dialFrom(t, "127.0.0.1", addr)
	c.expect("220 ")
	c.send("EHLO c\r\n")
	ehlo := c.reply()
	if last := ehlo[len(ehlo)-1]; last != "250 SMTPUTF8" || strings.Contains(strings.Join(ehlo, "\n"), "XCLIENT") {
		t.Fatalf("EHLO to an unauthorized client: %q", ehlo)
	}
	if got := c.do("XCLIENT ADDR=192.0.2.7", "550"); got != "550 5.7.0 Error: insufficient authorization" {
		t.Fatalf("got %q", got)
	}
	runDialog(t, c, xclientMessage)
	if m := rs.Messages()[0]; m.ClientIP != "127.0.0.1" || m.Helo != "c" {
		t.Fatalf("client %q helo %q after a refused XCLIENT", m.ClientIP, m.Helo)
	}
}

func TestXclientEHLOKeywordOnlyForAuthorized(t *testing.T) {
	_, addr := startServer(t, Config{XclientFrom: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}})
	c := dialFrom(t, "127.0.0.2", addr)
	c.expect("220 ")
	c.send("EHLO c\r\n")
	lines := c.reply()
	n := len(lines)
	if lines[n-1] != "250 XCLIENT NAME ADDR PORT PROTO HELO LOGIN" || lines[n-2] != "250-SMTPUTF8" || lines[0] != "250-mx.test" {
		t.Fatalf("EHLO to an authorized client: %q", lines)
	}
	c.do("HELO c", "250 mx.test") // HELO lists no keywords
}

func TestXclientInsideTransaction(t *testing.T) {
	rs := &smtptest.Recorder{}
	_, addr := startServer(t, Config{Sink: rs, XclientFrom: loopbackXclient()})
	c := dial(t, addr)
	c.do("EHLO relay", "250 ")
	c.do("MAIL FROM:<a@b.test>", "250 ")
	if got := c.do("XCLIENT ADDR=192.0.2.7", "503"); got != "503 5.5.1 Error: MAIL transaction in progress" {
		t.Fatalf("got %q", got)
	}
	c.do("RCPT TO:<c@d.test>", "250 2.1.5") // the transaction went on
	c.do("RSET", "250 ")
	c.do("XCLIENT ADDR=192.0.2.8 HELO=h.example", "220 ")
	c.do("EHLO relay", "250 ")
	runDialog(t, c, xclientMessage)
	if m := rs.Messages()[0]; m.ClientIP != "192.0.2.8" {
		t.Fatalf("client %q", m.ClientIP)
	}
}

func TestXclientBadAttributes(t *testing.T) {
	rs := &smtptest.Recorder{}
	_, addr := startServer(t, Config{Sink: rs, XclientFrom: loopbackXclient(), MaxErrors: 100})
	c := dial(t, addr)
	c.do("EHLO relay", "250 ")
	for _, tc := range []struct{ line, want string }{
		{"XCLIENT", "501 5.5.4 Syntax: XCLIENT attribute=value [attribute=value ...]"},
		{"XCLIENT FOO=1", "501 5.5.4 Bad XCLIENT attribute name"},
		{"XCLIENT ADDR", "501 5.5.4 Bad XCLIENT attribute name"},
		{"XCLIENT ADDR=192.0.2.7 FOO=1", "501 5.5.4 Bad XCLIENT attribute name"},
		{"XCLIENT ADDR=300.0.2.7", "501 5.5.4 Bad XCLIENT attribute value"},
		{"XCLIENT ADDR=2001:db8::1", "501 5.5.4 Bad XCLIENT attribute value"},         // IPv6 needs IPV6:
		{"XCLIENT ADDR=IPV6:192.0.2.7", "501 5.5.4 Bad XCLIENT attribute value"},      // and IPV6: an IPv6 address
		{"XCLIENT ADDR=IPV6:fe80::1%25eth0", "501 5.5.4 Bad XCLIENT attribute value"}, // no zone
		{"XCLIENT ADDR=[192.0.2.7]", "501 5.5.4 Bad XCLIENT attribute value"},
		{"XCLIENT PORT=65536", "501 5.5.4 Bad XCLIENT attribute value"},
		{"XCLIENT PORT=-1", "501 5.5.4 Bad XCLIENT attribute value"},
		{"XCLIENT PROTO=LMTP", "501 5.5.4 Bad XCLIENT attribute value"},
		{"XCLIENT HELO=a+20b", "501 5.5.4 Bad XCLIENT attribute value"},               // a blank: no name
		{"XCLIENT LOGIN=a+0D+0AX-Evil:+201", "501 5.5.4 Bad XCLIENT attribute value"}, // CRLF into a header
		{"XCLIENT LOGIN=a+", "501 5.5.4 Bad XCLIENT attribute value"},
		{"XCLIENT LOGIN=a=b", "501 5.5.4 Bad XCLIENT attribute value"},
		{"XCLIENT HELO=" + strings.Repeat("a", 256), "501 5.5.4 Bad XCLIENT attribute value"},
		{"XCLIENT ADDR=192.0.2.7 HELO=a+20b", "501 5.5.4 Bad XCLIENT attribute value"}, // none of it applies
	} {
		if got := c.do(tc.line, "501"); got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.line, got, tc.want)
		}
	}
	runDialog(t, c, xclientMessage) // still in the session EHLO began
	if m := rs.Messages()[0]; m.ClientIP != "127.0.0.1" || m.Helo != "relay" {
		t.Fatalf("client %q helo %q after refused XCLIENTs", m.ClientIP, m.Helo)
	}
}

func TestXclientResetsSession(t *testing.T) {
	rs := &smtptest.Recorder{}
	_, addr := startServer(t, Config{Sink: rs, XclientFrom: loopbackXclient()})
	c := dial(t, addr)
	c.do("EHLO relay", "250 ")
	// No HELO attribute: the client has not greeted yet.
	c.do("XCLIENT ADDR=192.0.2.7 LOGIN=alice", "220 mx.test ESMTP")
	c.do("MAIL FROM:<a@b.test>", "503 5.5.1 Send HELO or EHLO first")
	// [UNAVAILABLE] keeps the address, HELO from the relay's EHLO then.
	c.do("XCLIENT ADDR=[UNAVAILABLE] NAME=[TEMPUNAVAIL] HELO=[UNAVAILABLE]", "220 ")
	c.do("EHLO relay2", "250 ")
	runDialog(t, c, xclientMessage)
	if m := rs.Messages()[0]; m.ClientIP != "192.0.2.7" || m.Helo != "relay2" {
		t.Fatalf("client %q helo %q", m.ClientIP, m.Helo)
	}
}

func TestXclientAfterProxyHeader(t *testing.T) {
	rs := &smtptest.Recorder{}
	_, addr := startServer(t, Config{Sink: rs, TrustedProxies: loopbackProxies()})
	c := dialNoGreeting(t, addr)
	c.send("PROXY TCP4 192.0.2.50 127.0.0.1 5555 25\r\n")
	c.expect("220 ")
	c.do("XCLIENT ADDR=192.0.2.7 HELO=mx.example", "220 ")
	c.do("EHLO relay", "250 XCLIENT")
	runDialog(t, c, xclientMessage)
	if m := rs.Messages()[0]; m.ClientIP != "192.0.2.7" || m.Helo != "mx.example" {
		t.Fatalf("client %q helo %q", m.ClientIP, m.Helo)
	}
}

// The per-IP limit counts the named client, and the relay's own count
// is given back, as for a PROXY header.
func TestXclientPerIPLimitAppliesToTheNewAddress(t *testing.T) {
	srv, addr := startServer(t, Config{XclientFrom: loopbackXclient(), MaxConnsPerIP: 1})
	a := dial(t, addr)
	a.do("XCLIENT ADDR=192.0.2.1", "220 ")
	// The relay's address is free again: it may connect once more.
	b := dial(t, addr)
	if got := b.do("XCLIENT ADDR=192.0.2.1", "421"); got != "421 4.7.0 mx.test Too many connections, try again later" {
		t.Fatalf("got %q", got)
	}
	b.expectClosed()
	c := dial(t, addr)
	c.do("XCLIENT ADDR=192.0.2.2 HELO=x", "220 ")
	c.do("XCLIENT ADDR=192.0.2.2 HELO=y", "220 ") // the same client again: no second count
	if got := srv.Stats().Refusals(RefusedPerIP); got != 1 {
		t.Fatalf("per-IP refusals %d, want 1", got)
	}
	a.do("QUIT", "221 ")
	a.expectClosed()
	d := dial(t, addr)
	d.do("XCLIENT ADDR=192.0.2.1", "220 ") // a's count went with it
}

func TestXclientPolicyAppliesToTheNewAddress(t *testing.T) {
	pol, err := policy.New(policy.Config{Deny: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}})
	mustf(t, err, "policy")
	srv, addr := startServer(t, Config{XclientFrom: loopbackXclient(), Policy: pol})
	c := dial(t, addr)
	if got := c.do("XCLIENT ADDR=203.0.113.9", "554"); got != "554 5.7.1 mx.test Access denied" {
		t.Fatalf("got %q", got)
	}
	c.expectClosed()
	if got := srv.Stats().Refusals(RefusedDenied); got != 1 {
		t.Fatalf("denied %d, want 1", got)
	}
}

// Checking an XCLIENT line allocates once, for the ADDR text handed to
// netip.ParseAddr, once the session's buffer has grown to the line;
// applying it adds the new address's text and the login. A bounded cost
// per XCLIENT, which a relay sends once per client.
func TestXclientParseAllocs(t *testing.T) {
	s := &session{}
	line := []byte("XCLIENT ADDR=IPV6:2001:db8::1 PORT=25 NAME=relay.example HELO=mx+2Eexample LOGIN=alice PROTO=ESMTP")
	var u xclientUpdate
	if n := testing.AllocsPerRun(100, func() {
		_ = codec.ParseCommand(line, &s.cmd)
		if err := s.parseXclient(&u); err != nil {
			t.Fatal(err)
		}
	}); n > 1 {
		t.Fatalf("%v allocations per XCLIENT, want at most 1", n)
	}
	if u.addr != netip.MustParseAddr("2001:db8::1") || u.port != 25 || string(u.helo) != "mx.example" || string(u.login) != "alice" {
		t.Fatalf("parsed %+v", u)
	}
}

// TestXclientHeloThenSTARTTLS guards the reset at STARTTLS: a HELO= from
// XCLIENT is forgotten with the rest of what was said in the clear (RFC
// 3207 §4.2), so the relay's EHLO after the handshake names the client
// again and MAIL is accepted, not 503 for ever.
func TestXclientHeloThenSTARTTLS(t *testing.T) {
	ts := startTLSServer(t, Config{XclientFrom: loopbackXclient()})
	c := dial(t, ts.plain)
	c.do("XCLIENT ADDR=192.0.2.7 HELO=mx.example", "220 ")
	c.do("EHLO relay.example", "250 ")
	c.do("STARTTLS", "220 2.0.0")
	c.startTLS(ts.clientTLS())
	c.do("EHLO relay.example", "250 ")
	runDialog(t, c, xclientMessage)
	if m := ts.rec.Messages()[0]; m.Helo != "relay.example" {
		t.Fatalf("helo %q, want relay.example", m.Helo)
	}
}

// TestXclientLoginAuthSessionsGauge guards Stats.TLS.AuthSessions: an
// XCLIENT LOGIN= over TLS counts as AUTH does, an XCLIENT without LOGIN=
// takes it back, and a closed session leaves the gauge where it found it.
func TestXclientLoginAuthSessionsGauge(t *testing.T) {
	ts := startTLSServer(t, Config{XclientFrom: loopbackXclient()})
	gauge := &ts.srv.Stats().TLS.AuthSessions
	check := func(when string, want int64) {
		t.Helper()
		if n := gauge.Load(); n != want {
			t.Fatalf("AuthSessions %s: %d, want %d", when, n, want)
		}
	}
	closed := func(c *client) {
		t.Helper()
		c.do("QUIT", "221 ")
		c.expectClosed()
		waitFor(t, func() bool { return ts.srv.Stats().Open.Load() == 0 })
	}

	c := dialStartTLS(t, ts.plain, ts.clientTLS())
	c.do("EHLO relay.example", "250 ")
	c.do("XCLIENT LOGIN=bob", "220 ")
	check("after XCLIENT LOGIN=", 1)
	c.do("XCLIENT LOGIN=carol", "220 ")
	check("after a second XCLIENT LOGIN=", 1)
	closed(c)
	check("after that session closed", 0)

	c = dialStartTLS(t, ts.plain, ts.clientTLS())
	c.do("EHLO relay.example", "250 ")
	c.do("AUTH PLAIN "+plainB64("", "alice", alicePass), "235 2.7.0")
	check("after AUTH", 1)
	c.do("XCLIENT ADDR=192.0.2.9", "220 ")
	check("after XCLIENT without LOGIN=", 0)
	closed(c)
	check("after that session closed", 0)

	// In the clear LOGIN= is not counted, and STARTTLS forgets it.
	c = dial(t, ts.plain)
	c.do("XCLIENT LOGIN=bob", "220 ")
	c.do("EHLO relay.example", "250 ")
	c.do("STARTTLS", "220 2.0.0")
	c.startTLS(ts.clientTLS())
	check("after XCLIENT LOGIN= in the clear and STARTTLS", 0)
	closed(c)
	check("after that session closed", 0)
}
