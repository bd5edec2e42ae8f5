package broker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// MeasureCeiling measures what RabbitMQ takes from a plain amqp091-go
// publisher with the broker's settings: cfg.Workers channels in confirm
// mode, cfg.Window unconfirmed publishes each, persistent messages of size
// bytes with a header table like the contract's, mandatory, into a queue of
// cfg's type and arguments. It is the ceiling lsmtp's throughput is
// compared with: lsmtp cannot publish faster than this.
//
// It publishes for duration into a temporary queue of its own (named after
// cfg.Queue, reached through the default exchange, deleted afterwards), so
// it never puts test messages into the real queue, and returns the
// confirmed messages per second.
func MeasureCeiling(ctx context.Context, cfg Config, size int, duration time.Duration) (msgsPerSec float64, err error) {
	if err := cfg.Validate(); err != nil {
		return 0, err
	}
	conn, err := dialPlain(&cfg)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	base := cfg.Queue
	if base == "" {
		base = "lsmtp"
	}
	queue := fmt.Sprintf("%s.ceiling.%08x", base, rand.Uint32())
	ch, err := conn.Channel()
	if err != nil {
		return 0, err
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, amqp.Table(cfg.queueArgs())); err != nil {
		return 0, fmt.Errorf("declare %q: %w", queue, err)
	}
	defer func() {
		if _, derr := ch.QueueDelete(queue, false, false, false); derr != nil && err == nil {
			err = fmt.Errorf("delete %q: %w", queue, derr)
		}
		ch.Close()
	}()
	res, err := runCeiling(ctx, conn, &cfg, "", queue, size, 0, duration)
	if err != nil {
		return 0, err
	}
	return res.rate(), nil
}

// dialPlain connects to the first of cfg's URLs that answers.
func dialPlain(cfg *Config) (*amqp.Connection, error) {
	acfg := amqp.Config{Heartbeat: cfg.Heartbeat, Locale: "en_US", Dial: amqp.DefaultDial(cfg.DialTimeout)}
	if cfg.Username != "" {
		acfg.SASL = []amqp.Authentication{&amqp.PlainAuth{Username: cfg.Username, Password: cfg.Password}}
	}
	var errs []error
	for _, u := range cfg.URLs {
		conn, err := amqp.DialConfig(u, acfg)
		if err == nil {
			return conn, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", RedactURL(u), err))
	}
	return nil, errors.Join(errs...)
}

type ceilingResult struct {
	confirmed, nacked int64
	elapsed           time.Duration
}

func (r ceilingResult) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.confirmed) / r.elapsed.Seconds()
}

// runCeiling publishes from cfg.Workers channels on conn to exchange with
// key until n messages were sent (n > 0) or duration passed, and waits for
// their confirms: the broker's publish shape (CeilingPublishing,
// mandatory, cfg.Window unconfirmed per channel).
func runCeiling(ctx context.Context, conn *amqp.Connection, cfg *Config, exchange, key string, size, n int, duration time.Duration) (ceilingResult, error) {
	res, err := RawPublish(ctx, []*amqp.Connection{conn}, RawShape{
		Exchange: exchange, Key: key, Mandatory: true,
		Msg:      CeilingPublishing(cfg.Node, size),
		Channels: cfg.Workers, Window: cfg.Window,
		Count: n, Duration: duration, ConfirmTimeout: cfg.ConfirmTimeout,
	})
	return ceilingResult{confirmed: res.Confirmed, nacked: res.Nacked, elapsed: res.Elapsed}, err
}

// CeilingPublishing is a message shaped like the broker's publishes: the
// contract's ten headers (one recipient), its properties, and a body of
// size bytes.
func CeilingPublishing(node string, size int) amqp.Publishing {
	body := make([]byte, size)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	now := time.Now()
	return amqp.Publishing{
		Headers:      CeilingHeaders(node, size, now),
		ContentType:  ContentType,
		DeliveryMode: amqp.Persistent,
		MessageId:    "ceiling",
		Timestamp:    now,
		AppId:        AppID,
		Body:         body,
	}
}

// CeilingHeaders is a header table like the one the broker builds for a
// message of size bytes from one sender to one recipient.
func CeilingHeaders(node string, size int, received time.Time) amqp.Table {
	return amqp.Table{
		HeaderSender:       "sender@example.org",
		HeaderRecipients:   []any{"rcpt@example.com"},
		HeaderClientIP:     "127.0.0.1",
		HeaderClientPort:   40000,
		HeaderHelo:         "client.example.org",
		HeaderDeclaredSize: int64(size),
		HeaderBody:         "8BITMIME",
		HeaderUTF8:         false,
		HeaderReceivedAt:   received.UTC().Format(ReceivedAtLayout),
		HeaderNode:         node,
	}
}

