package engine

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/smtptest"
)

func loopbackProxies() []netip.Prefix { return []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")} }

func TestProxyV1GivesTheRealClient(t *testing.T) {
	rs := &smtptest.Recorder{}
	_, addr := startServer(t, Config{Sink: rs, TrustedProxies: loopbackProxies()})
	c := dialNoGreeting(t, addr)
	c.send("PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\r\n")
	c.expect("220 mx.test ESMTP")
	runDialog(t, c, []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "}, {"hi\r\n.", "250 2.0.0"}})
	m := rs.Messages()[0]
	if m.ClientIP != "192.0.2.7" || !strings.HasPrefix(m.Data, "Received: from c ([192.0.2.7])") {
		t.Fatalf("client %q, header %q", m.ClientIP, m.Data[:60])
	}
}

func TestProxyV2AndHeaderWithClientBytesInOneWrite(t *testing.T) {
	rs := &smtptest.Recorder{}
	_, addr := startServer(t, Config{Sink: rs, TrustedProxies: loopbackProxies()})
	c := dialNoGreeting(t, addr)
	// v2: signature, version 2 / PROXY, TCP over IPv6, 36 address bytes.
	hdr := []byte("\r\n\r\n\x00\r\nQUIT\n\x21\x21\x00\x24")
	src := netip.MustParseAddr("2001:db8::9").As16()
	dst := netip.MustParseAddr("2001:db8::1").As16()
	hdr = append(hdr, src[:]...)
	hdr = append(hdr, dst[:]...)
	hdr = binary.BigEndian.AppendUint16(hdr, 40000)
	hdr = binary.BigEndian.AppendUint16(hdr, 25)
	// A proxy relays whatever the client sent right behind the header.
	c.send(string(hdr) + "EHLO c\r\n")
	c.expect("220 mx.test ESMTP")
	c.expect("250 ")
	runDialog(t, c, []step{{"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "}, {"hi\r\n.", "250 2.0.0"}})
	m := rs.Messages()[0]
	if m.ClientIP != "2001:db8::9" || !strings.Contains(m.Data, "([IPv6:2001:db8::9])") {
		t.Fatalf("client %q, header %q", m.ClientIP, m.Data[:70])
	}
}

func TestProxyMalformedHeaderCloses(t *testing.T) {
	srv, addr := startServer(t, Config{TrustedProxies: loopbackProxies()})
	for _, bad := range []string{
		"EHLO not-a-proxy\r\n",
		"PROXY TCP4 192.0.2.7 127.0.0.1 5555\r\n",
		"PROXY TCP4 300.0.2.7 127.0.0.1 5555 25\r\n",
		"PROXY TCP6 192.0.2.7 127.0.0.1 5555 25\r\n",
	} {
		c := dialNoGreeting(t, addr)
		c.send(bad)
		c.expectClosed()
	}
	if got := srv.Stats().Refusals(RefusedProxy); got != 4 {
		t.Fatalf("proxy refusals %d, want 4", got)
	}
}

func TestProxyHeaderFromUntrustedAddressCloses(t *testing.T) {
	srv, addr := startServer(t, Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}})
	c := dialFrom(t, "127.0.0.1", addr)
	c.expect("220 ")
	c.send("PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\r\n")
	c.expect("421 4.7.0")
	c.expectClosed()
	if got := srv.Stats().Refusals(RefusedProxy); got != 1 {
		t.Fatalf("proxy refusals %d, want 1", got)
	}
}

func TestProxyPerIPLimitAppliesToTheRealClient(t *testing.T) {
	_, addr := startServer(t, Config{TrustedProxies: loopbackProxies(), MaxConnsPerIP: 1})
	// Two connections from the same proxy address, for two clients: fine.
	a := dialNoGreeting(t, addr)
	a.send("PROXY TCP4 192.0.2.1 127.0.0.1 1000 25\r\n")
	a.expect("220 ")
	b := dialNoGreeting(t, addr)
	b.send("PROXY TCP4 192.0.2.2 127.0.0.1 1000 25\r\n")
	b.expect("220 ")
	// A second connection for the first client: its limit.
	c := dialNoGreeting(t, addr)
	c.send("PROXY TCP4 192.0.2.1 127.0.0.1 1001 25\r\n")
	c.expect("421 4.7.0")
	c.expectClosed()
}

func TestProxyHeaderTimeout(t *testing.T) {
	_, addr := startServer(t, Config{TrustedProxies: loopbackProxies(), IdleTimeout: 200 * time.Millisecond})
	c := dialNoGreeting(t, addr)
	c.send("PROXY TCP4 ")
	c.expectClosed()
}
