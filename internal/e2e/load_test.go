package e2e

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/broker"
	"github.com/lsmtp/lsmtp/internal/faultproxy"
	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// loadTally is what a load of SMTP clients saw.
type loadTally struct {
	mu        sync.Mutex
	acked     map[string]string // queue ID of every 250 -> the message's token
	ackedAt   map[string]time.Time
	tempfails map[string]int // final 4xx replies, by text
	permfails []string       // final 5xx replies: never for our own trouble
	unknown   int            // body sent, connection lost before its reply
	connErrs  int            // failed connects and sessions
}

func newTally() *loadTally {
	return &loadTally{acked: map[string]string{}, ackedAt: map[string]time.Time{}, tempfails: map[string]int{}}
}

func (l *loadTally) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	var kinds []string
	for k, v := range l.tempfails {
		n += v
		kinds = append(kinds, fmt.Sprintf("%dx %q", v, k))
	}
	sort.Strings(kinds)
	return fmt.Sprintf("250: %d, 4xx: %d %v, 5xx: %d, no reply after the body: %d, connection errors: %d",
		len(l.acked), n, kinds, len(l.permfails), l.unknown, l.connErrs)
}

// loadClient sends messages on one SMTP session after another until ctx
// is done or the deadline passes. A message that gets 4xx, or whose
// connection breaks, is sent again under the same token, as an MTA would;
// a new token follows each 250.
type loadClient struct {
	// dial connects to addr and reads the greeting: smtptest.Dial, or
	// dialFrom for a chosen source address.
	dial  func(addr string, timeout time.Duration) (*smtptest.Conn, smtptest.Reply, error)
	addr  string
	id    int
	tally *loadTally
	// deadline, when set, ends the load before ctx does.
	deadline time.Time
	// sessionLen, when set, ends a session after that many 250s, so that
	// a balancer in front has new connections to place.
	sessionLen int
}

func (l loadClient) run(ctx context.Context) {
	tally := l.tally
	payload := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-.\r\n", 32) // 2 KiB
	seq := 0
	var c *smtptest.Conn
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	drop := func() {
		if c != nil {
			c.Close()
			c = nil
		}
	}
	for ctx.Err() == nil && (l.deadline.IsZero() || time.Now().Before(l.deadline)) {
		if c == nil {
			// A short wait for the greeting: connections accepted while
			// the server stops may get none (see
			// TestNoConnectionLeftHangingAtStop).
			conn, greet, err := l.dial(l.addr, 2*time.Second)
			if err == nil {
				conn.Timeout = ioTimeout
			}
			if err == nil && greet.Code != 220 {
				conn.Close()
				err = fmt.Errorf("greeting %q", greet.String())
			}
			if err == nil {
				if _, err = conn.Expect("EHLO load.example", 250); err != nil {
					conn.Close()
				}
			}
			if err != nil {
				tally.mu.Lock()
				tally.connErrs++
				tally.mu.Unlock()
				pause(ctx, 20*time.Millisecond)
				continue
			}
			c = conn
		}
		token := fmt.Sprintf("c%d-%d", l.id, seq)
		content := []byte("X-Load-Token: " + token + "\r\nSubject: load\r\n\r\n" + payload)
		// MAIL, RCPT and DATA pipelined (RFC 2920).
		o := c.Transact("load@example.org", []string{"rcpt@example.com"}, content, true)
		final, bodySent, err := o.Final, o.BodySent, o.Err
		now := time.Now()
		tally.mu.Lock()
		switch {
		case err != nil && bodySent:
			tally.unknown++
		case err != nil:
			tally.connErrs++
		case final.Code == 250:
			if qid, ok := final.QueueID(); ok {
				tally.acked[qid] = token
				tally.ackedAt[qid] = now
			} else {
				tally.permfails = append(tally.permfails, "250 without a queue ID: "+final.String())
			}
			seq++
		case final.Code >= 400 && final.Code < 500:
			tally.tempfails[final.Last()]++
		default:
			tally.permfails = append(tally.permfails, final.String())
		}
		tally.mu.Unlock()
		if err != nil || final.Code == 421 {
			drop()
		}
		if err != nil || final.Code != 250 {
			pause(ctx, 10*time.Millisecond) // a client backing off
		}
		if c != nil && l.sessionLen > 0 && final.Code == 250 && seq%l.sessionLen == 0 {
			c.Cmd("QUIT")
			drop()
		}
	}
	if c != nil {
		c.Cmd("QUIT")
	}
}

// waitAcked waits until the clients have had want 250s, and fails the
// test when that takes more than 10 s.
func waitAcked(t *testing.T, tally *loadTally, want int) {
	t.Helper()
	for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		tally.mu.Lock()
		n := len(tally.acked)
		tally.mu.Unlock()
		if n >= want {
			return
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("only %d messages acknowledged in 10 s", n)
		}
	}
}

