package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/broker"
)

// amqpSource consumes a RabbitMQ queue.
type amqpSource struct {
	conn       *amqp.Connection
	deliveries <-chan amqp.Delivery
}

func openAMQP(o options) (*amqpSource, error) {
	cfg := amqp.Config{Heartbeat: 10 * time.Second, Locale: "en_US", Dial: amqp.DefaultDial(10 * time.Second)}
	if o.username != "" {
		cfg.SASL = []amqp.Authentication{&amqp.PlainAuth{Username: o.username, Password: o.password}}
	}
	conn, err := amqp.DialConfig(o.url, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", broker.RedactURL(o.url), err)
	}
	ch, err := conn.Channel()
	if err == nil {
		err = ch.Qos(o.prefetch, 0, false)
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	deliveries, err := ch.Consume(o.queue, "lsmtp-consume", false, false, false, false, nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("consume %q: %w", o.queue, err)
	}
	return &amqpSource{conn: conn, deliveries: deliveries}, nil
}

// next takes the next delivery; left does not matter, since RabbitMQ
// puts what it sent ahead (at most --prefetch) back into the queue when
// the channel closes.
func (s *amqpSource) next(ctx context.Context, left int) (*message, error) {
	select {
	case d, ok := <-s.deliveries:
		if !ok {
			return nil, errors.New("RabbitMQ closed the consumer")
		}
		return amqpMessage(d), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *amqpSource) close() { s.conn.Close() }

func amqpMessage(d amqp.Delivery) *message {
	m := &message{
		id: d.MessageId, seq: d.DeliveryTag, body: d.Body,
		summary: fmt.Sprintf("routing key %q, published %s by %s", d.RoutingKey, d.Timestamp.UTC().Format(time.RFC3339), d.AppId),
		ack:     func() error { return d.Ack(false) },
		requeue: func() { d.Nack(false, true) },
	}
	names := make([]string, 0, len(d.Headers))
	for k := range d.Headers {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		m.headers = append(m.headers, header{k, amqpValue(d.Headers[k])})
	}
	return m
}

// amqpValue writes a header value of the AMQP table: strings quoted,
// arrays as their elements separated by commas.
func amqpValue(v any) string {
	switch v := v.(type) {
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = amqpValue(e)
		}
		return strings.Join(parts, ", ")
	case string:
		return fmt.Sprintf("%q", v)
	default:
		return fmt.Sprint(v)
	}
}
