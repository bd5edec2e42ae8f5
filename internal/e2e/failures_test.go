package e2e

import (
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/broker"
	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// The replies the message contract promises for the broker's trouble.
const (
	replyUnavailable = "451 4.3.0 Temporary failure storing the message, try again later"
	replyUnroutable  = "451 4.3.5 Message not routable to a queue, try again later"
)

var testContent = []byte("Subject: test\r\n\r\nbody\r\n")

// expectFinal sends one message on c and requires the exact final reply.
func expectFinal(t *testing.T, c *smtptest.Conn, want string) {
	t.Helper()
	r, err := c.Send("a@example.org", []string{"b@example.com"}, testContent)
	if err != nil {
		t.Fatal(err)
	}
	if r.Last() != want {
		t.Fatalf("final reply %q, want %q", r.String(), want)
	}
}

// sendUntil250 sends messages on c until one gets 250, at most tries
// times, pause apart. Every other final reply must be exactly
// wantMeanwhile. It returns the queue ID.
func sendUntil250(t *testing.T, c *smtptest.Conn, wantMeanwhile string, tries int, pause time.Duration) string {
	t.Helper()
	for i := 0; i < tries; i++ {
		r, err := c.Send("a@example.org", []string{"b@example.com"}, testContent)
		if err != nil {
			t.Fatal(err)
		}
		if id, ok := r.QueueID(); ok {
			t.Logf("250 after %d tempfails", i)
			return id
		}
		if r.Last() != wantMeanwhile {
			t.Fatalf("attempt %d: final reply %q, want 250 or %q", i, r.String(), wantMeanwhile)
		}
		time.Sleep(pause)
	}
	t.Fatalf("no 250 in %d attempts %s apart", tries, pause)
	return ""
}

// expectFinalAfter is expectFinal, and the reply must not come before
// at least.
func expectFinalAfter(t *testing.T, c *smtptest.Conn, want string, atLeast time.Duration) {
	t.Helper()
	start := time.Now()
	expectFinal(t, c, want)
	if took := time.Since(start); took < atLeast {
		t.Fatalf("%q after %s, before the retry window of %s ended", want, took, atLeast)
	}
}

// TestBrokerClosedPort: with nothing listening at the broker's address
// every message is answered exactly 451 4.3.0, never 5xx, once its
// retry window is spent, and the session stays usable.
func TestBrokerClosedPort(t *testing.T) {
	bc := brokerConfig(t, "amqp://guest:guest@"+closedPort(t)+"/")
	bc.Logger = rabbittest.Logger(t, 100) // the connect errors are expected; keep the log quiet
	// The message waits up to the window now (max of window and confirm timeout), not 451 at once.
	bc.PublishRetryWindow, bc.ConfirmTimeout = 500*time.Millisecond, 300*time.Millisecond
	s := startStack(t, bc, false)
	c := s.session(t, "client.example", true)
	for i := 0; i < 3; i++ {
		expectFinalAfter(t, c, replyUnavailable, bc.PublishRetryWindow)
	}
	if _, err := c.Expect("NOOP", 250); err != nil {
		t.Fatal(err)
	}
}

// TestBrokerDownThenUp: RabbitMQ unreachable (the proxy refuses
// connections) for longer than the retry window gives 451 4.3.0 once
// the window is spent; once it is reachable again mail flows on the same
// SMTP session without any restart; down again for less than the
// window, the client waits and gets 250. Every 250 is in the queue.
func TestBrokerDownThenUp(t *testing.T) {
	p := newProxy(t)
	p.Down()
	bc := brokerConfig(t, proxyURL(p))
	// Outages shorter than the window now cost the client time, not a 451.
	bc.PublishRetryWindow, bc.ConfirmTimeout = time.Second, 500*time.Millisecond
	s := startStack(t, bc, false)
	c := s.session(t, "client.example", true)

	expectFinalAfter(t, c, replyUnavailable, bc.PublishRetryWindow)
	if err := p.Up(); err != nil {
		t.Fatal(err)
	}
	first := sendUntil250(t, c, replyUnavailable, 100, 50*time.Millisecond)

	p.Down()
	// The proxy closed both sides before Down returned: nothing sent from
	// now on is confirmed before it is up again, 300 ms later.
	up := make(chan error, 1)
	time.AfterFunc(300*time.Millisecond, func() { up <- p.Up() })
	r, err := c.Send("a@example.org", []string{"b@example.com"}, testContent)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-up; err != nil {
		t.Fatal(err)
	}
	second, ok := r.QueueID()
	if !ok {
		t.Fatalf("broker down for 300 ms, inside the retry window of %s: final reply %q, want 250", bc.PublishRetryWindow, r.String())
	}

	got := map[string]int{}
	for _, d := range consume(t, bc.Queue, 2, 500*time.Millisecond, 10*time.Second) {
		got[d.MessageId]++
	}
	if got[first] != 1 || got[second] != 1 || len(got) != 2 {
		t.Errorf("queue holds %v, want %s and %s once each", got, first, second)
	}
	if st := s.brk.Stats(); st.Connects < 2 {
		t.Errorf("broker connected %d times, want at least 2", st.Connects)
	}
}

// TestUnroutable: with Declare off and an exchange that has no queue
// bound for the routing key, RabbitMQ returns the message (mandatory
// publish) and the client gets 451 4.3.5; once a queue is bound, the
// same session gets 250.
func TestUnroutable(t *testing.T) {
	bc := brokerConfig(t, rabbittest.URL)
	bc.Declare = false
	ch := rabbittest.AdminChannel(t)
	if err := ch.ExchangeDeclare(bc.Exchange, "topic", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	s := startStack(t, bc, true)
	c := s.session(t, "client.example", true)
	expectFinal(t, c, replyUnroutable)
	expectFinal(t, c, replyUnroutable)

	if _, err := ch.QueueDeclare(bc.Queue, true, false, false, false, amqp.Table{"x-queue-type": "classic"}); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(bc.Queue, bc.RoutingKey, bc.Exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	id := sendUntil250(t, c, replyUnroutable, 1, 0)
	got := consume(t, bc.Queue, 1, 300*time.Millisecond, 5*time.Second)
	if len(got) != 1 || got[0].MessageId != id {
		t.Errorf("queue holds %v, want only %s", keys(got), id)
	}
	if st := s.brk.Stats(); st.Returned != 2 {
		t.Errorf("broker counted %d returned publishes, want 2", st.Returned)
	}
}

// TestMissingExchange: with Declare off and no exchange at all, RabbitMQ
// closes the channel (404) and the client gets 451, never 5xx; once the
// exchange and a binding exist, mail flows again.
func TestMissingExchange(t *testing.T) {
	bc := brokerConfig(t, rabbittest.URL)
	bc.Declare = false
	bc.Logger = rabbittest.Logger(t, 100) // channel failures are expected here
	bc.PublishRetryWindow = 0             // asserts the immediate 451; with a window the message waits for the exchange
	s := startStack(t, bc, true)
	c := s.session(t, "client.example", true)
	expectFinal(t, c, replyUnavailable)

	ch := rabbittest.AdminChannel(t)
	if err := ch.ExchangeDeclare(bc.Exchange, "topic", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(bc.Queue, true, false, false, false, amqp.Table{"x-queue-type": "classic"}); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(bc.Queue, bc.RoutingKey, bc.Exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	// The workers reopen their channels after a backoff.
	id := sendUntil250(t, c, replyUnavailable, 100, 50*time.Millisecond)
	got := consume(t, bc.Queue, 1, 300*time.Millisecond, 5*time.Second)
	if len(got) != 1 || got[0].MessageId != id {
		t.Errorf("queue holds %v, want only %s", keys(got), id)
	}
}

// TestQueueFullNack: a classic queue with x-max-length 1 and x-overflow
// reject-publish takes the first message (250) and NACKs the second,
// which the client gets as 451 4.3.0. After the queue is drained, the
// same session gets 250 again.
func TestQueueFullNack(t *testing.T) {
	bc := brokerConfig(t, rabbittest.URL)
	bc.QueueType = broker.QueueClassic
	bc.MaxLength = 1
	bc.Overflow = "reject-publish"
	bc.PublishRetryWindow = 0 // asserts the NACK's immediate 451; broker.TestNackRetried has the window
	s := startStack(t, bc, true)
	c := s.session(t, "client.example", true)

	first := sendUntil250(t, c, "", 1, 0)
	expectFinal(t, c, replyUnavailable)
	if st := s.brk.Stats(); st.Nacked != 1 {
		t.Errorf("broker counted %d NACKs, want 1", st.Nacked)
	}
	got := consume(t, bc.Queue, 1, 300*time.Millisecond, 5*time.Second)
	if len(got) != 1 || got[0].MessageId != first {
		t.Fatalf("queue holds %v, want only %s", keys(got), first)
	}
	third := sendUntil250(t, c, "", 1, 0)
	got = consume(t, bc.Queue, 1, 300*time.Millisecond, 5*time.Second)
	if len(got) != 1 || got[0].MessageId != third {
		t.Errorf("queue holds %v, want only %s", keys(got), third)
	}
}
