package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// ledger records what the load's sessions were told: the queue ID of
// every 250 with the message token it acknowledged and when, and every
// other outcome.
type ledger struct {
	mu        sync.Mutex
	acked     map[string]string // queue ID -> token
	ackTimes  []time.Time       // when each 250 arrived
	latencies []time.Duration   // end of body to 250
	tempfails map[string]int    // final 4xx by code and enhanced code
	firstTemp time.Time         // when the first and the last 4xx came
	lastTemp  time.Time
	permfails map[string]int // final 5xx: never for lsmtp's own trouble
	noReply   int            // body sent, connection lost before the reply
	connErrs  int            // connect, greeting, EHLO or command failures
	problems  []string       // impossible events (a queue ID answered twice)
	attempts  atomic.Int64
}

func newLedger() *ledger {
	return &ledger{acked: map[string]string{}, tempfails: map[string]int{}, permfails: map[string]int{}}
}

func (l *ledger) ack(id, token string, at time.Time, latency time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if prev, dup := l.acked[id]; dup {
		l.problems = append(l.problems, fmt.Sprintf("queue ID %s answered 250 twice (tokens %s, %s)", id, prev, token))
		return
	}
	l.acked[id] = token
	l.ackTimes = append(l.ackTimes, at)
	l.latencies = append(l.latencies, latency)
}

func (l *ledger) tempfailed() int {
	n := 0
	for _, v := range l.tempfails {
		n += v
	}
	return n
}

// longestGap is the longest time without a 250 from 'from' on, and when
// that gap ended: how long senders waited for the next 250 after a
// fault began.
func (l *ledger) longestGap(from, to time.Time) (gap time.Duration, resumedAt time.Time) {
	l.mu.Lock()
	times := append([]time.Time(nil), l.ackTimes...)
	l.mu.Unlock()
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	prev := from
	for _, t := range times {
		if t.Before(from) {
			continue
		}
		if d := t.Sub(prev); d > gap {
			gap, resumedAt = d, t
		}
		prev = t
	}
	if d := to.Sub(prev); d > gap {
		gap, resumedAt = d, time.Time{} // never resumed
	}
	return gap, resumedAt
}

// latencyQuantile is the q-quantile of the time from the end of a body to
// its 250.
func (l *ledger) latencyQuantile(q float64) time.Duration {
	l.mu.Lock()
	lat := append([]time.Duration(nil), l.latencies...)
	l.mu.Unlock()
	if len(lat) == 0 {
		return 0
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat[min(len(lat)-1, int(q*float64(len(lat))))]
}

// load is SMTP sessions sending to whatever addr returns, at most rate
// messages per second in all, until stop is closed. A message answered
// 4xx or left without a reply is sent again under the same token, as an
// MTA would.
type load struct {
	sessions int
	rate     float64 // messages per second over all sessions; 0 is as fast as they go
	size     int
	addr     func() string
	ledger   *ledger
	local    func() net.Addr // the client's local address, nil for any
}

func (ld *load) run(ctx context.Context) {
	var wg sync.WaitGroup
	for i := range ld.sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ld.session(ctx, i)
		}()
	}
	wg.Wait()
}

