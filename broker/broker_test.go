package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/codec"
	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// wantDelivery checks every property and header of d against m (whose
// data was body) and the recipients expected in this copy.
func wantDelivery(t *testing.T, d amqp.Delivery, m *sink.Message, body []byte, rcpts []string, node string) {
	t.Helper()
	if !bytes.Equal(d.Body, body) {
		t.Errorf("%s: body differs: got %d bytes, want %d", m.QueueID, len(d.Body), len(body))
	}
	if d.DeliveryMode != amqp.Persistent {
		t.Errorf("%s: delivery_mode = %d, want 2", m.QueueID, d.DeliveryMode)
	}
	if d.ContentType != "message/rfc822" {
		t.Errorf("%s: content_type = %q", m.QueueID, d.ContentType)
	}
	// A {domain} copy (its routing key ends in its recipients' domain)
	// is <queue ID>.<domain>; a message published once, the queue ID.
	wantID := m.QueueID
	if len(rcpts) > 0 {
		if _, dom, ok := strings.Cut(strings.ToLower(rcpts[0]), "@"); ok && strings.HasSuffix(d.RoutingKey, "."+dom) {
			wantID += "." + dom
		}
	}
	if d.MessageId != wantID {
		t.Errorf("message_id = %q, want %q", d.MessageId, wantID)
	}
	if d.AppId != "lsmtp" {
		t.Errorf("%s: app_id = %q", m.QueueID, d.AppId)
	}
	if d.Timestamp.Unix() != m.Received.Unix() {
		t.Errorf("%s: timestamp = %v, want %v", m.QueueID, d.Timestamp, m.Received)
	}
	wantRcpts := make([]any, len(rcpts))
	for i, r := range rcpts {
		wantRcpts[i] = r
	}
	want := amqp.Table{
		"smtp-sender":        string(m.Sender),
		"smtp-recipients":    wantRcpts,
		"smtp-client-ip":     m.ClientIP,
		"smtp-client-port":   int32(m.ClientPort),
		"smtp-helo":          string(m.Helo),
		"smtp-declared-size": m.Size,
		"smtp-body":          m.Body.String(),
		"smtp-utf8":          m.SMTPUTF8,
		"smtp-received-at":   m.Received.UTC().Format("2006-01-02T15:04:05.000Z"),
		"smtp-node":          node,
		"smtp-tls-version":   m.TLSVersion,
		"smtp-tls-cipher":    m.TLSCipher,
		"smtp-auth-user":     string(m.AuthUser),
	}
	if !reflect.DeepEqual(d.Headers, want) {
		t.Errorf("%s: headers\n got %#v\nwant %#v", m.QueueID, d.Headers, want)
	}
}