// RawShape is what RawPublish sends and how.
type RawShape struct {
	Exchange  string
	Key       string
	Mandatory bool
	// Msg is published as is, every time (amqp091-go encodes it during
	// the call and keeps no reference).
	Msg amqp.Publishing
	// Channels publish concurrently, each in confirm mode with at most
	// Window unconfirmed publishes; channel i is opened on conns[i%len(conns)].
	Channels int
	Window   int
	// Count > 0 stops after that many messages, else Duration ends the run.
	Count    int
	Duration time.Duration
	// ConfirmTimeout bounds the wait for any one confirm.
	ConfirmTimeout time.Duration
}

// RawResult is what a RawPublish run got back from the broker.
type RawResult struct {
	Confirmed, Nacked int64
	// Returned counts basic.return frames (mandatory messages the broker
	// could not route); RabbitMQ still confirms them, after the return.
	Returned int64
	Elapsed  time.Duration // from the first publish to the last confirm
}

// Rate is confirmed messages per second.
func (r RawResult) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Confirmed) / r.Elapsed.Seconds()
}

// RawPublish is a plain amqp091-go publisher: shape.Channels goroutines,
// each with its own channel on one of conns, publish shape.Msg and wait
// for confirms, keeping shape.Window unconfirmed. It is the yardstick the
// broker's own publishing is measured against.
func RawPublish(ctx context.Context, conns []*amqp.Connection, shape RawShape) (RawResult, error) {
	if len(conns) == 0 || shape.Channels < 1 || shape.Window < 1 {
		return RawResult{}, errors.New("broker: raw publish needs a connection, a channel and a window")
	}
	if shape.ConfirmTimeout <= 0 {
		shape.ConfirmTimeout = 10 * time.Second
	}
	var (
		sent, confirmed, nacked, returned atomic.Int64
		wg                                sync.WaitGroup
		errMu                             sync.Mutex
		firstErr                          error
	)
	start := time.Now()
	stopAt := start.Add(shape.Duration)
	more := func() bool {
		if shape.Count > 0 {
			return sent.Add(1) <= int64(shape.Count) && ctx.Err() == nil
		}
		return time.Now().Before(stopAt) && ctx.Err() == nil
	}
	for w := 0; w < shape.Channels; w++ {
		wg.Add(1)
		go func(conn *amqp.Connection) {
			defer wg.Done()
			err := rawWorker(conn, &shape, more, &confirmed, &nacked, &returned)
			if err != nil {
				errMu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				errMu.Unlock()
			}
		}(conns[w%len(conns)])
	}
	wg.Wait()
	res := RawResult{Confirmed: confirmed.Load(), Nacked: nacked.Load(), Returned: returned.Load(), Elapsed: time.Since(start)}
	return res, firstErr
}

func rawWorker(conn *amqp.Connection, shape *RawShape, more func() bool, confirmed, nacked, returned *atomic.Int64) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	// amqp091-go's reader goroutine delivers returns and confirms; both
	// channels are drained so that it never waits on us.
	returns := ch.NotifyReturn(make(chan amqp.Return, 64))
	drained := make(chan struct{})
	go func() {
		for range returns {
			returned.Add(1)
		}
		close(drained)
	}()
	defer func() {
		ch.Close()
		<-drained
	}()
	if err := ch.Confirm(false); err != nil {
		return err
	}
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, shape.Window+1))
	timeout := time.NewTimer(shape.ConfirmTimeout)
	defer timeout.Stop()
	outstanding := 0
	done := false
	for {
		for !done && outstanding < shape.Window {
			if !more() {
				done = true
				break
			}
			if err := ch.Publish(shape.Exchange, shape.Key, shape.Mandatory, false, shape.Msg); err != nil {
				return err
			}
			outstanding++
		}
		if outstanding == 0 {
			return nil
		}
		timeout.Reset(shape.ConfirmTimeout)
		select {
		case c, ok := <-confirms:
			if !ok {
				return errors.New("channel closed while waiting for confirms")
			}
			outstanding--
			if c.Ack {
				confirmed.Add(1)
			} else {
				nacked.Add(1)
			}
		case <-timeout.C:
			return fmt.Errorf("no confirm within %s", shape.ConfirmTimeout)
		}
	}
}
