package engine

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// hostileXclientCases: XCLIENT names the client, so whoever may send it
// may claim any address. Every case checks that a refused XCLIENT
// changed nothing: the attacking connection's message still comes from
// 127.0.0.1.
func hostileXclientCases() []hostileCase {
	own := func() *Config {
		return &Config{MaxMessageSize: hostileMaxSize, XclientFrom: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	}
	fromLoopback := func(t *testing.T, msgs []smtptest.Recorded) {
		t.Helper()
		if ip := msgs[0].ClientIP; ip != "127.0.0.1" {
			t.Fatalf("client %q, want 127.0.0.1", ip)
		}
	}
	// 64 KiB of attributes in one line: the decoded values are bounded by
	// the line, and every one of them is checked.
	long := "XCLIENT" + strings.Repeat(" NAME=relay.example", (64<<10-200)/19) + " HELO={id}\r\n"
	wide := own()
	wide.MaxLineLength = 64 << 10
	return []hostileCase{{
		name:  "XCLIENT from a client not in --xclient-from",
		steps: []hostileStep{hostileEHLO("XCLIENT ADDR=192.0.2.7 HELO=forged.example\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n", "550 5.7.0 Error: insufficient authorization", "250 2.1.0", "250 2.1.5", "354"), hs("x\r\n.\r\n", "250 2.0.0")},
		msgs:  1,
		check: fromLoopback,
	}, {
		name:  "XCLIENT pipelined inside a transaction",
		cfg:   own(),
		steps: []hostileStep{hs("EHLO {id}\r\nMAIL FROM:<a@b.test>\r\nXCLIENT ADDR=192.0.2.7\r\nRCPT TO:<c@d.test>\r\nDATA\r\n", "250", "250 2.1.0", "503 5.5.1 Error: MAIL transaction in progress", "250 2.1.5", "354"), hs("x\r\n.\r\n", "250 2.0.0")},
		msgs:  1,
		check: fromLoopback,
	}, {
		name:  "XCLIENT inside a DATA body is data",
		cfg:   own(),
		steps: []hostileStep{hostileTx(), hs("XCLIENT ADDR=192.0.2.7\r\n.\r\n", "250 2.0.0")},
		msgs:  1,
		check: func(t *testing.T, msgs []smtptest.Recorded) {
			fromLoopback(t, msgs)
			hostileOne("XCLIENT ADDR=192.0.2.7\r\n")(t, msgs)
		},
	}, {
		name: "XCLIENT smuggling CRLF or blanks in xtext",
		cfg:  own(),
		steps: []hostileStep{hostileEHLO(
			"XCLIENT LOGIN=a+0D+0AX-Evil:+201\r\nXCLIENT HELO=a+0D+0A.\r\nXCLIENT HELO=a+20b NAME=x\r\nXCLIENT ADDR=192.0.2.7+00\r\nXCLIENT ADDR=192.0.2.7 PORT=99999\r\n"+
				"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n",
			"501 5.5.4 Bad XCLIENT attribute value", "501 5.5.4 Bad XCLIENT attribute value", "501 5.5.4 Bad XCLIENT attribute value",
			"501 5.5.4 Bad XCLIENT attribute value", "501 5.5.4 Bad XCLIENT attribute value", "250 2.1.0", "250 2.1.5", "354"), hs("x\r\n.\r\n", "250 2.0.0")},
		msgs:  1,
		check: fromLoopback,
	}, {
		name:  "XCLIENT line of 64 KiB of attributes",
		cfg:   wide,
		steps: []hostileStep{hs(long, "220"), hs("EHLO relay\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n", "250", "250 2.1.0", "250 2.1.5", "354"), hs("x\r\n.\r\n", "250 2.0.0")},
		msgs:  1,
	}, {
		name: "1,000 pipelined XCLIENTs for different addresses",
		cfg:  own(),
		run:  hostileXclientFlood,
	}}
}

// hostileXclientFlood names 1,000 clients in turn on one connection:
// every one is answered 220, and the per-IP table holds only the last
// (each XCLIENT gives the previous client's count back).
func hostileXclientFlood(t *testing.T, h *hostileServer, id string) {
	var b strings.Builder
	want := make([]string, 0, 1002)
	for i := range 1000 {
		fmt.Fprintf(&b, "XCLIENT ADDR=192.0.%d.%d HELO={id}\r\n", i/250, i%250+1)
		want = append(want, "220")
	}
	b.WriteString("EHLO relay\r\nNOOP\r\n")
	want = append(want, "250", "250 2.0.0")
	c := h.dial(t, true)
	c.steps(t, id, []hostileStep{hs(b.String(), want...)}, false)
	h.srv.perIPMu.Lock()
	n, last := len(h.srv.perIP), h.srv.perIP[netip.MustParseAddr("192.0.3.250")]
	h.srv.perIPMu.Unlock()
	// This connection's client, and the canary's 127.0.0.1 at most.
	if last != 1 || n > 2 {
		t.Fatalf("per-IP table: %d entries, last client counted %d times", n, last)
	}
	c.steps(t, id, []hostileStep{hs("QUIT\r\n", "221 2.0.0")}, false)
}