func (ld *load) session(ctx context.Context, id int) {
	var interval time.Duration
	if ld.rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(ld.sessions) / ld.rate)
	}
	next := time.Now()
	seq := 0
	var c *smtptest.Conn
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	fail := func() {
		ld.ledger.mu.Lock()
		ld.ledger.connErrs++
		ld.ledger.mu.Unlock()
		if c != nil {
			c.Close()
			c = nil
		}
		sleep(ctx, 20*time.Millisecond)
	}
	sent := 0
	for ctx.Err() == nil {
		if c == nil {
			var err error
			if c, err = dialClient(ld.addr(), ld.local, fmt.Sprintf("gen%d.cluster.invalid", id)); err != nil {
				c = nil
				fail()
				continue
			}
			sent = 0
		}
		if interval > 0 {
			next = next.Add(interval)
			if d := time.Until(next); d > 0 {
				sleep(ctx, d)
			} else if d < -time.Second {
				next = time.Now() // no burst to make up for a stall
			}
		}
		token := fmt.Sprintf("s%03d-%07d", id, seq)
		ld.ledger.attempts.Add(1)
		r, bodyAt, err := send(c, token, ld.size)
		now := time.Now()
		switch {
		case err != nil && !bodyAt.IsZero():
			ld.ledger.mu.Lock()
			ld.ledger.noReply++
			ld.ledger.mu.Unlock()
			c.Close()
			c = nil
			continue
		case err != nil:
			fail()
			continue
		case r.Code == 250:
			qid, ok := r.QueueID()
			if !ok {
				ld.ledger.mu.Lock()
				ld.ledger.problems = append(ld.ledger.problems, fmt.Sprintf("250 without a queue ID: %q", r.String()))
				ld.ledger.mu.Unlock()
				break
			}
			ld.ledger.ack(qid, token, now, now.Sub(bodyAt))
			seq++
		case r.Code >= 400 && r.Code < 500:
			ld.ledger.mu.Lock()
			ld.ledger.tempfails[r.Class()]++
			if ld.ledger.firstTemp.IsZero() {
				ld.ledger.firstTemp = now
			}
			ld.ledger.lastTemp = now
			ld.ledger.mu.Unlock()
			if r.Code == 421 {
				c.Close() // RFC 5321 §3.8: the server closes
				c = nil
				continue
			}
			sleep(ctx, 10*time.Millisecond)
		default:
			ld.ledger.mu.Lock()
			ld.ledger.permfails[r.Last()]++
			ld.ledger.mu.Unlock()
			sleep(ctx, 10*time.Millisecond)
		}
		if sent++; sent >= 50 {
			c.Cmd("QUIT")
			c.Close()
			c = nil
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// clientTimeout bounds every read and write: longer than any reply lsmtp
// may take (RFC 5321 §4.5.3.2.6 gives the final reply 10 minutes; the
// tests' confirm timeout and retry window are far below).
const clientTimeout = 2 * time.Minute

func dialClient(addr string, local func() net.Addr, helo string) (*smtptest.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	if local != nil {
		d.LocalAddr = local()
	}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c := smtptest.NewConn(nc, clientTimeout)
	if g, err := c.Read(); err != nil || g.Code != 220 {
		nc.Close()
		return nil, fmt.Errorf("greeting %q: %v", g.String(), err)
	}
	if _, err := c.Expect("EHLO "+helo, 250); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// send runs one transaction and returns the reply that decided it and,
// once the body went out, when it did.
func send(c *smtptest.Conn, token string, size int) (smtptest.Reply, time.Time, error) {
	for _, cmd := range []struct {
		line string
		want int
	}{{"MAIL FROM:<load@cluster.invalid>", 250}, {"RCPT TO:<rcpt@lsmtp.invalid>", 250}, {"DATA", 354}} {
		r, err := c.Cmd(cmd.line)
		if err != nil || r.Code != cmd.want {
			return r, time.Time{}, err
		}
	}
	if err := c.Write(body(token, size)); err != nil {
		return smtptest.Reply{}, time.Now(), err
	}
	at := time.Now()
	r, err := c.Read()
	return r, at, err
}

const tokenHeader = "X-Cluster-Token: "

// body is a message of about size octets naming token, ended by CRLF.CRLF;
// no line starts with a dot.
func body(token string, size int) []byte {
	var b bytes.Buffer
	b.WriteString(tokenHeader + token + "\r\nSubject: lsmtp cluster\r\n\r\n")
	const line = "The quick brown fox jumps over the lazy dog 0123456789 ABCDEFGHIJKLMNOPQRSTU\r\n"
	for b.Len()+len(line) <= size {
		b.WriteString(line)
	}
	b.WriteString(".\r\n")
	return b.Bytes()
}

func tokenOf(stored []byte) string {
	i := bytes.Index(stored, []byte(tokenHeader))
	if i < 0 {
		return ""
	}
	rest := stored[i+len(tokenHeader):]
	if j := bytes.IndexByte(rest, '\r'); j >= 0 {
		return string(rest[:j])
	}
	return ""
}

// match is the queue held against the ledger.
type match struct {
	inQueue    int
	lost       []string // queue IDs answered 250 and not in the queue
	duplicates int      // copies beyond the first of one message (same queue ID, or same token under another ID)
	foreign    int
}

// drain consumes queue from url until it holds nothing more (its message
// count read first, then idle without a delivery) and matches it against
// acked (queue ID -> token).
func drain(url, queue string, acked map[string]string, within time.Duration) (match, error) {
	var m match
	conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		return m, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return m, err
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		return m, fmt.Errorf("queue %s: %w", queue, err)
	}
	if err := ch.Qos(2000, 0, false); err != nil {
		return m, err
	}
	dc, err := ch.Consume(queue, "", false, true, false, false, nil)
	if err != nil {
		return m, err
	}
	byID := map[string]int{}
	tokens := map[string]map[string]bool{}
	deadline := time.After(within)
	const idle = 2 * time.Second
loop:
	for {
		select {
		case d, ok := <-dc:
			if !ok {
				return m, errors.New("consumer closed")
			}
			m.inQueue++
			byID[d.MessageId]++
			if tok := tokenOf(d.Body); tok == "" {
				m.foreign++
			} else {
				if tokens[tok] == nil {
					tokens[tok] = map[string]bool{}
				}
				tokens[tok][d.MessageId] = true
			}
			if m.inQueue%1000 == 0 {
				d.Ack(true)
			} else if m.inQueue >= q.Messages {
				d.Ack(true)
			}
		case <-time.After(idle):
			if m.inQueue >= q.Messages {
				break loop
			}
		case <-deadline:
			return m, fmt.Errorf("consumed %d of %d messages within %s", m.inQueue, q.Messages, within)
		}
	}
	for id := range acked {
		if byID[id] == 0 {
			m.lost = append(m.lost, id)
		}
	}
	for _, n := range byID {
		m.duplicates += n - 1
	}
	for _, ids := range tokens {
		m.duplicates += len(ids) - 1
	}
	return m, nil
}