// TestContractRoundTrip publishes messages of every shape through Submit,
// consumes them back and compares body and properties byte for byte.
func TestContractRoundTrip(t *testing.T) {
	cfg := testConfig(t, rabbittest.URL)
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)

	allBytes := allOctets()
	large := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz\r\n"), 40000) // ~1.5 MB: many frames
	cases := []contractCase{
		{"empty", "a@example.org", []string{"b@example.com"}, nil, nil},
		{"null-sender", "", []string{"postmaster@example.com"}, []byte("Subject: bounce\r\n\r\nx\r\n"), nil},
		{"8bit", "a@example.org", []string{"b@example.com"}, allBytes, func(m *sink.Message) { m.Body = sink.Body8BitMIME }},
		{"binary", "a@example.org", []string{"b@example.com"}, allBytes, func(m *sink.Message) { m.Body = sink.BodyBinaryMIME; m.Size = 256 }},
		{"utf8", "jörg@bücher.example", []string{"ünïcode@例え.jp"}, []byte("Subject: grüße\r\n\r\n"), func(m *sink.Message) { m.SMTPUTF8 = true }},
		{"several-rcpts", "a@example.org", []string{"one@x.example", "two@y.example", "three@x.example"}, []byte("hi\r\n"), nil},
		{"large", "a@example.org", []string{"b@example.com"}, large, func(m *sink.Message) { m.Size = int64(len(large)) }},
		{"tls-auth", "a@example.org", []string{"b@example.com"}, []byte("hi\r\n"), func(m *sink.Message) {
			m.TLSVersion, m.TLSCipher, m.AuthUser = "TLS 1.3", "TLS_AES_128_GCM_SHA256", []byte("alice")
		}},
	}
	rec := newRecorder()
	msgs := map[string]*sink.Message{}
	bodies := map[string][]byte{}
	rcpts := map[string][]string{}
	for i, c := range cases {
		id := fmt.Sprintf("Q%02d%s", i, c.name)
		m := newMessage(rec, id, c.sender, c.rcpts, c.body)
		m.Received = time.Date(2024, 5, 1, 12, 34, 56, 789_000_000+i, time.FixedZone("x", 3600))
		if c.edit != nil {
			c.edit(m)
		}
		msgs[id], bodies[id], rcpts[id] = m, c.body, c.rcpts
		b.Submit(m)
	}
	waitCompleted(t, rec, msgs)
	if rec.dataLeft != 0 {
		t.Errorf("%d messages completed before their data was released", rec.dataLeft)
	}
	for _, d := range consume(t, cfg.Queue, len(cases), 200*time.Millisecond, 10*time.Second) {
		m := msgs[d.MessageId]
		if m == nil {
			t.Errorf("unexpected message_id %q", d.MessageId)
			continue
		}
		wantDelivery(t, d, m, bodies[d.MessageId], rcpts[d.MessageId], "test-node")
		if d.RoutingKey != "inbound" || d.Exchange != cfg.Exchange {
			t.Errorf("%s: routed %q via %q", d.MessageId, d.RoutingKey, d.Exchange)
		}
		delete(msgs, d.MessageId)
	}
	if len(msgs) != 0 {
		t.Errorf("%d messages not in the queue", len(msgs))
	}
	checkAllConfirmed(t, b, len(cases))
}

