package bench

import (
	"bytes"
	"context"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/broker"
	"github.com/lsmtp/lsmtp/internal/rabbittest"
)

func TestFactorPublishingEncodings(t *testing.T) {
	cfg := FactorConfig{Size: 2300, Rcpts: 2}
	plain := factorPublishing(FactorShape{}, &cfg)
	if len(plain.Body) != cfg.Size {
		t.Errorf("body is %d octets, want %d", len(plain.Body), cfg.Size)
	}
	if !bytes.HasPrefix(plain.Body, []byte("Received: from ")) || !bytes.HasSuffix(plain.Body, []byte("\r\n")) ||
		bytes.Contains(bytes.ReplaceAll(plain.Body, []byte("\r\n"), nil), []byte("\n")) {
		t.Errorf("body is not CRLF lines starting with Received:: %q", plain.Body[:40])
	}
	if plain.Headers != nil || plain.MessageId != "" || plain.AppId != "" || !plain.Timestamp.IsZero() {
		t.Errorf("bare shape carries headers or properties: %+v", plain)
	}
	if plain.DeliveryMode != amqp.Persistent || plain.ContentType != broker.ContentType {
		t.Errorf("bare shape: delivery mode %d, content type %q", plain.DeliveryMode, plain.ContentType)
	}

	trace := factorPublishing(FactorShape{Envelope: EnvTrace, Props: true}, &cfg)
	prefix := "Return-Path: <sender@example.org>\r\nX-Original-To: <rcpt1@example.com>\r\nX-Original-To: <rcpt2@example.com>\r\n"
	if !bytes.HasPrefix(trace.Body, []byte(prefix+"Received: from ")) {
		t.Errorf("trace body starts %q, want %q then Received:", trace.Body[:len(prefix)], prefix)
	}
	if len(trace.Body) != cfg.Size+len(prefix) || trace.Headers != nil {
		t.Errorf("trace: %d octets (want %d), headers %v", len(trace.Body), cfg.Size+len(prefix), trace.Headers)
	}
	if trace.MessageId == "" || trace.AppId != broker.AppID || trace.Timestamp.IsZero() {
		t.Errorf("props missing: %+v", trace)
	}

	h := factorPublishing(FactorShape{Envelope: EnvHeaders}, &cfg).Headers
	if len(h) != 10 || len(h[broker.HeaderRecipients].([]any)) != 2 {
		t.Errorf("ten headers shape: %d headers, recipients %v", len(h), h[broker.HeaderRecipients])
	}
	if err := h.Validate(); err != nil {
		t.Errorf("header table: %v", err)
	}
	j := factorPublishing(FactorShape{Envelope: EnvJSONHeader}, &cfg).Headers
	if len(j) != 1 || !bytes.Contains([]byte(j["smtp-envelope"].(string)), []byte(`"recipients":["rcpt1@example.com","rcpt2@example.com"]`)) {
		t.Errorf("JSON header: %v", j)
	}
}

