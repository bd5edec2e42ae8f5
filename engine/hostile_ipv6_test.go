package engine

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/lsmtp/lsmtp/internal/policy"
)

// hostileLB is the trusted load balancer of the IPv6 cases. No test can
// connect from 2001:db8::/32 (RFC 3849), so the clients come through it,
// named in a PROXY header; the canary connects from 127.0.0.1, directly.
const hostileLB = "127.0.0.2"

// hostileIPv6Cases: one host of an IPv6 network may use any address of
// its /64 for each connection, so every per-client limit and bucket must
// count the /64 as one client (Config.IPv6Prefix), not each address.
func hostileIPv6Cases() []hostileCase {
	lb := []netip.Prefix{netip.MustParsePrefix(hostileLB + "/32")}
	// Rates that never refill during a case: the burst is all there is.
	connRate, err := policy.New(policy.Config{ConnRate: 0.001, ConnBurst: 2})
	if err != nil {
		return []hostileCase{{name: "IPv6 cases", run: func(t *testing.T, _ *hostileServer, _ string) { t.Fatal(err) }}}
	}
	msgRate, err := policy.New(policy.Config{MsgRate: 0.001, MsgBurst: 1})
	if err != nil {
		return []hostileCase{{name: "IPv6 cases", run: func(t *testing.T, _ *hostileServer, _ string) { t.Fatal(err) }}}
	}
	return []hostileCase{{
		name: "per-IP limit: three addresses of one IPv6 /64",
		cfg:  &Config{MaxMessageSize: hostileMaxSize, TrustedProxies: lb, MaxConnsPerIP: 2},
		run: func(t *testing.T, h *hostileServer, id string) {
			hostileSameSlash64(t, h, "421 4.7.0 mx.test Too many connections, try again later")
		},
	}, {
		name: "connection rate: three addresses of one IPv6 /64",
		cfg:  &Config{MaxMessageSize: hostileMaxSize, TrustedProxies: lb, Policy: connRate},
		run: func(t *testing.T, h *hostileServer, id string) {
			hostileSameSlash64(t, h, "421 4.7.0 mx.test Connection rate limit exceeded, try again later")
		},
	}, {
		name: "message rate: two addresses of one IPv6 /64",
		cfg:  &Config{MaxMessageSize: hostileMaxSize, TrustedProxies: lb, Policy: msgRate},
		run:  hostileMsgRateSlash64,
		msgs: 1,
	}}
}

// hostileVia connects through the load balancer on behalf of client and
// returns the connection after the first reply, which must be want.
func hostileVia(t *testing.T, h *hostileServer, client, want string) *client {
	t.Helper()
	c := dialFrom(t, hostileLB, h.addr)
	c.send(fmt.Sprintf("PROXY TCP6 %s 2001:db8::25 40000 25\r\n", client))
	if got := c.reply(); len(got) != 1 || got[0] != want {
		t.Fatalf("%s: got %q, want %q", client, got, want)
	}
	return c
}

// hostileSameSlash64: two clients of 2001:db8:1:1::/64 use up the limit;
// a third address of that /64 is refused with exactly refusal and closed,
// while the next /64 is served. The first two are still served after.
func hostileSameSlash64(t *testing.T, h *hostileServer, refusal string) {
	const greeting = "220 mx.test ESMTP"
	a := hostileVia(t, h, "2001:db8:1:1::1", greeting)
	b := hostileVia(t, h, "2001:db8:1:1::2", greeting)
	for _, ip := range []string{"2001:db8:1:1::3", "2001:db8:1:1:ffff:ffff:ffff:fffe"} {
		c := hostileVia(t, h, ip, refusal)
		c.expectClosed()
	}
	d := hostileVia(t, h, "2001:db8:1:2::1", greeting)
	for _, c := range []*client{a, b, d} {
		c.do("NOOP", "250 2.0.0")
		c.do("QUIT", "221 2.0.0")
		c.expectClosed()
	}
}

// hostileMsgRateSlash64: the first address of the /64 sends the one
// message of the burst; a second address of the same /64 is refused at
// MAIL with exactly 450 4.7.1 and may go on (RFC 5321 §4.2.5: 4yz is
// transient); the next /64 has its own bucket.
func hostileMsgRateSlash64(t *testing.T, h *hostileServer, id string) {
	const greeting = "220 mx.test ESMTP"
	a := hostileVia(t, h, "2001:db8:1:1::1", greeting)
	a.do("EHLO "+id, "250 ")
	a.do("MAIL FROM:<a@b.test>", "250 2.1.0")
	a.do("RCPT TO:<c@d.test>", "250 2.1.5")
	a.do("DATA", "354")
	a.do("first\r\n.", "250 2.0.0")
	b := hostileVia(t, h, "2001:db8:1:1::2", greeting)
	b.do("EHLO other."+id, "250 ")
	if got := b.do("MAIL FROM:<a@b.test>", "450"); got != "450 4.7.1 Message rate limit exceeded, try again later" {
		t.Fatalf("second address of the /64: MAIL got %q", got)
	}
	b.do("NOOP", "250 2.0.0")
	c := hostileVia(t, h, "2001:db8:1:2::1", greeting)
	c.do("EHLO next."+id, "250 ")
	c.do("MAIL FROM:<a@b.test>", "250 2.1.0")
	c.do("RSET", "250 2.0.0")
	for _, c := range []*client{a, b, c} {
		c.do("QUIT", "221 2.0.0")
		c.expectClosed()
	}
}