// TestDomainRouting publishes one copy per recipient domain, each with
// only that domain's recipients, routed by the lower-cased domain.
func TestDomainRouting(t *testing.T) {
	cfg := testConfig(t, rabbittest.URL)
	cfg.RoutingKey = "in.{domain}"
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	// A second queue bound to one domain only proves the key really is per domain.
	admin := rabbittest.AdminChannel(t)
	only := cfg.Queue + ".only-b"
	if _, err := admin.QueueDeclare(only, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := admin.QueueBind(only, "in.b.example", cfg.Exchange, false, nil); err != nil {
		t.Fatal(err)
	}

	rec := newRecorder()
	m := newMessage(rec, "QDOM1", "s@example.org", []string{"x@A.Example", "z@b.example", "y@a.example"}, []byte("body\r\n"))
	b.Submit(m)
	rec.wait(t, 1, 10*time.Second)
	if err := rec.result(t, "QDOM1"); err != nil {
		t.Fatalf("completed with %v", err)
	}
	got := consume(t, cfg.Queue, 2, 200*time.Millisecond, 5*time.Second)
	if len(got) != 2 {
		t.Fatalf("%d copies, want 2", len(got))
	}
	sort.Slice(got, func(i, j int) bool { return got[i].RoutingKey < got[j].RoutingKey })
	wantDelivery(t, got[0], m, []byte("body\r\n"), []string{"x@A.Example", "y@a.example"}, "test-node")
	wantDelivery(t, got[1], m, []byte("body\r\n"), []string{"z@b.example"}, "test-node")
	if got[0].RoutingKey != "in.a.example" || got[1].RoutingKey != "in.b.example" {
		t.Errorf("routing keys %q, %q", got[0].RoutingKey, got[1].RoutingKey)
	}
	onlyB := consume(t, only, 1, 200*time.Millisecond, 5*time.Second)
	if len(onlyB) != 1 || onlyB[0].RoutingKey != "in.b.example" {
		t.Errorf("queue bound to in.b.example got %d messages", len(onlyB))
	}
}

// TestUnroutable: the exchange exists but nothing is bound (topology
// managed elsewhere, Declare off): basic.return makes it a 451, never a 250.
func TestUnroutable(t *testing.T) {
	cfg := testConfig(t, rabbittest.URL)
	cfg.Declare = false
	admin := rabbittest.AdminChannel(t)
	if err := admin.ExchangeDeclare(cfg.Exchange, "topic", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	rec := newRecorder()
	for i := 0; i < 3; i++ {
		b.Submit(newMessage(rec, fmt.Sprintf("QUNR%d", i), "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	}
	rec.wait(t, 3, 10*time.Second)
	for i := 0; i < 3; i++ {
		err := rec.result(t, fmt.Sprintf("QUNR%d", i))
		var se *codec.Reply
		if !errors.As(err, &se) || se.Code != 451 || err != ErrUnroutable {
			t.Errorf("message %d: completed with %v, want %v", i, err, ErrUnroutable)
		}
	}
	if st := b.Stats(); st.Returned != 3 || st.Failed != 3 || st.Confirmed != 0 {
		t.Errorf("stats: %+v", st)
	}
}

// TestMissingExchange: Declare off and no exchange at all: RabbitMQ closes
// the channel (404) and the messages are answered 451; the worker reopens
// its channel and the next message works once the exchange exists.
func TestMissingExchange(t *testing.T) {
	cfg := testConfig(t, rabbittest.URL)
	cfg.Declare = false
	cfg.PublishRetryWindow = 0 // asserts the immediate 451; with a window the message waits for the exchange
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	rec := newRecorder()
	b.Submit(newMessage(rec, "QMISS", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	rec.wait(t, 1, 10*time.Second)
	if err := rec.result(t, "QMISS"); err != sink.ErrUnavailable {
		t.Fatalf("completed with %v, want %v", err, sink.ErrUnavailable)
	}
	declareTopology(t, cfg)
	// Until the worker has reopened its channel, messages fail fast; retry
	// like a client would.
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; ; i++ {
		id := fmt.Sprintf("QAGAIN%d", i)
		b.Submit(newMessage(rec, id, "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
		rec.wait(t, 2+i, 10*time.Second)
		if rec.result(t, id) == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no message accepted after the exchange was created")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestNack: a classic queue with x-max-length 1 and reject-publish NACKs
// the second message: 451, never 250.
func TestNack(t *testing.T) {
	cfg := testConfig(t, rabbittest.URL)
	cfg.PublishRetryWindow = 0 // without a window a NACK is a 451 at once; TestNackRetried has the window
	cfg.QueueType = QueueClassic
	cfg.MaxLength = 1
	cfg.Overflow = "reject-publish"
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	rec := newRecorder()
	b.Submit(newMessage(rec, "QFIRST", "a@example.org", []string{"b@example.com"}, []byte("1\r\n")))
	rec.wait(t, 1, 10*time.Second)
	b.Submit(newMessage(rec, "QSECOND", "a@example.org", []string{"b@example.com"}, []byte("2\r\n")))
	rec.wait(t, 2, 10*time.Second)
	if err := rec.result(t, "QFIRST"); err != nil {
		t.Errorf("first: %v, want nil", err)
	}
	if err := rec.result(t, "QSECOND"); err != sink.ErrUnavailable {
		t.Errorf("second: %v, want %v", err, sink.ErrUnavailable)
	}
	if st := b.Stats(); st.Nacked != 1 {
		t.Errorf("stats: %+v", st)
	}
}

// TestBrokerDownAtStart: New returns without a broker, Submit answers 451
// at once; the first URL never answers, the second comes up later, and
// mail flows without a restart.
func TestBrokerDownAtStart(t *testing.T) {
	p := newProxy(t)
	p.Down()
	cfg := testConfig(t, "amqp://guest:guest@127.0.0.1:1/")
	cfg.URLs = append(cfg.URLs, proxyURL(p))
	cfg.PublishRetryWindow = 0 // asserts the immediate 451 while down; TestDownLongerThanWindow has the window
	b := startBroker(t, cfg)
	if b.Ready() {
		t.Fatal("Ready with no broker reachable")
	}
	rec := newRecorder()
	m := newMessage(rec, "QDOWN", "a@example.org", []string{"b@example.com"}, []byte("x\r\n"))
	b.Submit(m)
	rec.mu.Lock()
	n := rec.n
	rec.mu.Unlock()
	if n != 1 {
		t.Fatal("Submit did not answer at once while disconnected")
	}
	if err := rec.result(t, "QDOWN"); err != sink.ErrUnavailable {
		t.Fatalf("completed with %v, want %v", err, sink.ErrUnavailable)
	}
	if m.Data != nil {
		t.Error("data not released")
	}
	time.Sleep(200 * time.Millisecond)
	if err := p.Up(); err != nil {
		t.Fatal(err)
	}
	waitReady(t, b, readyWait)
	b.Submit(newMessage(rec, "QUP", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	rec.wait(t, 2, 10*time.Second)
	if err := rec.result(t, "QUP"); err != nil {
		t.Fatalf("after the broker came up: %v", err)
	}
	st := b.Stats()
	if st.RejectedDown != 1 || st.ConnectFailures == 0 || st.Connects != 1 || st.Confirmed != 1 {
		t.Errorf("stats: %+v", st)
	}
	got := consume(t, cfg.Queue, 1, 200*time.Millisecond, 5*time.Second)
	if len(got) != 1 || got[0].MessageId != "QUP" {
		t.Errorf("queue holds %d messages", len(got))
	}
}

// TestConfirmTimeout: a broker that stops answering (stalled network)
// gets the message answered 451 after ConfirmTimeout; the confirm that
// arrives late is ignored and mail flows again afterwards.
func TestConfirmTimeout(t *testing.T) {
	p := newProxy(t)
	cfg := testConfig(t, proxyURL(p))
	cfg.ConfirmTimeout = 400 * time.Millisecond
	cfg.PublishRetryWindow = 0 // one attempt: with a window the timed-out message is republished
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	rec := newRecorder()
	p.Stall()
	start := time.Now()
	b.Submit(newMessage(rec, "QSLOW", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	rec.wait(t, 1, 5*time.Second)
	if took := time.Since(start); took < cfg.ConfirmTimeout {
		t.Errorf("answered after %s, before the timeout", took)
	}
	if err := rec.result(t, "QSLOW"); err != sink.ErrUnavailable {
		t.Fatalf("completed with %v, want %v", err, sink.ErrUnavailable)
	}
	p.Resume()
	b.Submit(newMessage(rec, "QFAST", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	rec.wait(t, 2, 5*time.Second)
	if err := rec.result(t, "QFAST"); err != nil {
		t.Fatalf("after resume: %v", err)
	}
	if st := b.Stats(); st.TimedOut != 1 || st.Confirmed != 1 {
		t.Errorf("stats: %+v", st)
	}
}

// TestRingFull: with the broker stalled and the window used up, once
// RingSize more messages wait Submit answers ErrBusy at once, and
// everything taken before is confirmed once the broker answers again.
func TestRingFull(t *testing.T) {
	p := newProxy(t)
	cfg := testConfig(t, proxyURL(p))
	cfg.Workers, cfg.Window, cfg.RingSize = 1, 1, 2
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	rec := newRecorder()
	p.Stall()
	// 1 in the window, 2 in the ring. The worker takes the first one
	// asynchronously: give it a moment before filling the ring.
	b.Submit(newMessage(rec, "Q0", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	for deadline := time.Now().Add(5 * time.Second); b.Stats().RingLen != 0; {
		if time.Now().After(deadline) {
			t.Fatal("the worker did not take the first message")
		}
		time.Sleep(time.Millisecond)
	}
	b.Submit(newMessage(rec, "Q1", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	b.Submit(newMessage(rec, "Q2", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	for i := 3; i < 6; i++ {
		id := fmt.Sprintf("Q%d", i)
		b.Submit(newMessage(rec, id, "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
		// Answered synchronously, inside Submit.
		if err := rec.result(t, id); err != sink.ErrBusy {
			t.Fatalf("%s: %v, want %v", id, err, sink.ErrBusy)
		}
	}
	p.Resume()
	rec.wait(t, 6, 5*time.Second)
	for i := 0; i < 3; i++ {
		if err := rec.result(t, fmt.Sprintf("Q%d", i)); err != nil {
			t.Errorf("Q%d: %v, want nil", i, err)
		}
	}
	if st := b.Stats(); st.RejectedBusy != 3 || st.Confirmed != 3 {
		t.Errorf("stats: %+v", st)
	}
	// Recovered: the next message goes through.
	b.Submit(newMessage(rec, "QNEXT", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	rec.wait(t, 7, 5*time.Second)
	if err := rec.result(t, "QNEXT"); err != nil {
		t.Errorf("after recovery: %v", err)
	}
}

// TestCloseDrains: Close returns only when every taken message has its
// confirm; Submit after Close answers 421.
func TestCloseDrains(t *testing.T) {
	cfg := testConfig(t, rabbittest.URL)
	b := newReadyBroker(t, cfg)
	rec := newRecorder()
	const n = 500
	for i := 0; i < n; i++ {
		b.Submit(newMessage(rec, fmt.Sprintf("QC%d", i), "a@example.org", []string{"b@example.com"}, bytes.Repeat([]byte("x"), 1000)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	rec.mu.Lock()
	got := rec.n
	rec.mu.Unlock()
	if got != n {
		t.Fatalf("Close returned with %d of %d messages completed", got, n)
	}
	for i := 0; i < n; i++ {
		if err := rec.result(t, fmt.Sprintf("QC%d", i)); err != nil {
			t.Fatalf("QC%d: %v", i, err)
		}
	}
	b.Submit(newMessage(rec, "QLATE", "a@example.org", []string{"b@example.com"}, []byte("x")))
	if err := rec.result(t, "QLATE"); err != sink.ErrShuttingDown {
		t.Fatalf("Submit after Close: %v, want %v", err, sink.ErrShuttingDown)
	}
	if len(consume(t, cfg.Queue, n, 200*time.Millisecond, 10*time.Second)) != n {
		t.Error("queue does not hold every message")
	}
}

// TestCloseDeadline: when ctx ends before the broker confirms, Close
// answers what is left with 451 and returns ctx's error.
func TestCloseDeadline(t *testing.T) {
	p := newProxy(t)
	cfg := testConfig(t, proxyURL(p))
	b := newReadyBroker(t, cfg)
	rec := newRecorder()
	p.Stall()
	const n = 20
	for i := 0; i < n; i++ {
		b.Submit(newMessage(rec, fmt.Sprintf("QD%d", i), "a@example.org", []string{"b@example.com"}, []byte("x")))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := b.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close: %v, want deadline exceeded", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Close took %s", took)
	}
	for i := 0; i < n; i++ {
		if err := rec.result(t, fmt.Sprintf("QD%d", i)); err != sink.ErrUnavailable {
			t.Fatalf("QD%d: %v, want %v", i, err, sink.ErrUnavailable)
		}
	}
}

// TestSubmitDoesNotAllocate checks the reject path Submit takes on an
// event loop (the push path is measured in BenchmarkHandoff).
func TestSubmitDoesNotAllocate(t *testing.T) {
	cfg := testConfig(t, "amqp://guest:guest@127.0.0.1:1/")
	cfg.ReconnectMin, cfg.ReconnectMax = time.Hour, time.Hour // no dialing during the measurement
	cfg.PublishRetryWindow = 0                                // the reject path; with a window Submit pushes (BenchmarkHandoff)
	b := startBroker(t, cfg)
	for b.Stats().ConnectFailures == 0 {
		time.Sleep(time.Millisecond)
	}
	m := &sink.Message{Done: nopCompletion{}}
	if n := testing.AllocsPerRun(1000, func() { b.Submit(m) }); n != 0 {
		t.Errorf("Submit allocates %.1f times per call", n)
	}
}

type nopCompletion struct{}

func (nopCompletion) Complete(*sink.Message, error) {}

func TestConfigValidate(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(*Config)
	}{
		{"no url", func(c *Config) { c.URLs = nil }},
		{"http url", func(c *Config) { c.URLs = []string{"http://x/"} }},
		{"queue type", func(c *Config) { c.QueueType = "stream" }},
		{"workers", func(c *Config) { c.Workers = 0 }},
		{"window", func(c *Config) { c.Window = 0 }},
		{"ring", func(c *Config) { c.RingSize = 1 }},
		{"timeout", func(c *Config) { c.ConfirmTimeout = 0 }},
		{"domain on default exchange", func(c *Config) { c.Exchange = ""; c.RoutingKey = "{domain}" }},
		{"routing key over a short string", func(c *Config) { c.RoutingKey = strings.Repeat("k", 256) }},
		{"no room for a domain", func(c *Config) { c.RoutingKey = strings.Repeat("k", 255) + "{domain}" }},
		{"exchange over a short string", func(c *Config) { c.Exchange = strings.Repeat("x", 256) }},
		{"binding key over a short string", func(c *Config) { c.BindingKey = strings.Repeat("b", 256) }},
		{"node over a short string", func(c *Config) { c.Node = strings.Repeat("n", 256) }},
		{"no domains", func(c *Config) { c.RoutingKey = "in.{domain}"; c.MaxDomains = 0 }},
		{"too many domains", func(c *Config) { c.RoutingKey = "in.{domain}"; c.MaxDomains = maxCopies + 1 }},
		{"negative retry window", func(c *Config) { c.PublishRetryWindow = -time.Second }},
		{"retry window past the client's 10 minutes", func(c *Config) { c.PublishRetryWindow = 10 * time.Minute }},
		{"confirm timeout past the client's 10 minutes", func(c *Config) { c.ConfirmTimeout = 10 * time.Minute }},
		{"negative max waiting", func(c *Config) { c.MaxWaiting = -1 }},
		{"spool without a retry window", func(c *Config) { c.SpoolDir = "/tmp/x"; c.PublishRetryWindow = 0 }},
		{"spool smaller than 1 MiB", func(c *Config) { c.SpoolDir = "/tmp/x"; c.SpoolMaxBytes = 1<<20 - 1 }},
		{"spool max age 0", func(c *Config) { c.SpoolDir = "/tmp/x"; c.SpoolMaxAge = 0 }},
	} {
		cfg := DefaultConfig()
		c.edit(&cfg)
		if cfg.Validate() == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Errorf("default config: %v", err)
	}
	// The longest keys that fit; MaxDomains matters only with {domain}.
	cfg.RoutingKey = strings.Repeat("k", 254) + "{domain}"
	cfg.Exchange = strings.Repeat("x", 255)
	if err := cfg.Validate(); err != nil {
		t.Errorf("255-octet names: %v", err)
	}
	cfg = DefaultConfig()
	cfg.PublishRetryWindow, cfg.ConfirmTimeout = 0, time.Hour // no window: the confirm timeout alone, as before
	if err := cfg.Validate(); err != nil {
		t.Errorf("window 0, confirm timeout 1h: %v", err)
	}
	cfg = DefaultConfig()
	cfg.MaxDomains = 0
	if err := cfg.Validate(); err != nil {
		t.Errorf("static key, max domains 0: %v", err)
	}
	cfg = DefaultConfig()
	cfg.SpoolDir, cfg.SpoolMaxBytes = "/tmp/x", 1<<20
	if err := cfg.Validate(); err != nil {
		t.Errorf("spool of 1 MiB: %v", err)
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"amqp://guest:secret@host:5672/vh": "amqp://guest:xxxxx@host:5672/vh",
		"amqp://host/":                     "amqp://host/",
		"amqp://u:p%zz@host/":              "<unparsable URL>",
		"nats://user:secret@host:4222":     "nats://user:xxxxx@host:4222",
		"nats://s3cr3t-token@host:4222":    "nats://xxxxx@host:4222",
		"tls://host:4222":                  "tls://host:4222",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDomainOf(t *testing.T) {
	for in, want := range map[string]string{
		"a@Example.COM":        "example.com",
		`"x@y"@B.example`:      "b.example",
		"postmaster":           "",
		"u@BÜCHER.example":     "bücher.example",
		"u@[IPv6:2001:db8::1]": "[ipv6:2001:db8::1]",
	} {
		if got := lowerDomain(domainOf([]byte(in))); got != want {
			t.Errorf("domain of %q = %q, want %q", in, got, want)
		}
	}
	if !equalFoldASCII("bücher.example", []byte("BÜCHER.example")) || equalFoldASCII("a.example", []byte("b.example")) {
		t.Error("equalFoldASCII")
	}
}

// Compile-time check: the broker is a sink.
var _ sink.Sink = (*Broker)(nil)

// TestIdleDoesNotSpin: a connected broker with nothing to do uses
// (almost) no CPU: idle workers sleep on the wake-up channel.
func TestIdleDoesNotSpin(t *testing.T) {
	cfg := testConfig(t, rabbittest.URL)
	cfg.Workers = 4
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	before := cpuTime(t)
	time.Sleep(time.Second)
	used := cpuTime(t) - before
	t.Logf("CPU used by an idle broker with 4 workers over 1s: %s", used)
	if used > 100*time.Millisecond {
		t.Errorf("idle broker used %s of CPU in 1s", used)
	}
}

// cpuTime is the CPU this process used so far, user and system.
func cpuTime(t testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestCloseWhileSubmitting: producers keep submitting while Close runs;
// every message is completed exactly once, those after Close with 421.
func TestCloseWhileSubmitting(t *testing.T) {
	cfg := testConfig(t, rabbittest.URL)
	b := newReadyBroker(t, cfg)
	rec := newRecorder()
	var wg sync.WaitGroup
	var submitted atomic.Int64
	for p := 0; p < 3; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			// Until 100 messages after Close began, bounded in count and time.
			deadline := time.Now().Add(10 * time.Second)
			after := 0
			for i := 0; i < 200000 && after < 100 && time.Now().Before(deadline); i++ {
				b.Submit(newMessage(rec, fmt.Sprintf("QW%d-%d", p, i), "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
				submitted.Add(1)
				if b.state.Load()&stateClosing != 0 {
					after++
				}
				if i%64 == 0 {
					time.Sleep(100 * time.Microsecond) // a pace the broker can partly follow
				}
			}
		}(p)
	}
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if int64(rec.n) != submitted.Load() {
		t.Fatalf("%d submitted, %d completions", submitted.Load(), rec.n)
	}
	var ok, shut, other int
	for id, rs := range rec.results {
		if len(rs) != 1 {
			t.Fatalf("%s completed %d times", id, len(rs))
		}
		switch rs[0] {
		case nil:
			ok++
		case sink.ErrShuttingDown:
			shut++
		default:
			other++
		}
	}
	t.Logf("confirmed %d, refused after Close %d, other %d", ok, shut, other)
	if ok == 0 || shut == 0 {
		t.Errorf("want both confirmed and refused messages")
	}
}

// TestMeasureCeiling runs the raw publisher briefly.
func TestMeasureCeiling(t *testing.T) {
	cfg := testConfig(t, rabbittest.URL)
	rate, err := MeasureCeiling(context.Background(), cfg, 2048, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if rate <= 0 {
		t.Fatalf("rate %f", rate)
	}
	t.Logf("ceiling: %.0f msgs/s", rate)
}

func TestBindingKey(t *testing.T) {
	cfg := DefaultConfig()
	cfg.RoutingKey = "in.{domain}"
	if got := cfg.bindingKey(); got != "in.#" {
		t.Errorf("binding key of %q: %q, want in.#", cfg.RoutingKey, got)
	}
}

func TestConfirmLatencyIsObserved(t *testing.T) {
	b := startBroker(t, testConfig(t, DefaultURL))
	waitReady(t, b, 10*time.Second)
	rec := newRecorder()
	for i := 0; i < 5; i++ {
		b.Submit(newMessage(rec, fmt.Sprintf("latency-%d", i), "a@b.test", []string{"c@d.test"}, []byte("hi\r\n")))
	}
	rec.wait(t, 5, 10*time.Second)
	if s := b.ConfirmLatency().Snapshot(); s.Count != 5 || s.Sum <= 0 {
		t.Fatalf("confirm latency: %d observations, sum %v; want 5, > 0", s.Count, s.Sum)
	}
}

// TestLightLoadOneChannel: while the first worker's window has room it
// carries every publish (one channel, so RabbitMQ confirms in that
// channel's batches); the second worker publishes only what the first
// one's full window cannot take.
func TestLightLoadOneChannel(t *testing.T) {
	p := newProxy(t)
	cfg := testConfig(t, proxyURL(p))
	cfg.Workers, cfg.Window = 2, 2
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	// nextTag is the worker's own; the channel count is published after
	// it is set, and a completion after the publish that raised it.
	for deadline := time.Now().Add(5 * time.Second); b.liveChannels.Load() != 2; {
		if time.Now().After(deadline) {
			t.Fatal("the workers did not open their channels")
		}
		time.Sleep(time.Millisecond)
	}
	rec := newRecorder()
	const light = 20
	for i := 0; i < light; i++ {
		b.Submit(newMessage(rec, fmt.Sprintf("L%02d", i), "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
		rec.wait(t, i+1, 5*time.Second)
	}
	if got0, got1 := b.workers[0].nextTag-1, b.workers[1].nextTag-1; got0 != light || got1 != 0 {
		t.Fatalf("one message at a time: workers published %d and %d, want %d and 0", got0, got1, light)
	}

	// Four at once with RabbitMQ not reading: two fill the first window,
	// the other two can only leave the ring on the second worker.
	p.Stall()
	for i := 0; i < 4; i++ {
		b.Submit(newMessage(rec, fmt.Sprintf("H%d", i), "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	}
	for deadline := time.Now().Add(5 * time.Second); b.Stats().RingLen != 0; {
		if time.Now().After(deadline) {
			t.Fatal("the second worker did not take what the first one's window could not")
		}
		time.Sleep(time.Millisecond)
	}
	p.Resume()
	rec.wait(t, light+4, 10*time.Second)
	for i := 0; i < 4; i++ {
		if err := rec.result(t, fmt.Sprintf("H%d", i)); err != nil {
			t.Errorf("H%d: %v, want nil", i, err)
		}
	}
	if got1 := b.workers[1].nextTag - 1; got1 != 2 {
		t.Errorf("under load the second worker published %d, want 2", got1)
	}
	if st := b.Stats(); st.Confirmed != light+4 || st.Failed != 0 {
		t.Errorf("stats: %+v", st)
	}
}