func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// checkStored consumes the queue and matches it against the 250s: every
// one must be there (lost is a failure); duplicates are counted and
// logged: the same queue ID more than once, and the same token under
// several queue IDs (a message stored although answered 4xx, then sent
// again by its client).
func checkStored(t *testing.T, queue string, tally *loadTally) {
	t.Helper()
	tally.mu.Lock()
	acked := tally.acked
	tally.mu.Unlock()
	byID := map[string]int{}
	tokens := map[string]map[string]bool{}
	for _, d := range consume(t, queue, len(acked), time.Second, 60*time.Second) {
		byID[d.MessageId]++
		tok := token(d)
		if tokens[tok] == nil {
			tokens[tok] = map[string]bool{}
		}
		tokens[tok][d.MessageId] = true
	}
	lost, sameID, resent, storedUnacked := 0, 0, 0, 0
	for id := range acked {
		if byID[id] == 0 {
			lost++
			if lost <= 10 {
				t.Errorf("message %s (token %s) got 250 and is not in the queue", id, acked[id])
			}
		}
	}
	for id, n := range byID {
		sameID += n - 1
		if _, ok := acked[id]; !ok {
			storedUnacked++
		}
	}
	for _, ids := range tokens {
		resent += len(ids) - 1
	}
	t.Logf("queue: %d messages, %d distinct queue IDs; acknowledged %d, lost %d; duplicates: %d of the same queue ID, %d resent after a 4xx that had been stored (%d stored without a 250)",
		sumValues(byID), len(byID), len(acked), lost, sameID, resent, storedUnacked)
	if lost > 0 {
		t.Errorf("%d messages acknowledged with 250 are not in the queue", lost)
	}
}

func token(d amqp.Delivery) string {
	_, rest, _ := splitReceived(afterTrace(d.Body))
	line, _, _ := strings.Cut(string(rest), "\r\n")
	return strings.TrimPrefix(line, "X-Load-Token: ")
}

func sumValues(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// TestCutUnderLoad: concurrent SMTP clients send for a while as the fault
// proxy cuts the broker connection every 300 ms. Every message that got
// 250 must be in the queue; 4xx answers are allowed (the clients send
// those messages again), 5xx are not.
func TestCutUnderLoad(t *testing.T) {
	p := newProxy(t)
	bc := brokerConfig(t, proxyURL(p))
	bc.Logger = rabbittest.Logger(t, 100) // hundreds of expected warnings
	s := startStack(t, bc, true)

	const loadTime = 10 * time.Second
	tally, cuts, cutConns := cutLoad(t, s, p, loadTime)
	st := s.brk.Stats()
	t.Logf("%d cuts closed %d connections; broker: %d connects, %d confirmed, %d failed (unconfirmed when the channel went %d, rejected while down %d, publish errors %d, timed out %d)",
		cuts, cutConns, st.Connects, st.Confirmed, st.Failed, st.Lost, st.RejectedDown, st.PublishErrors, st.TimedOut)
	checkCutLoad(t, tally, st, cuts, loadTime)
	checkStored(t, bc.Queue, tally)
}

// cutLoad runs 8 SMTP clients against s for loadTime while p cuts the
// broker connection every 300 ms, then stops s. It returns what the
// clients saw, the number of cuts and the connections they closed.
func cutLoad(t *testing.T, s *stack, p *faultproxy.Proxy, loadTime time.Duration) (tally *loadTally, cuts, cutConns int) {
	t.Helper()
	const (
		clients  = 8
		cutEvery = 300 * time.Millisecond
	)
	tally = newTally()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	deadline := time.Now().Add(loadTime)
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loadClient{dial: smtptest.Dial, addr: s.addr, id: i, tally: tally, deadline: deadline}.run(ctx)
		}()
	}
	for time.Now().Add(cutEvery).Before(deadline) {
		time.Sleep(cutEvery)
		cutConns += p.Cut()
		cuts++
	}
	wg.Wait()
	if err := s.stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	return tally, cuts, cutConns
}

// checkCutLoad logs what the clients of a cutLoad saw and fails t on a
// 5xx, on fewer than 100 messages acknowledged in loadTime, and on fewer
// than 10 broker connects over the cuts.
func checkCutLoad(t *testing.T, tally *loadTally, st broker.Stats, cuts int, loadTime time.Duration) {
	t.Helper()
	t.Logf("clients: %s", tally)
	if len(tally.permfails) > 0 {
		t.Errorf("5xx for our own trouble: %v", tally.permfails[:min(len(tally.permfails), 5)])
	}
	if len(tally.acked) < 100 {
		t.Errorf("only %d messages acknowledged in %s", len(tally.acked), loadTime)
	}
	if st.Connects < 10 {
		t.Errorf("the broker connected %d times during %d cuts", st.Connects, cuts)
	}
}

