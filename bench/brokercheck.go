package bench

import (
	"context"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// QueueCheck purges a queue before a row and counts it after, so that a
// row's 2xx replies can be compared with what actually landed in RabbitMQ.
type QueueCheck struct {
	URL   string
	Queue string

	conn *amqp.Connection
	ch   *amqp.Channel
}

// Version is the RabbitMQ version the server reports, "" if unknown.
func (q *QueueCheck) Version() string {
	if err := q.open(); err != nil {
		return ""
	}
	if v, ok := q.conn.Properties["version"].(string); ok {
		return v
	}
	return ""
}

func (q *QueueCheck) open() error {
	if q.conn == nil || q.conn.IsClosed() {
		conn, err := amqp.Dial(q.URL)
		if err != nil {
			return fmt.Errorf("broker check: dial: %w", err)
		}
		q.conn, q.ch = conn, nil
	}
	if q.ch == nil || q.ch.IsClosed() {
		ch, err := q.conn.Channel()
		if err != nil {
			return fmt.Errorf("broker check: channel: %w", err)
		}
		q.ch = ch
	}
	return nil
}

// Purge empties the queue and returns how many messages it dropped.
func (q *QueueCheck) Purge() (int, error) {
	if err := q.open(); err != nil {
		return 0, err
	}
	n, err := q.ch.QueuePurge(q.Queue, false)
	if err != nil {
		return 0, fmt.Errorf("broker check: purge %q: %w", q.Queue, err)
	}
	return n, nil
}

// Count is the queue's message count from a passive declare.
func (q *QueueCheck) Count() (int, error) {
	if err := q.open(); err != nil {
		return 0, err
	}
	st, err := q.ch.QueueDeclarePassive(q.Queue, true, false, false, false, nil)
	if err != nil {
		return 0, fmt.Errorf("broker check: count %q: %w", q.Queue, err)
	}
	return st.Messages, nil
}

// Settle counts the queue until the count has not moved for stable and
// is at least want, or ctx ends: messages the server had in flight when a
// session gave up may still be confirmed after the row.
func (q *QueueCheck) Settle(ctx context.Context, want int, stable time.Duration) (int, error) {
	return settle(ctx, q.Count, want, stable)
}

// settle calls count until its answer has not moved for stable and is at
// least want, or ctx ends, and returns the last answer.
func settle(ctx context.Context, count func() (int, error), want int, stable time.Duration) (int, error) {
	last, since := -1, time.Now()
	for {
		n, err := count()
		if err != nil {
			return 0, err
		}
		if n != last {
			last, since = n, time.Now()
		} else if n >= want && time.Since(since) >= stable {
			return n, nil
		}
		select {
		case <-ctx.Done():
			return n, nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Close ends the connection.
func (q *QueueCheck) Close() {
	if q.conn != nil {
		q.conn.Close()
	}
}

// Verdict compares a row's 2xx replies with the queue count: equal is
// right; more is allowed only when some messages got a 4xx or lost their
// connection after being sent (the broker may hold those); fewer means
// accepted mail was lost.
func Verdict(ok, tempfail, lost int64, counted int) (pass bool, note string) {
	n := int64(counted)
	switch {
	case n == ok:
		return true, fmt.Sprintf("%d = %d", n, ok)
	case n > ok && n-ok <= tempfail+lost:
		return true, fmt.Sprintf("%d = %d + %d after 4xx/lost connections", n, ok, n-ok)
	case n > ok:
		return false, fmt.Sprintf("%d > %d with only %d 4xx/lost: duplicates", n, ok, tempfail+lost)
	default:
		return false, fmt.Sprintf("%d < %d: %d accepted messages missing", n, ok, ok-n)
	}
}
