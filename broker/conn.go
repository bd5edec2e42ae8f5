package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// connection is one established AMQP connection shared by the workers,
// each of which opens its own channel on it.
type connection struct {
	amqp   *amqp.Connection
	sock   *corkConn     // the TCP socket, closed directly when a write hangs
	closed chan struct{} // closed once the connection is gone
	url    string        // redacted, for logs
}

// kill closes the socket under the AMQP connection: it unblocks a publish
// stuck in a write, which a graceful close (that needs the same write
// lock) cannot.
func (c *connection) kill() { c.sock.Close() }

// supervise keeps a connection up until Close: dial the URLs in turn with
// capped exponential backoff and full jitter, declare the topology, then
// watch the connection for close, flow control and stuck writes.
func (b *Broker) supervise() {
	defer close(b.supDone)
	backoff := b.cfg.ReconnectMin
	// wait sleeps a random time in [0, backoff) ("full jitter", which keeps
	// a fleet of nodes from reconnecting in lock step after a broker
	// restart) and doubles backoff up to ReconnectMax. It reports false
	// when Close interrupted it.
	wait := func() bool {
		d := time.Duration(rand.Int64N(int64(backoff))) + time.Millisecond
		backoff = min(backoff*2, b.cfg.ReconnectMax)
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-b.stopSup:
			return false
		}
	}
	everConnected, downLogged := false, false
	for i := 0; ; {
		select {
		case <-b.stopSup:
			return
		default:
		}
		url := b.cfg.URLs[i%len(b.cfg.URLs)]
		c, err := b.dial(url)
		if err != nil {
			b.stats.connectFailures.Add(1)
			switch {
			case !everConnected && !downLogged && b.spool != nil:
				b.log.Error("RabbitMQ not reachable: messages are spooled and answered 250, and published once connected; retrying in the background",
					"url", RedactURL(url), "err", err, "spool", b.cfg.SpoolDir)
				downLogged = true
			case !everConnected && !downLogged:
				// The one line an operator needs when starting against a
				// broker that is not there yet.
				b.log.Error("RabbitMQ not reachable: messages wait up to the publish retry window, then get 451, until connected; retrying in the background",
					"url", RedactURL(url), "err", err, "window", b.cfg.PublishRetryWindow)
				downLogged = true
			case b.limits.connect.allow(b.now()):
				b.log.Warn("RabbitMQ connect failed, retrying", "url", RedactURL(url), "err", err,
					"suppressed", b.limits.connect.suppressedSince())
			}
			i++ // the next node of the cluster
			if !wait() {
				return
			}
			continue
		}
		everConnected = true
		b.stats.connects.Add(1)
		b.log.Info("connected to RabbitMQ", "url", c.url)
		connectedAt := time.Now()
		if b.watch(c) {
			return
		}
		// After a loss, try the node that worked first, at once if the
		// connection had lived a while; a connection that keeps dying
		// right after it opened is retried with growing backoff instead
		// of in a tight loop.
		if time.Since(connectedAt) >= b.cfg.ReconnectMax {
			backoff = b.cfg.ReconnectMin
		} else if !wait() {
			return
		}
	}
}

// dial opens a connection to url and declares the topology on it.
func (b *Broker) dial(url string) (*connection, error) {
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
	c := &connection{amqp: conn, sock: sock, closed: make(chan struct{}), url: RedactURL(url)}
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

// watch publishes c to the workers and follows it until it is lost (false)
// or Close stops the supervisor (true).
func (b *Broker) watch(c *connection) (stopped bool) {
	closes := c.amqp.NotifyClose(make(chan *amqp.Error, 1))
	blocks := c.amqp.NotifyBlocked(make(chan amqp.Blocking, 4))
	b.setConn(c)
	// The watchdog looks for publish calls hanging in a socket write (a
	// broker that stopped reading): no confirm timeout can fire while the
	// worker is stuck there, so the socket is closed under it.
	interval := min(b.cfg.ConfirmTimeout/4, time.Second)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	defer func() {
		close(c.closed)
		b.setConn(nil)
	}()
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
			now := b.now()
			for _, w := range b.workers {
				if since := w.publishingSince.Load(); since != 0 && now-since > int64(b.cfg.ConfirmTimeout) {
					b.log.Error("publish hung in a socket write longer than the confirm timeout, dropping the connection",
						"url", c.url, "worker", w.id, "timeout", b.cfg.ConfirmTimeout)
					c.kill()
					break
				}
			}
		case <-b.stopSup:
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