// The alternate exchange and mandatory rows rest on what RabbitMQ does
// with a message no binding routes: with an alternate exchange it is
// confirmed and lands in the alternate exchange's queue; with mandatory
// it comes back as basic.return and is confirmed too.
func TestUnroutableWithAlternateExchangeAndMandatory(t *testing.T) {
	ch := rabbittest.AdminChannel(t)
	base := rabbittest.UniqueName(t, "lsmtp-test")
	x, ae, unroutable := base+".x", base+".ae", base+".unroutable"
	t.Cleanup(func() {
		ch.ExchangeDelete(x, false, false)
		ch.ExchangeDelete(ae, false, false)
		ch.QueueDelete(unroutable, false, false, false)
	})
	if err := ch.ExchangeDeclare(ae, amqp.ExchangeFanout, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(unroutable, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(unroutable, "", ae, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclare(x, amqp.ExchangeDirect, false, true, false, false, amqp.Table{"alternate-exchange": ae}); err != nil {
		t.Fatal(err)
	}
	conn, err := amqp.Dial(rabbittest.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const n = 50
	shape := broker.RawShape{Exchange: x, Key: "nowhere", Msg: amqp.Publishing{Body: []byte("x")},
		Channels: 2, Window: 8, Count: n, ConfirmTimeout: 10 * time.Second}
	res, err := broker.RawPublish(context.Background(), []*amqp.Connection{conn}, shape)
	if err != nil {
		t.Fatal(err)
	}
	if res.Confirmed != n || res.Nacked != 0 || res.Returned != 0 {
		t.Errorf("alternate exchange: %+v, want %d confirmed, none returned", res, n)
	}
	if st, err := ch.QueueDeclarePassive(unroutable, false, true, false, false, nil); err != nil || st.Messages != n {
		t.Errorf("unroutable queue holds %d (%v), want %d", st.Messages, err, n)
	}

	// The default exchange routes a key naming no queue nowhere.
	shape.Exchange, shape.Key, shape.Mandatory = "", base+".no-such-queue", true
	res, err = broker.RawPublish(context.Background(), []*amqp.Connection{conn}, shape)
	if err != nil {
		t.Fatal(err)
	}
	if res.Confirmed != n || res.Returned != n {
		t.Errorf("mandatory: %+v, want %d returned and %d confirmed", res, n, n)
	}
}

// An alternate exchange whose only queue holds nothing (x-max-length 0,
// x-overflow reject-publish) turns an unroutable message into a nack:
// detection without mandatory, the routable path untouched. A classic
// queue refuses every one; a quorum queue learns it is full only after
// an enqueue, so the first messages (up to the publisher's window) are
// confirmed and held in it: none lost, but not all refused either.
func TestUnroutableNackedThroughRejectingAlternateExchange(t *testing.T) {
	for _, qt := range []string{broker.QueueQuorum, broker.QueueClassic} {
		t.Run(qt, func(t *testing.T) {
			ch := rabbittest.AdminChannel(t)
			base := rabbittest.UniqueName(t, "lsmtp-test")
			x, ae, reject, routed := base+".x", base+".ae", base+".reject", base+".routed"
			t.Cleanup(func() {
				ch.ExchangeDelete(x, false, false)
				ch.ExchangeDelete(ae, false, false)
				ch.QueueDelete(reject, false, false, false)
				ch.QueueDelete(routed, false, false, false)
			})
			args := amqp.Table{"x-queue-type": qt, "x-max-length": int64(0), "x-overflow": "reject-publish"}
			if err := ch.ExchangeDeclare(ae, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
				t.Fatal(err)
			}
			if _, err := ch.QueueDeclare(reject, true, false, false, false, args); err != nil {
				t.Fatal(err)
			}
			if err := ch.QueueBind(reject, "", ae, false, nil); err != nil {
				t.Fatal(err)
			}
			if err := ch.ExchangeDeclare(x, amqp.ExchangeDirect, true, false, false, false, amqp.Table{"alternate-exchange": ae}); err != nil {
				t.Fatal(err)
			}
			if _, err := ch.QueueDeclare(routed, true, false, false, false, amqp.Table{"x-queue-type": qt}); err != nil {
				t.Fatal(err)
			}
			if err := ch.QueueBind(routed, "inbound", x, false, nil); err != nil {
				t.Fatal(err)
			}
			conn, err := amqp.Dial(rabbittest.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			const n = 20
			shape := broker.RawShape{Exchange: x, Key: "nowhere", Msg: amqp.Publishing{Body: []byte("x")},
				Channels: 1, Window: 4, Count: n, ConfirmTimeout: 10 * time.Second}
			res, err := broker.RawPublish(context.Background(), []*amqp.Connection{conn}, shape)
			if err != nil {
				t.Fatal(err)
			}
			held, err := ch.QueueDeclarePassive(reject, true, false, false, false, nil)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case res.Returned != 0 || res.Nacked+res.Confirmed != n || int64(held.Messages) != res.Confirmed:
				t.Errorf("unroutable: %+v, %d held in the rejecting queue: want every message nacked or held", res, held.Messages)
			case qt == broker.QueueClassic && res.Nacked != n:
				t.Errorf("classic: %d of %d nacked, want all", res.Nacked, n)
			case res.Nacked < n/2:
				t.Errorf("quorum: only %d of %d nacked (window %d)", res.Nacked, n, shape.Window)
			}
			t.Logf("%s: %d nacked, %d confirmed and held", qt, res.Nacked, res.Confirmed)
			if _, err := ch.QueuePurge(reject, false); err != nil {
				t.Fatal(err)
			}
			shape.Key = "inbound"
			res, err = broker.RawPublish(context.Background(), []*amqp.Connection{conn}, shape)
			if err != nil {
				t.Fatal(err)
			}
			if res.Confirmed != n || res.Nacked != 0 {
				t.Errorf("routable: %+v, want %d confirmed", res, n)
			}
			for q, want := range map[string]int{reject: 0, routed: n} {
				if st, err := ch.QueueDeclarePassive(q, true, false, false, false, nil); err != nil || st.Messages != want {
					t.Errorf("%s holds %d (%v), want %d", q, st.Messages, err, want)
				}
			}
		})
	}
}
