package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/internal/sink"
)

// This file is the RabbitMQ transport: the connection and the topology
// (here) and each worker's channel in confirm mode (amqp_channel.go);
// publish.go builds the publishings and limits.go bounds them.

// amqpTransport is RabbitMQ over AMQP 0-9-1 (amqp091-go).
type amqpTransport struct{ b *Broker }

func (t *amqpTransport) kind() string             { return "RabbitMQ" }
func (t *amqpTransport) urls() []string           { return t.b.cfg.URLs }
func (t *amqpTransport) redact(url string) string { return RedactURL(url) }
func (t *amqpTransport) limits() sink.Limits      { return t.b.amqpLimits() }

// amqpLink is one AMQP connection; each worker opens its channel on it.
type amqpLink struct {
	amqp *amqp.Connection
	sock *corkConn // the TCP socket, closed directly when a write hangs
	url  string    // redacted, for logs
}

// kill closes the socket under the AMQP connection: it unblocks a publish
// stuck in a write, which a graceful close (that needs the same write
// lock) cannot.
func (c *amqpLink) kill() { c.sock.Close() }

// dial opens a connection to url and declares the topology on it.
func (t *amqpTransport) dial(url string) (link, error) {
	b := t.b
	var (
		mu   sync.Mutex
		sock *corkConn
	)
	cfg := amqp.Config{
		Heartbeat: b.cfg.Heartbeat,
		FrameSize: frameSize, // what Limits are computed from
		Locale:    "en_US",
		Properties: amqp.Table{
			"product":         "lsmtp",
			"connection_name": "lsmtp " + b.cfg.Node,
		},
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: b.cfg.DialTimeout}
			c, err := d.Dial(network, addr)
			if err != nil {
				return nil, err
			}
			// Bounds the TLS and AMQP handshake; amqp091-go clears it
			// once the connection is open.
			if err := c.SetDeadline(time.Now().Add(b.cfg.DialTimeout)); err != nil {
				c.Close()
				return nil, err
			}
			cc := newCorkConn(c)
			mu.Lock()
			sock = cc
			mu.Unlock()
			return cc, nil
		},
	}
	if b.cfg.Username != "" {
		cfg.SASL = []amqp.Authentication{&amqp.PlainAuth{Username: b.cfg.Username, Password: b.cfg.Password}}
	}
	conn, err := amqp.DialConfig(url, cfg)
	if err != nil {
		return nil, err
	}
	if fs := conn.Config.FrameSize; fs > 0 && fs < frameSize {
		b.log.Warn("RabbitMQ's frame_max is below the size the envelope limits assume: larger envelopes will be answered 451",
			"url", RedactURL(url), "frame_max", fs, "assumed", frameSize)
	}
	mu.Lock()
	c := &amqpLink{amqp: conn, sock: sock, url: RedactURL(url)}
	mu.Unlock()
	if b.cfg.Declare {
		if err := declare(conn, &b.cfg, b.log); err != nil {
			c.kill()
			conn.Close()
			return nil, err
		}
	}
	return c, nil
}

