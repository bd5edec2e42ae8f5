package e2e

import (
	"github.com/lsmtp/lsmtp/broker"
	"net/netip"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/engine"
	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// TestXclientReachesTheContract: a relay in --xclient-from names its
// client with XCLIENT; the message in RabbitMQ carries that client's
// address, port and HELO, not the relay's.
func TestXclientReachesTheContract(t *testing.T) {
	bc := brokerConfig(t, rabbittest.URL)
	bc.Envelope = broker.EnvelopeBoth // the client facts asserted below are the smtp-* headers
	s := startStack(t, bc, true, func(c *engine.Config) {
		c.XclientFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	})
	c, greet, err := smtptest.Dial(s.addr, ioTimeout)
	if err != nil {
		t.Fatalf("connect: %v (greeting %q)", err, greet.String())
	}
	t.Cleanup(func() { c.Close() })
	for _, step := range []struct {
		line string
		code int
	}{
		{"EHLO relay.example", 250},
		{"XCLIENT ADDR=IPV6:2001:db8::25 PORT=41000 NAME=client.example HELO=client.example LOGIN=alice", 220},
		{"EHLO relay.example", 250},
	} {
		if _, err := c.Expect(step.line, step.code); err != nil {
			t.Fatal(err)
		}
	}
	id := sendUntil250(t, c, "", 1, 0)
	got := consume(t, bc.Queue, 1, 300*time.Millisecond, 5*time.Second)
	if len(got) != 1 || got[0].MessageId != id {
		t.Fatalf("queue holds %v, want %s", keys(got), id)
	}
	h := got[0].Headers
	if h["smtp-client-ip"] != "2001:db8::25" || h["smtp-client-port"] != int32(41000) || h["smtp-helo"] != "client.example" {
		t.Fatalf("headers: smtp-client-ip %v, smtp-client-port %v, smtp-helo %v", h["smtp-client-ip"], h["smtp-client-port"], h["smtp-helo"])
	}
}
