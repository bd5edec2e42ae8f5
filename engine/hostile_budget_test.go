package engine

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// hostileBudgetCases: sessions that would escape a server-wide bound.
func hostileBudgetCases() []hostileCase {
	lb := []netip.Prefix{netip.MustParsePrefix(hostileLB + "/32")}
	return []hostileCase{{
		name: "PROXY LOCAL and UNKNOWN beyond the per-IP limit of the balancer",
		cfg:  &Config{MaxMessageSize: hostileMaxSize, TrustedProxies: lb, MaxConnsPerIP: 2},
		run:  hostileProxyLocal,
		msgs: 1,
	}, {
		name: "clients holding pipelined input past MaxSessionBuffers",
		cfg:  &Config{MaxMessageSize: hostileMaxSize, MaxSessionBuffers: hostileBudget},
		run:  hostileBufferBudget,
		msgs: hostileAttackers,
	}}
}

const (
	hostileBudget    = 256 << 10 // MaxSessionBuffers of the budget case
	hostileAttackers = 8
	// hostileBacklog is what each attacker pipelines behind its held
	// message: under MaxPipelineBacklog (64 KiB), so that only the
	// budget stops it, and past bufferShare.
	hostileBacklog = 48 << 10
	// hostileFit attackers hold their backlog within the budget: 5 × 48
	// KiB (and their small reply arrays) is under 256 KiB, a sixth is not.
	hostileFit = 5
)

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

// hostileBufferBudget: clients that pipeline input behind a message the
// sink holds (RFC 2920 §3.1: it waits in gnet's buffer, replies stay in
// order) each keep 48 KiB that no per-connection bound stops. Once their
// total would pass MaxSessionBuffers, the next one to grow past its
// share gets exactly 421 4.7.0 and is closed, and the total charged never
// exceeds the budget. A client within its share (the canary) is served
// meanwhile. When the held messages complete, the sessions over their
// share take no commands while the budget is spent, and take them again
// once others gave their buffers back.
func hostileBufferBudget(t *testing.T, h *hostileServer, id string) {
	const refusal = "421 4.7.0 mx.test Too much unread data buffered, try again later"
	st := h.srv.Stats()
	h.sink.Hold(id)
	defer h.sink.Release(id)
	pipelined := hostileStep{send: strings.Repeat("NOOP\r\n", hostileBacklog/6), chunk: 8 << 10, pause: 2 * time.Millisecond}
	var held []*hostileConn
	for i := range hostileAttackers {
		c := h.dial(t, true)
		c.steps(t, id, []hostileStep{hostileTx(), {send: "held\r\n.\r\n"}}, false)
		hostileWaitFor(t, "message submitted", func() bool { return len(h.sink.ByHelo(id)) == i+1 })
		before := st.SessionBuffers.Load()
		if i < hostileFit {
			if err := hostileWrite(c.conn, pipelined, id); err != nil {
				t.Fatalf("attacker %d: %v", i, err)
			}
			hostileWaitFor(t, "backlog charged", func() bool { return st.SessionBuffers.Load() >= before+hostileBacklog })
			held = append(held, c)
		} else {
			go func() { _ = hostileWrite(c.conn, pipelined, id) }()
			if lines, err := c.reply(); err != nil || len(lines) != 1 || lines[0] != refusal {
				t.Fatalf("attacker %d past the budget (%d charged): got %q, %v; want %q", i, before, lines, err, refusal)
			}
			if err := c.closed(); err != nil {
				t.Fatalf("attacker %d: %v", i, err)
			}
		}
		if n := st.SessionBuffers.Load(); n > hostileBudget {
			t.Fatalf("after attacker %d: %d octets charged, budget %d", i, n, hostileBudget)
		}
	}
	if n := st.BufferCloses.Load(); n != hostileAttackers-hostileFit {
		t.Fatalf("%d sessions closed for the budget, want %d", n, hostileAttackers-hostileFit)
	}
	hostileCanary(t, h, "spent."+id)

	// The verdicts come; with the budget spent, the sessions over their
	// share answer them but take none of the NOOPs behind them.
	h.sink.Release(id)
	for i, c := range held {
		c.steps(t, id, []hostileStep{{want: []string{"250 2.0.0 OK queued as"}}}, false)
		timeout := c.Timeout
		c.Timeout = 200 * time.Millisecond
		if r, err := c.Read(); err == nil {
			t.Fatalf("attacker %d took a command while the budget is spent: %q", i, r.String())
		}
		c.Timeout = timeout
	}
	// Two leave: the others are within the budget again, less a pass of
	// replies, and answer every NOOP.
	for _, c := range held[:2] {
		c.conn.Close()
	}
	for _, c := range held[2:] {
		c.steps(t, id, []hostileStep{{want: hostileRep(hostileBacklog/6, "250 2.0.0 OK")}, hs("QUIT\r\n", "221 2.0.0")}, false)
		if err := c.closed(); err != nil {
			t.Fatal(err)
		}
	}
	hostileWaitFor(t, "buffers given back", func() bool { return st.Open.Load() == 0 && st.SessionBuffers.Load() == 0 })
}
