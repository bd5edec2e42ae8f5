package engine

import (
	"bytes"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/policy"
)

// countingPolicy allows a fixed number of connections and messages and one
// recipient domain; enough to see that the engine asks at the right time.
type countingPolicy struct {
	deny        netip.Addr
	conns, msgs atomic.Int64
	maxConns    int64
	maxMsgs     int64
	domain      []byte
}

func (p *countingPolicy) ClientAllowed(ip netip.Addr) bool { return ip != p.deny }
func (p *countingPolicy) TakeConnection(netip.Addr, time.Time) bool {
	return p.conns.Add(1) <= p.maxConns
}
func (p *countingPolicy) TakeMessage(netip.Addr, time.Time) bool { return p.msgs.Add(1) <= p.maxMsgs }
func (p *countingPolicy) RecipientAllowed(addr []byte) bool {
	return bytes.HasSuffix(addr, append([]byte("@"), p.domain...))
}

func TestPolicyAnswers(t *testing.T) {
	pol := &countingPolicy{deny: netip.MustParseAddr("127.0.0.9"), maxConns: 2, maxMsgs: 1, domain: []byte("ok.test")}
	srv, addr := startServer(t, Config{Policy: pol})

	denied := dialFrom(t, "127.0.0.9", addr)
	denied.expect("554 5.7.1")
	denied.expectClosed()

	c := dial(t, addr) // connection 1 of 2
	runDialog(t, c, []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test>", "250 2.1.0"},
		{"RCPT TO:<x@other.test>", "550 5.7.1"}, {"RCPT TO:<x@ok.test>", "250 2.1.5"}, {"RSET", "250 "},
		{"MAIL FROM:<a@b.test>", "450 4.7.1"}})
	dial(t, addr) // connection 2 of 2
	over := dialNoGreeting(t, addr)
	over.expect("421 4.7.0")
	over.expectClosed()

	st := srv.Stats()
	if st.Refusals(RefusedDenied) != 1 || st.Refusals(RefusedRate) != 1 || st.MessagesBy(OutcomeRateLimited) != 1 {
		t.Fatalf("denied %d rate %d msg-rate %d", st.Refusals(RefusedDenied), st.Refusals(RefusedRate), st.MessagesBy(OutcomeRateLimited))
	}
}

// The policy package is what production passes in.
var _ ClientPolicy = (*policy.Policy)(nil)