// TestShutdownDrains: clients keep sending while the server shuts down
// as cmd/lsmtp does (engine.Shutdown, then broker.Close). RabbitMQ's
// confirms are held back (stalled proxy) when the shutdown begins, so
// that transactions are certainly in flight. Every message whose body
// was sent gets 250 or 4xx (none is left without a reply), and every
// 250 is in the queue.
func TestShutdownDrains(t *testing.T) {
	p := newProxy(t)
	bc := brokerConfig(t, proxyURL(p))
	s := startStack(t, bc, true)

	const clients = 16
	tally := newTally()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	deadline := time.Now().Add(20 * time.Second)
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loadClient{dial: smtptest.Dial, addr: s.addr, id: i, tally: tally, deadline: deadline}.run(ctx)
		}()
	}
	waitAcked(t, tally, 200)
	p.Stall()
	time.Sleep(200 * time.Millisecond) // every client now waits for a confirm
	stallStart := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- s.stop(10 * time.Second) }()
	time.Sleep(300 * time.Millisecond)
	p.Resume()
	if err := <-stopped; err != nil {
		t.Errorf("shutdown did not drain in time: %v", err)
	}
	// Sessions are closed; clients now fail to connect until cancelled.
	cancel()
	wg.Wait()

	tally.mu.Lock()
	drained := 0
	for _, at := range tally.ackedAt {
		if at.After(stallStart) {
			drained++
		}
	}
	tally.mu.Unlock()
	t.Logf("clients: %s; 250s answered after the shutdown began: %d", tally, drained)
	if tally.unknown > 0 {
		t.Errorf("%d messages sent in full got no reply before the connection closed", tally.unknown)
	}
	if len(tally.permfails) > 0 {
		t.Errorf("5xx during shutdown: %v", tally.permfails[:min(len(tally.permfails), 5)])
	}
	if drained == 0 {
		t.Error("no transaction was in flight when the shutdown began: the test proves nothing")
	}
	checkStored(t, bc.Queue, tally)
	if errors.Is(ctx.Err(), context.Canceled) && s.srv.Stats().Open.Load() != 0 {
		t.Errorf("%d connections still open after shutdown", s.srv.Stats().Open.Load())
	}
}

// TestShutdownDeadline: when RabbitMQ does not confirm before the
// shutdown deadline, the sessions still waiting are answered 421 4.3.2
// (a 4xx: their clients send the messages again), not dropped, and the
// broker's Close then fails what it still holds. No message is answered
// 250 after the confirms stopped coming.
func TestShutdownDeadline(t *testing.T) {
	p := newProxy(t)
	bc := brokerConfig(t, proxyURL(p))
	bc.Logger = rabbittest.Logger(t, 100) // the stalled broker makes expected noise
	s := startStack(t, bc, true)

	const clients = 8
	tally := newTally()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loadClient{dial: smtptest.Dial, addr: s.addr, id: i, tally: tally, deadline: time.Now().Add(20 * time.Second)}.run(ctx)
		}()
	}
	waitAcked(t, tally, 50)
	p.Stall()
	time.Sleep(200 * time.Millisecond)
	stallStart := time.Now()
	// Shut down as cmd/lsmtp does, with a deadline each for the engine
	// and the broker that the held-back confirms make both miss.
	s.stopOnce.Do(func() {
		shutdownCtx, cancelShutdown := context.WithTimeout(context.Background(), time.Second)
		defer cancelShutdown()
		begin := time.Now()
		if err := s.srv.Shutdown(shutdownCtx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown with confirms held back: %v, want the deadline error", err)
		}
		t.Logf("engine shutdown took %s", time.Since(begin).Round(time.Millisecond))
		closeCtx, cancelClose := context.WithTimeout(context.Background(), time.Second)
		defer cancelClose()
		begin = time.Now()
		if err := s.brk.Close(closeCtx); err == nil {
			t.Error("broker Close succeeded although its confirms were held back")
		}
		t.Logf("broker close took %s", time.Since(begin).Round(time.Millisecond))
		select {
		case <-s.served:
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return 5 s after Shutdown")
		}
	})
	begin := time.Now()
	cancel()
	wg.Wait()
	t.Logf("clients ended %s after the stack stopped", time.Since(begin).Round(time.Millisecond))
	p.Resume()

	tally.mu.Lock()
	late := 0
	for _, at := range tally.ackedAt {
		if at.After(stallStart) {
			late++
		}
	}
	shutdownReplies := tally.tempfails["421 4.3.2 "+serverName+" Service shutting down, try again later"]
	tally.mu.Unlock()
	t.Logf("clients: %s", tally)
	if late > 0 {
		t.Errorf("%d messages answered 250 while no confirm could arrive", late)
	}
	if tally.unknown > 0 {
		t.Errorf("%d messages sent in full got no reply before the connection closed", tally.unknown)
	}
	if shutdownReplies < clients {
		t.Errorf("%d sessions answered 421 4.3.2 at the deadline, want all %d that were waiting", shutdownReplies, clients)
	}
	if len(tally.permfails) > 0 {
		t.Errorf("5xx during shutdown: %v", tally.permfails)
	}
	checkStored(t, bc.Queue, tally)
}
