package broker

import (
	"bytes"
	"sort"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// traceMessage is newMessage with Data as the engine writes it for a
// sink that asks for trace fields: the envelope's fields, a Received:
// field (a stand-in here) and the body.
func traceMessage(done sink.Completion, id, sender string, rcpts []string, body []byte) *sink.Message {
	m := newMessage(done, id, sender, rcpts, nil)
	m.Data.B = sink.AppendTrace(m.Data.B[:0], m, m.Recipients)
	m.TraceLen = len(m.Data.B)
	m.Data.B = append(m.Data.B, "Received: from client.example.org ([192.0.2.7])\r\n"...)
	m.Data.B = append(m.Data.B, body...)
	return m
}

// TestTraceContract: with EnvelopeTrace (the default) a message has no
// header table at all, its body is Data exactly (trace fields, Received:,
// message), and the properties are those of the header contract. An
// envelope whose header table could never fit a frame is no limit here.
func TestTraceContract(t *testing.T) {
	cfg := testConfig(t, rabbittest.URL)
	cfg.Envelope = EnvelopeTrace
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	if lim := b.Limits(); lim != (sink.Limits{TraceFields: true}) {
		t.Errorf("Limits = %+v, want TraceFields alone", lim)
	}
	wide := make([]string, 600) // 136 KB of recipients: past any frame
	for i := range wide {
		wide[i] = strings.Repeat("w", 225) + "@" + domainOfLen(14)
	}
	rec := newRecorder()
	msgs := map[string]*sink.Message{
		"QTR1": traceMessage(rec, "QTR1", "a@example.org", []string{"b@example.com", "c@example.net"}, []byte("Subject: x\r\n\r\nhi\r\n")),
		"QTR2": traceMessage(rec, "QTR2", "", []string{"postmaster"}, nil),
		"QTR3": traceMessage(rec, "QTR3", "s@example.org", wide, []byte("wide\r\n")),
	}
	want := map[string][]byte{}
	for id, m := range msgs {
		want[id] = bytes.Clone(m.Data.B)
		b.Submit(m)
	}
	rec.wait(t, len(msgs), 10*time.Second)
	for id := range msgs {
		if err := rec.result(t, id); err != nil {
			t.Errorf("%s: completed with %v, want nil", id, err)
		}
	}
	got := consume(t, cfg.Queue, len(msgs), 200*time.Millisecond, 10*time.Second)
	if len(got) != len(msgs) {
		t.Fatalf("%d messages in the queue, want %d", len(got), len(msgs))
	}
	for _, d := range got {
		m := msgs[d.MessageId]
		if m == nil {
			t.Fatalf("unexpected message_id %q", d.MessageId)
		}
		if d.Headers != nil {
			t.Errorf("%s: headers %v, want no table", d.MessageId, d.Headers)
		}
		if !bytes.Equal(d.Body, want[d.MessageId]) {
			t.Errorf("%s: body\n got %.200q\nwant %.200q", d.MessageId, d.Body, want[d.MessageId])
		}
		if d.ContentType != ContentType || d.AppId != AppID || d.DeliveryMode != amqp.Persistent || d.Timestamp.Unix() != m.Received.Unix() {
			t.Errorf("%s: properties %q %q %d %v", d.MessageId, d.ContentType, d.AppId, d.DeliveryMode, d.Timestamp)
		}
	}
	if !bytes.HasPrefix(want["QTR2"], []byte("Return-Path: <>\r\nX-Original-To: postmaster\r\n")) {
		t.Errorf("null sender: %q", want["QTR2"])
	}
}

// TestTraceDomainCopies: with a {domain} routing key each copy's trace
// fields name only its own domain's recipients, as smtp-recipients does,
// byte for byte; a message of one domain goes out as Data was written.
// With EnvelopeBoth the header table says the same.
func TestTraceDomainCopies(t *testing.T) {
	for _, env := range []string{EnvelopeTrace, EnvelopeBoth} {
		t.Run(env, func(t *testing.T) {
			cfg := testConfig(t, rabbittest.URL)
			cfg.Envelope = env
			cfg.RoutingKey = "in.{domain}"
			b := startBroker(t, cfg)
			waitReady(t, b, readyWait)
			rec := newRecorder()
			m := traceMessage(rec, "QTDOM", "s@example.org", []string{"x@A.Example", "z@b.example", "y@a.example"}, []byte("body\r\n"))
			one := traceMessage(rec, "QTONE", "s@example.org", []string{"p@c.example", "q@C.example"}, []byte("one\r\n"))
			oneData := bytes.Clone(one.Data.B)
			b.Submit(m)
			b.Submit(one)
			rec.wait(t, 2, 10*time.Second)
			for _, id := range []string{"QTDOM", "QTONE"} {
				if err := rec.result(t, id); err != nil {
					t.Fatalf("%s: completed with %v", id, err)
				}
			}
			got := consume(t, cfg.Queue, 3, 200*time.Millisecond, 5*time.Second)
			if len(got) != 3 {
				t.Fatalf("%d copies, want 3", len(got))
			}
			sort.Slice(got, func(i, j int) bool { return got[i].RoutingKey < got[j].RoutingKey })
			const env = "X-Lsmtp-Envelope: port=50123; size=0; body=7BIT; smtputf8=no\r\n"
			const rcv = "Received: from client.example.org ([192.0.2.7])\r\n"
			wantA := "Return-Path: <s@example.org>\r\nX-Original-To: x@A.Example\r\nX-Original-To: y@a.example\r\n" + env + rcv + "body\r\n"
			wantB := "Return-Path: <s@example.org>\r\nX-Original-To: z@b.example\r\n" + env + rcv + "body\r\n"
			for i, w := range []struct {
				key, body string
				rcpts     []string
			}{
				{"in.a.example", wantA, []string{"x@A.Example", "y@a.example"}},
				{"in.b.example", wantB, []string{"z@b.example"}},
				{"in.c.example", string(oneData), []string{"p@c.example", "q@C.example"}},
			} {
				d := got[i]
				if d.RoutingKey != w.key || string(d.Body) != w.body {
					t.Errorf("copy %d: key %q body\n%q\nwant key %q body\n%q", i, d.RoutingKey, d.Body, w.key, w.body)
				}
				if cfg.Envelope == EnvelopeBoth {
					src := m
					if i == 2 {
						src = one
					}
					wantDelivery(t, d, src, []byte(w.body), w.rcpts, "test-node")
				}
			}
		})
	}
}

// TestExchangeType: the type lsmtp declares when none is configured.
func TestExchangeType(t *testing.T) {
	for _, c := range []struct {
		routing, binding, kind, want string
	}{
		{"inbound", "", "", ExchangeDirect},
		{"in.{domain}", "", "", ExchangeTopic}, // bound with in.#
		{"in.{domain}", "in.example.com", "", ExchangeDirect},
		{"in.{domain}", "in.*.com", "", ExchangeTopic},
		{"inbound", "in#bound", "", ExchangeDirect}, // not a wildcard word
		{"inbound", "", "topic", "topic"},
		{"in.{domain}", "", "headers", "headers"},
	} {
		cfg := Config{RoutingKey: c.routing, BindingKey: c.binding, ExchangeType: c.kind}
		if got := cfg.exchangeType(); got != c.want {
			t.Errorf("routing %q binding %q type %q: %q, want %q", c.routing, c.binding, c.kind, got, c.want)
		}
	}
}

// TestDeclareOverOtherExchangeType: an exchange left from before direct
// became the default (topic) cannot be redeclared direct; lsmtp uses it
// as it is, and mail flows. A type set explicitly that does not match is
// a configuration error: no connection is used.
func TestDeclareOverOtherExchangeType(t *testing.T) {
	cfg := testConfig(t, rabbittest.URL)
	admin := rabbittest.AdminChannel(t)
	if err := admin.ExchangeDeclare(cfg.Exchange, "topic", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	rec := newRecorder()
	b.Submit(newMessage(rec, "QOLDTOPIC", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	rec.wait(t, 1, 10*time.Second)
	if err := rec.result(t, "QOLDTOPIC"); err != nil {
		t.Fatalf("completed with %v, want nil", err)
	}
	if got := consume(t, cfg.Queue, 1, 200*time.Millisecond, 5*time.Second); len(got) != 1 {
		t.Fatalf("%d messages in the queue, want 1", len(got))
	}
	// The exchange is still a topic one: redeclaring it so is a no-op.
	if err := rabbittest.AdminChannel(t).ExchangeDeclare(cfg.Exchange, "topic", true, false, false, false, nil); err != nil {
		t.Errorf("exchange is no longer topic: %v", err)
	}

	explicit := testConfig(t, rabbittest.URL)
	explicit.Exchange = cfg.Exchange
	explicit.ExchangeType = ExchangeDirect
	e := startBroker(t, explicit)
	time.Sleep(500 * time.Millisecond)
	if e.Ready() {
		t.Error("ready with --exchange-type direct over a topic exchange")
	}
}

// TestDeclareDirect: with the defaults the exchange is declared direct.
func TestDeclareDirect(t *testing.T) {
	cfg := testConfig(t, rabbittest.URL)
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	if err := rabbittest.AdminChannel(t).ExchangeDeclare(cfg.Exchange, "direct", true, false, false, false, nil); err != nil {
		t.Errorf("exchange is not direct: %v", err)
	}
}
