package broker

import (
	"fmt"
	"os/exec"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// amqpLinkOf is b's current AMQP connection, nil while it has none.
func amqpLinkOf(b *Broker) *amqpLink {
	c, _ := b.currentConn()
	if c == nil {
		return nil
	}
	l, _ := c.link.(*amqpLink)
	return l
}

// queueHolds fails the test unless queue holds want messages.
func queueHolds(t *testing.T, queue string, want int) {
	t.Helper()
	q, err := rabbittest.AdminChannel(t).QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if q.Messages != want {
		t.Errorf("queue %s holds %d messages, want %d", queue, q.Messages, want)
	}
}

// submitOne submits a message and returns how it was completed.
func submitOne(t *testing.T, b *Broker, id string) error {
	t.Helper()
	rec := newRecorder()
	b.Submit(newMessage(rec, id, "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	rec.wait(t, 1, 15*time.Second)
	return rec.result(t, id)
}

// With the defaults (lsmtp declares the exchange) publishes are not
// mandatory: an unroutable message goes to the alternate exchange, whose
// queue refuses it, and the nack is a 451 (here at once: no retry
// window), never a 250; none is stored anywhere. Bound again, the same
// broker stores the next message once.
func TestUnroutableRefusedByAlternateExchange(t *testing.T) {
	cfg := testConfig(t, rabbittest.URL)
	cfg.PublishRetryWindow = 0
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	l := amqpLinkOf(b)
	if l == nil || l.mandatory || l.refuser == nil {
		t.Fatalf("link %+v: want the refusing alternate exchange, no mandatory", l)
	}
	admin := rabbittest.AdminChannel(t)
	if err := admin.QueueUnbind(cfg.Queue, cfg.RoutingKey, cfg.Exchange, nil); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		id := fmt.Sprintf("QAE%d", i)
		if err := submitOne(t, b, id); err != sink.ErrUnavailable {
			t.Errorf("unroutable %s: completed with %v, want %v", id, err, sink.ErrUnavailable)
		}
	}
	if st := b.Stats(); st.Nacked != 3 || st.Returned != 0 || st.Confirmed != 0 || st.Failed != 3 {
		t.Errorf("stats: %+v", st)
	}
	queueHolds(t, cfg.Queue, 0)

	if err := admin.QueueBind(cfg.Queue, cfg.RoutingKey, cfg.Exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := submitOne(t, b, "QAEBOUND"); err != nil {
		t.Fatalf("bound again: completed with %v, want nil", err)
	}
	if d := consume(t, cfg.Queue, 1, 300*time.Millisecond, 5*time.Second); len(d) != 1 || d[0].MessageId != "QAEBOUND" {
		t.Errorf("queue holds %d messages, want QAEBOUND once", len(d))
	}
}

// An unroutable message waits inside the retry window like any refused
// one: a binding that comes back meanwhile (a consumer redeclaring its
// queue) gets it, stored once, answered 250.
func TestUnroutableWaitsForItsBinding(t *testing.T) {
	cfg := testConfig(t, rabbittest.URL)
	cfg.PublishRetryWindow = 5 * time.Second
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	admin := rabbittest.AdminChannel(t)
	if err := admin.QueueUnbind(cfg.Queue, cfg.RoutingKey, cfg.Exchange, nil); err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	b.Submit(newMessage(rec, "QWAIT", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	deadline := time.Now().Add(5 * time.Second)
	for b.Stats().Nacked == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no nack while unbound")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := admin.QueueBind(cfg.Queue, cfg.RoutingKey, cfg.Exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	rec.wait(t, 1, 10*time.Second)
	if err := rec.result(t, "QWAIT"); err != nil {
		t.Fatalf("completed with %v, want nil", err)
	}
	if d := consume(t, cfg.Queue, 1, 300*time.Millisecond, 5*time.Second); len(d) != 1 || d[0].MessageId != "QWAIT" {
		t.Errorf("queue holds %d messages, want QWAIT once", len(d))
	}
}

// An exchange that exists without lsmtp's alternate exchange (declared
// by an earlier version, or by the operator, here with an alternate
// exchange of their own) is used as it is, with mandatory publishes: an
// unroutable message is returned, 451 4.3.5.
func TestExchangeWithoutOurAlternateUsesMandatory(t *testing.T) {
	for _, args := range []amqp.Table{nil, {"alternate-exchange": "someone-else"}} {
		t.Run(fmt.Sprint(args), func(t *testing.T) {
			cfg := testConfig(t, rabbittest.URL)
			cfg.PublishRetryWindow = 0
			admin := rabbittest.AdminChannel(t)
			if err := admin.ExchangeDeclare(cfg.Exchange, ExchangeDirect, true, false, false, false, args); err != nil {
				t.Fatal(err)
			}
			b := startBroker(t, cfg)
			waitReady(t, b, readyWait)
			if l := amqpLinkOf(b); l == nil || !l.mandatory || l.refuser != nil {
				t.Fatalf("link %+v: want mandatory publishes", l)
			}
			if err := submitOne(t, b, "QBOUND"); err != nil {
				t.Fatalf("routable: completed with %v", err)
			}
			if err := admin.QueueUnbind(cfg.Queue, cfg.RoutingKey, cfg.Exchange, nil); err != nil {
				t.Fatal(err)
			}
			if err := submitOne(t, b, "QRET"); err != ErrUnroutable {
				t.Errorf("unroutable: completed with %v, want %v", err, ErrUnroutable)
			}
			if st := b.Stats(); st.Returned != 1 || st.Nacked != 0 {
				t.Errorf("stats: %+v", st)
			}
		})
	}
}

// The exchange deleted while lsmtp runs and declared again by someone
// else without the alternate exchange: lsmtp's periodic declare finds it,
// the connection is dropped, and the next one publishes with mandatory,
// so that an unroutable message is returned rather than confirmed and
// dropped.
func TestExchangeDeclaredAgainWithoutAlternate(t *testing.T) {
	defer func(d time.Duration) { guardEvery = d }(guardEvery)
	guardEvery = 50 * time.Millisecond
	cfg := testConfig(t, rabbittest.URL)
	cfg.PublishRetryWindow = 0
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	first := amqpLinkOf(b)
	admin := rabbittest.AdminChannel(t)
	if err := admin.ExchangeDelete(cfg.Exchange, false, false); err != nil {
		t.Fatal(err)
	}
	if err := admin.ExchangeDeclare(cfg.Exchange, ExchangeDirect, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	newLink(t, b, first)
	if l := amqpLinkOf(b); !l.mandatory || l.refuser != nil {
		t.Fatalf("new link %+v: want mandatory publishes", l)
	}
	// The new connection bound the queue again (Declare); unbound, a
	// message is returned.
	if err := admin.QueueUnbind(cfg.Queue, cfg.RoutingKey, cfg.Exchange, nil); err != nil {
		t.Fatal(err)
	}
	if err := submitOne(t, b, "QAGAIN"); err != ErrUnroutable {
		t.Fatalf("unbound on the exchange declared again: completed with %v, want %v", err, ErrUnroutable)
	}
	queueHolds(t, cfg.Queue, 0)
}

// newLink waits until b is ready on another connection than old.
func newLink(t *testing.T, b *Broker, old *amqpLink) {
	t.Helper()
	deadline := time.Now().Add(readyWait)
	for {
		if l := amqpLinkOf(b); l != nil && l != old && b.Ready() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no new connection")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The refusing queue deleted by hand (rabbitmqctl): RabbitMQ cancels
// lsmtp's consumer on it, lsmtp drops the connection and declares a new
// one on the next, and an unroutable message is refused again.
func TestRefusingQueueDeletedReconnects(t *testing.T) {
	ctl, err := exec.LookPath("rabbitmqctl")
	if err != nil {
		t.Skip("rabbitmqctl not installed")
	}
	cfg := testConfig(t, rabbittest.URL)
	cfg.PublishRetryWindow = 0
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	first := amqpLinkOf(b)
	if out, err := exec.Command(ctl, "delete_queue", first.refuser.queue).CombinedOutput(); err != nil {
		t.Fatalf("rabbitmqctl delete_queue: %v: %s", err, out)
	}
	newLink(t, b, first)
	if l := amqpLinkOf(b); l.refuser == nil || l.refuser.queue == first.refuser.queue {
		t.Fatalf("new link %+v: want a new refusing queue", l)
	}
	if st := b.Stats(); st.Disconnects < 1 {
		t.Errorf("stats: %+v, want a disconnect", st)
	}
	if err := rabbittest.AdminChannel(t).QueueUnbind(cfg.Queue, cfg.RoutingKey, cfg.Exchange, nil); err != nil {
		t.Fatal(err)
	}
	if err := submitOne(t, b, "QAFTER"); err != sink.ErrUnavailable {
		t.Errorf("unroutable after the new connection: completed with %v, want %v", err, sink.ErrUnavailable)
	}
}
