package broker

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// A message RabbitMQ confirms but routes to no queue would be a silent
// loss behind a 250. lsmtp detects it one of two ways:
//
//   - The refusing alternate exchange, where lsmtp declares the exchange
//     itself (Config.Declare, a named exchange): the exchange is declared
//     with alternate-exchange = "<exchange>.unroutable", an internal
//     fanout exchange bound to a queue of this connection's own
//     (exclusive, classic, x-max-length 0, x-overflow reject-publish).
//     An unroutable message goes there and is refused: a basic.nack,
//     which lsmtp retries within --publish-retry-window and then answers
//     451 4.3.0, like a full queue. Publishes are not mandatory.
//   - mandatory publishes otherwise (Declare off, the default exchange, an
//     exchange that already exists without lsmtp's alternate exchange or
//     with another one, or a refusal while setting it up): RabbitMQ
//     returns an unroutable message (basic.return) and lsmtp answers
//     451 4.3.5 at once.
//
// Why not mandatory everywhere: on a classic queue RabbitMQ 3.10 spends
// about a tenth more CPU per mandatory message, and its system calls per
// message double (bench/factors.md, "mandatory vs alternate exchange"),
// which in the latency-bound load of one message at a time per session is
// a tenth of the rate. On a quorum queue the two cost the same.
//
// The refusing queue lives exactly as long as the connection that
// publishes, so there is never an alternate exchange without it while
// lsmtp publishes. Two operator actions can still take it away, and
// lsmtp then drops the connection and declares everything again on the
// next, which falls back to mandatory where it must:
//   - the queue deleted by hand (rabbitmqctl, the management UI):
//     RabbitMQ cancels lsmtp's consumer on it (consumer_cancel_notify),
//     and lsmtp reconnects at once;
//   - the exchange deleted and declared again without the alternate
//     exchange: lsmtp declares the exchange, with it, every guardEvery,
//     and RabbitMQ's refusal (PRECONDITION_FAILED) says so.
// An unroutable message published in between (a second fault on top of
// the missing binding) would be confirmed and dropped: for the deleted
// queue a few milliseconds, for the exchange up to guardEvery.

// unroutableSuffix names the alternate exchange after the exchange.
const unroutableSuffix = ".unroutable"

// maxAMQPName is the longest exchange or queue name (AMQP 0-9-1 shortstr).
const maxAMQPName = 255

// alternateExchange is the name of the refusing alternate exchange for
// the configured exchange.
func (c *Config) alternateExchange() string { return c.Exchange + unroutableSuffix }

// refuser is one connection's refusing queue, with the consumer whose
// cancellation says the queue is gone.
type refuser struct {
	ch    *amqp.Channel
	queue string
	// lost says why the connection must go: the queue was deleted, or
	// the exchange no longer has the alternate exchange (guard).
	lost chan string
	stop chan struct{}
}

// openRefuser declares the alternate exchange and this connection's
// refusing queue, binds them and consumes from the queue (nothing ever
// arrives: every message is refused before it is queued).
func openRefuser(conn *amqp.Connection, cfg *Config) (*refuser, error) {
	ae := cfg.alternateExchange()
	var suffix [8]byte
	_, _ = rand.Read(suffix[:]) // crypto/rand.Read never fails on Linux (Go 1.24+)
	queue := ae + "." + hex.EncodeToString(suffix[:])
	if len(queue) > maxAMQPName {
		return nil, fmt.Errorf("exchange name too long for an alternate exchange (%d octets)", len(cfg.Exchange))
	}
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	r := &refuser{ch: ch, queue: queue}
	fail := func(what string, err error) (*refuser, error) {
		ch.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	// Internal: nobody publishes to it directly (AMQP 0-9-1 exchange.declare
	// "internal"); RabbitMQ may still use it as an alternate exchange.
	if err := ch.ExchangeDeclare(ae, amqp.ExchangeFanout, true, false, true, false, nil); err != nil {
		return fail(fmt.Sprintf("declare alternate exchange %q", ae), err)
	}
	// Classic whatever the main queue's type: a quorum queue learns it is
	// over x-max-length only after an enqueue, and would keep the first
	// messages instead of refusing them (bench/factors_test.go).
	args := amqp.Table{"x-queue-type": QueueClassic, "x-max-length": int64(0), "x-overflow": "reject-publish"}
	if _, err := ch.QueueDeclare(queue, false, true, true, false, args); err != nil {
		return fail(fmt.Sprintf("declare refusing queue %q", queue), err)
	}
	if err := ch.QueueBind(queue, "", ae, false, nil); err != nil {
		return fail(fmt.Sprintf("bind refusing queue %q to %q", queue, ae), err)
	}
	cancels := ch.NotifyCancel(make(chan string, 1))
	closes := ch.NotifyClose(make(chan *amqp.Error, 1))
	deliveries, err := ch.Consume(queue, "lsmtp-refuser", true, true, false, false, nil)
	if err != nil {
		return fail(fmt.Sprintf("consume from refusing queue %q", queue), err)
	}
	go func() {
		for range deliveries { // none expected; never let amqp091-go's reader wait on them
		}
	}()
	r.lost, r.stop = make(chan string, 1), make(chan struct{})
	go r.guard(cfg, cancels, closes)
	return r, nil
}

// guardEvery is how often the refuser checks that the exchange still has
// its alternate exchange.
var guardEvery = time.Second

// guard watches the refusing queue and the exchange until the channel
// closes or stop: a deleted queue cancels the consumer; an exchange
// deleted and declared again by someone else without the alternate
// exchange is found by declaring it again, with it, every guardEvery (a
// declare that creates it, when it is missing, is what Config.Declare
// asks for anyway). In its own goroutine: a broker that stopped reading
// must not hold up the supervisor, whose watchdog is what finds that.
func (r *refuser) guard(cfg *Config, cancels <-chan string, closes <-chan *amqp.Error) {
	tick := time.NewTicker(guardEvery)
	defer tick.Stop()
	args := amqp.Table{"alternate-exchange": cfg.alternateExchange()}
	lose := func(why string) {
		select {
		case r.lost <- why:
		default:
		}
	}
	for {
		select {
		case <-cancels:
			lose("its queue was deleted")
			return
		case e, ok := <-closes:
			if ok && e != nil {
				lose(e.Error())
			}
			return // closed with the connection: the supervisor hears of that
		case <-tick.C:
			err := r.ch.ExchangeDeclare(cfg.Exchange, cfg.exchangeType(), true, false, false, false, args)
			if err != nil {
				lose(fmt.Sprintf("declare exchange %q again: %v", cfg.Exchange, err))
				return
			}
		case <-r.stop:
			return
		}
	}
}

// close deletes the queue (it would go with the connection anyway) and
// closes the channel.
func (r *refuser) close() {
	close(r.stop)
	_, _ = r.ch.QueueDelete(r.queue, false, false, false)
	r.ch.Close()
}

// otherAlternateExchange reports whether err is RabbitMQ refusing an
// exchange declare because the exchange exists with another (or no)
// alternate exchange: PRECONDITION_FAILED - inequivalent arg
// 'alternate-exchange'.
func otherAlternateExchange(err error) bool {
	var e *amqp.Error
	return errors.As(err, &e) && e.Code == amqp.PreconditionFailed && strings.Contains(e.Reason, "'alternate-exchange'")
}
