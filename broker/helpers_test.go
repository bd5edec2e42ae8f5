package broker

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/valyala/bytebufferpool"

	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// tlog is a slog handler writing to the test log, so that the broker's
// log lines show up next to the test that caused them.
type tlog struct {
	t  testing.TB
	mu *sync.Mutex
	h  slog.Handler
	sb *strings.Builder
}

func newTestLogger(t testing.TB) *slog.Logger {
	sb := &strings.Builder{}
	return slog.New(&tlog{t: t, mu: &sync.Mutex{}, sb: sb, h: slog.NewTextHandler(sb, &slog.HandlerOptions{Level: slog.LevelDebug})})
}

func (l *tlog) Enabled(ctx context.Context, lv slog.Level) bool { return true }
func (l *tlog) Handle(ctx context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sb.Reset()
	err := l.h.Handle(ctx, r)
	l.t.Log(strings.TrimSpace(l.sb.String()))
	return err
}
func (l *tlog) WithAttrs(as []slog.Attr) slog.Handler {
	c := *l
	c.h = l.h.WithAttrs(as)
	return &c
}
func (l *tlog) WithGroup(g string) slog.Handler {
	c := *l
	c.h = l.h.WithGroup(g)
	return &c
}

// testConfig is DefaultConfig with the test's own exchange and queue,
// deleted when the test ends, and quick reconnects. Its envelope is
// EnvelopeBoth, so that the tests check the header table, and a message
// the test builds with trace fields (traceMessage) has them checked in its
// body too; the tests of EnvelopeTrace alone set it themselves.
func testConfig(t testing.TB, url string) Config {
	cfg := DefaultConfig()
	cfg.Envelope = EnvelopeBoth
	name := rabbittest.UniqueName(t, "lsmtp-test")
	cfg.URLs = []string{url}
	cfg.Exchange = name
	cfg.Queue = name
	cfg.RoutingKey = "inbound"
	cfg.ReconnectMin = 20 * time.Millisecond
	cfg.ReconnectMax = 300 * time.Millisecond
	cfg.ConfirmTimeout = 5 * time.Second
	cfg.Node = "test-node"
	cfg.Logger = newTestLogger(t)
	t.Cleanup(func() {
		ch := rabbittest.AdminChannel(t)
		if _, err := ch.QueueDelete(name, false, false, false); err != nil {
			t.Logf("delete queue %s: %v", name, err)
			ch = rabbittest.AdminChannel(t)
		}
		if err := ch.ExchangeDelete(name, false, false); err != nil {
			t.Logf("delete exchange %s: %v", name, err)
		}
	})
	return cfg
}

// startBroker starts a broker closed at the end of the test.
func startBroker(t testing.TB, cfg Config) *Broker {
	t.Helper()
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

// testBody is an n-byte message body of the letters a to z, repeated.
func testBody(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'a' + byte(i%26)
	}
	return b
}

// newReadyBroker starts a broker the test closes itself (what its Close
// returns is part of the test) and waits until it is connected.
func newReadyBroker(t testing.TB, cfg Config) *Broker {
	t.Helper()
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, b, readyWait)
	return b
}

// declareTopology declares cfg's exchange (topic) and quorum queue, bound
// with "#", as Declare does: for the tests that start without them.
func declareTopology(t testing.TB, cfg Config) {
	t.Helper()
	admin := rabbittest.AdminChannel(t)
	if err := admin.ExchangeDeclare(cfg.Exchange, "topic", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.QueueDeclare(cfg.Queue, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		t.Fatal(err)
	}
	if err := admin.QueueBind(cfg.Queue, "#", cfg.Exchange, false, nil); err != nil {
		t.Fatal(err)
	}
}

// readyWait bounds the wait for a broker's first connection: a
// RabbitMQ busy with other work (a benchmark's publishes, another test
// package) can take seconds to answer a connect and the declarations.
const readyWait = 20 * time.Second

func waitReady(t testing.TB, b *Broker, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !b.Ready() {
		if time.Now().After(deadline) {
			t.Fatalf("broker not ready within %s", within)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The workers open their channels right after the connection is up.
	time.Sleep(20 * time.Millisecond)
}

// recorder is a Completion that records every outcome by queue ID.
type recorder struct {
	mu       sync.Mutex
	results  map[string][]error
	n        int
	dataLeft int // messages completed with Data still set
	changed  chan struct{}
}

func newRecorder() *recorder {
	return &recorder{results: map[string][]error{}, changed: make(chan struct{}, 1)}
}

func (r *recorder) Complete(m *sink.Message, err error) {
	r.mu.Lock()
	r.results[m.QueueID] = append(r.results[m.QueueID], err)
	r.n++
	if m.Data != nil {
		r.dataLeft++
	}
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// wait waits until n completions arrived.
func (r *recorder) wait(t testing.TB, n int, within time.Duration) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		got := r.n
		r.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-r.changed:
		case <-deadline.C:
			t.Fatalf("%d of %d messages completed within %s", got, n, within)
		}
	}
}

// result returns the single outcome of id, failing the test when there
// is not exactly one.
func (r *recorder) result(t testing.TB, id string) error {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.results[id]) != 1 {
		t.Fatalf("message %s completed %d times, want once", id, len(r.results[id]))
	}
	return r.results[id][0]
}

// newMessage builds a message as the engine would.
func newMessage(done sink.Completion, id, sender string, rcpts []string, body []byte) *sink.Message {
	m := &sink.Message{
		QueueID:    id,
		Sender:     []byte(sender),
		ClientIP:   "192.0.2.7",
		ClientPort: 50123,
		Helo:       []byte("client.example.org"),
		Received:   time.Now(),
		Data:       bytebufferpool.Get(),
		Done:       done,
	}
	for _, r := range rcpts {
		m.Recipients = append(m.Recipients, []byte(r))
	}
	m.Data.Write(body)
	return m
}

// The broker's own suite and this one share these with every test that
// talks to RabbitMQ.
var (
	consume  = rabbittest.Consume
	newProxy = rabbittest.Proxy
	proxyURL = rabbittest.ProxyURL
)

// contractCase is one message shape a contract test publishes.
type contractCase struct {
	name   string
	sender string
	rcpts  []string
	body   []byte
	edit   func(*sink.Message)
}

// allOctets is each octet value once, in order.
func allOctets() []byte {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

// waitCompleted waits for rec to complete every message of msgs (by
// queue ID), each with nil.
func waitCompleted(t *testing.T, rec *recorder, msgs map[string]*sink.Message) {
	t.Helper()
	rec.wait(t, len(msgs), 10*time.Second)
	for id := range msgs {
		if err := rec.result(t, id); err != nil {
			t.Errorf("%s: completed with %v, want nil", id, err)
		}
	}
}

// checkAllConfirmed fails t unless b counts n messages submitted, n
// confirmed and none failed.
func checkAllConfirmed(t *testing.T, b *Broker, n int) {
	t.Helper()
	st := b.Stats()
	if st.Submitted != uint64(n) || st.Confirmed != uint64(n) || st.Failed != 0 {
		t.Errorf("stats: %+v", st)
	}
}
