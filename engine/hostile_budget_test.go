package engine

import (
	"net/netip"
	"testing"
)

// hostileBudgetCases: sessions that would escape a server-wide bound.
func hostileBudgetCases() []hostileCase {
	lb := []netip.Prefix{netip.MustParsePrefix(hostileLB + "/32")}
	return []hostileCase{{
		name: "PROXY LOCAL and UNKNOWN beyond the per-IP limit of the balancer",
		cfg:  &Config{MaxMessageSize: hostileMaxSize, TrustedProxies: lb, MaxConnsPerIP: 2},
		run:  hostileProxyLocal,
		msgs: 1,
	}}
}

// proxyV2Local is a PROXY v2 header with the LOCAL command (§2.2: the
// balancer's own connection, a health check): no addresses.
const proxyV2Local = "\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"

// hostileProxyLocal: a header that names no client (v1 UNKNOWN, v2
// LOCAL) counts against the balancer's own address, so that its health
// checks and unknown-source connections are bounded by MaxConnsPerIP.
// Two such sessions fill the balancer's limit of 2, and one of them may
// send mail; a third of either kind gets exactly 421 4.7.0 and is closed.
// A named client of the same balancer is counted as itself and still
// served, and a closed LOCAL session gives its place back.
func hostileProxyLocal(t *testing.T, h *hostileServer, id string) {
	const greeting = "220 mx.test ESMTP"
	const refusal = "421 4.7.0 mx.test Too many connections, try again later"
	open := func(header, want string) *client {
		t.Helper()
		c := dialFrom(t, hostileLB, h.addr)
		c.send(header)
		if got := c.reply(); len(got) != 1 || got[0] != want {
			t.Fatalf("after %q: got %q, want %q", header, got, want)
		}
		return c
	}
	a := open("PROXY UNKNOWN\r\n", greeting)
	b := open(proxyV2Local, greeting)
	a.do("EHLO "+id, "250 ")
	a.do("MAIL FROM:<a@b.test>", "250 2.1.0")
	a.do("RCPT TO:<c@d.test>", "250 2.1.5")
	a.do("DATA", "354")
	a.do("through the balancer\r\n.", "250 2.0.0")
	for _, hdr := range []string{"PROXY UNKNOWN\r\n", "PROXY UNKNOWN TCP4 192.0.2.1 192.0.2.2 1 2\r\n", proxyV2Local} {
		c := open(hdr, refusal)
		c.expectClosed()
	}
	if got := h.srv.Stats().Refusals(RefusedPerIP); got != 3 {
		t.Fatalf("per-IP refusals %d, want 3", got)
	}
	named := open("PROXY TCP4 192.0.2.9 192.0.2.25 40000 25\r\n", greeting)
	b.do("QUIT", "221 2.0.0")
	b.expectClosed()
	hostileWaitFor(t, "LOCAL session released", func() bool { return h.srv.Stats().Open.Load() == 2 })
	c := open(proxyV2Local, greeting)
	for _, c := range []*client{a, named, c} {
		c.do("NOOP", "250 2.0.0")
		c.do("QUIT", "221 2.0.0")
		c.expectClosed()
	}
}
