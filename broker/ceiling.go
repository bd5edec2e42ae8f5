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
// their confirms.
func runCeiling(ctx context.Context, conn *amqp.Connection, cfg *Config, exchange, key string, size, n int, duration time.Duration) (ceilingResult, error) {
	body := make([]byte, size)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	var (
		sent, confirmed, nacked atomic.Int64
		wg                      sync.WaitGroup
		errMu                   sync.Mutex
		firstErr                error
	)
	start := time.Now()
	stopAt := start.Add(duration)
	more := func() bool {
		if n > 0 {
			return sent.Add(1) <= int64(n)
		}
		return time.Now().Before(stopAt) && ctx.Err() == nil
	}
	for w := 0; w < cfg.Workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			err := ceilingWorker(conn, cfg, exchange, key, body, w, more, &confirmed, &nacked)
			if err != nil {
				errMu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				errMu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	res := ceilingResult{confirmed: confirmed.Load(), nacked: nacked.Load(), elapsed: time.Since(start)}
	return res, firstErr
}

func ceilingWorker(conn *amqp.Connection, cfg *Config, exchange, key string, body []byte, w int,
	more func() bool, confirmed, nacked *atomic.Int64) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		return err
	}
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, cfg.Window+1))
	now := time.Now()
	headers := amqp.Table{
		HeaderSender:       "sender@example.org",
		HeaderRecipients:   []any{"rcpt@example.com"},
		HeaderClientIP:     "127.0.0.1",
		HeaderClientPort:   40000 + w,
		HeaderHelo:         "client.example.org",
		HeaderDeclaredSize: int64(len(body)),
		HeaderBody:         "8BITMIME",
		HeaderUTF8:         false,
		HeaderReceivedAt:   now.UTC().Format(ReceivedAtLayout),
		HeaderNode:         cfg.Node,
	}
	timeout := time.NewTimer(cfg.ConfirmTimeout)
	defer timeout.Stop()
	outstanding := 0
	done := false
	for {
		for !done && outstanding < cfg.Window {
			if !more() {
				done = true
				break
			}
			err := ch.Publish(exchange, key, true, false, amqp.Publishing{
				Headers:      headers,
				ContentType:  ContentType,
				DeliveryMode: amqp.Persistent,
				MessageId:    "ceiling",
				Timestamp:    now,
				AppId:        AppID,
				Body:         body,
			})
			if err != nil {
				return err
			}
			outstanding++
		}
		if outstanding == 0 {
			return nil
		}
		timeout.Reset(cfg.ConfirmTimeout)
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
			return fmt.Errorf("no confirm within %s", cfg.ConfirmTimeout)
		}
	}
}