// declare declares the durable exchange, the durable queue and the
// binding. Declaring what exists with the same settings is a no-op; with
// other settings RabbitMQ refuses (PRECONDITION_FAILED), and we keep
// answering 451 with the reason in the log rather than publish into a
// topology that is not what was configured. One exception: an exchange
// whose type lsmtp chose (Config.ExchangeType empty) and that exists with
// another type, as a "topic" exchange "lsmtp" declared before direct
// became the default does, is used as it is (declared passively), with
// one line in the log: RabbitMQ cannot change an exchange's type, and
// either type routes the configured binding key (mandatory still answers
// 451 for a message it routes nowhere).
func declare(conn *amqp.Connection, cfg *Config, log *slog.Logger) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel to declare topology: %w", err)
	}
	defer func() { ch.Close() }()
	if cfg.Exchange != "" {
		kind := cfg.exchangeType()
		err := ch.ExchangeDeclare(cfg.Exchange, kind, true, false, false, false, nil)
		if err != nil && cfg.ExchangeType == "" && otherExchangeType(err) {
			// The channel is closed by the refusal (AMQP 0-9-1 §1.2.2.1 a
			// channel exception); a passive declare on a new one asks only
			// that the exchange exists.
			if ch, err = conn.Channel(); err != nil {
				return fmt.Errorf("open channel to declare topology: %w", err)
			}
			err = ch.ExchangeDeclarePassive(cfg.Exchange, kind, true, false, false, false, nil)
			if err == nil {
				log.Warn("exchange exists with another type than the one lsmtp would declare; using it as it is (set --exchange-type to silence this)",
					"exchange", cfg.Exchange, "would_declare", kind)
			}
		}
		if err != nil {
			return fmt.Errorf("declare exchange %q: %w", cfg.Exchange, err)
		}
	}
	if cfg.Queue == "" {
		return nil
	}
	if _, err := ch.QueueDeclare(cfg.Queue, true, false, false, false, amqp.Table(cfg.queueArgs())); err != nil {
		return fmt.Errorf("declare queue %q: %w", cfg.Queue, err)
	}
	if cfg.Exchange != "" {
		if err := ch.QueueBind(cfg.Queue, cfg.bindingKey(), cfg.Exchange, false, nil); err != nil {
			return fmt.Errorf("bind queue %q to %q with %q: %w", cfg.Queue, cfg.Exchange, cfg.bindingKey(), err)
		}
	}
	return nil
}

// otherExchangeType reports whether err is RabbitMQ refusing an exchange
// declare for its type: PRECONDITION_FAILED - inequivalent arg 'type'.
func otherExchangeType(err error) bool {
	var e *amqp.Error
	return errors.As(err, &e) && e.Code == amqp.PreconditionFailed && strings.Contains(e.Reason, "'type'")
}

// watch follows c until it is lost (false) or stop closes (true), and
// flow control (connection.blocked) meanwhile.
func (c *amqpLink) watch(b *Broker, stop <-chan struct{}) (stopped bool) {
	closes := c.amqp.NotifyClose(make(chan *amqp.Error, 1))
	blocks := c.amqp.NotifyBlocked(make(chan amqp.Blocking, 4))
	tick := time.NewTicker(b.watchdogInterval())
	defer tick.Stop()
	for {
		select {
		case err, ok := <-closes:
			b.stats.disconnects.Add(1)
			reason := "closed"
			if ok && err != nil {
				reason = err.Error()
			}
			b.log.Warn("RabbitMQ connection lost, reconnecting", "url", c.url, "reason", reason,
				"messages_wait", b.cfg.PublishRetryWindow > 0)
			return false
		case bl, ok := <-blocks:
			if !ok {
				blocks = nil
				continue
			}
			if bl.Active {
				b.state.Or(stateBlocked)
				b.log.Warn("RabbitMQ blocked publishing (connection.blocked)", "url", c.url, "reason", bl.Reason,
					"messages_wait", b.cfg.PublishRetryWindow > 0)
			} else {
				b.state.And(^uint32(stateBlocked))
				b.log.Info("RabbitMQ unblocked publishing", "url", c.url)
				b.kick() // what waited for the unblock goes now
			}
		case <-tick.C:
			b.watchdog(c, c.url)
		case <-stop:
			// Graceful close; the socket is killed if the close handshake
			// cannot even be written within a second.
			t := time.AfterFunc(time.Second, c.kill)
			err := c.amqp.CloseDeadline(time.Now().Add(time.Second))
			t.Stop()
			if err != nil && !errors.Is(err, amqp.ErrClosed) {
				b.log.Debug("closing RabbitMQ connection", "err", err)
			}
			c.kill()
			return true
		}
	}
}
