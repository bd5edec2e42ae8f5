package broker

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/valyala/bytebufferpool"

	"github.com/lsmtp/lsmtp/internal/faultproxy"
	"github.com/lsmtp/lsmtp/internal/natstest"
	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// testNATSConfig is testConfig for the NATS sink: the test's own stream
// (deleted when it ends) and subject, the envelope in both places.
func testNATSConfig(t testing.TB, url string) (Config, natstest.Names) {
	cfg := DefaultConfig()
	cfg.Sink = SinkNATS
	cfg.Envelope = EnvelopeBoth
	names := natstest.Unique(t)
	cfg.NATSURLs = []string{url}
	cfg.NATSStream = names.Stream
	cfg.NATSSubject = names.Subject + ".inbound"
	cfg.ReconnectMin = 20 * time.Millisecond
	cfg.ReconnectMax = 300 * time.Millisecond
	cfg.ConfirmTimeout = 5 * time.Second
	cfg.Node = "test-node"
	cfg.Logger = newTestLogger(t)
	return cfg, names
}

// wantNATSMessage checks subject, headers and body of a stored message
// against m (whose data was body) and the recipients of this copy.
func wantNATSMessage(t *testing.T, got *jetstream.RawStreamMsg, m *sink.Message, id, subject string, body []byte, rcpts []string, headers bool) {
	t.Helper()
	if !bytes.Equal(got.Data, body) {
		t.Errorf("%s: body differs: got %d bytes %.60q, want %d bytes %.60q", id, len(got.Data), got.Data, len(body), body)
	}
	if got.Subject != subject {
		t.Errorf("%s: subject %q, want %q", id, got.Subject, subject)
	}
	want := nats.Header{HeaderMsgID: {id}}
	if headers {
		for k, v := range map[string][]string{
			"smtp-sender":        {string(m.Sender)},
			"smtp-recipients":    rcpts,
			"smtp-client-ip":     {m.ClientIP},
			"smtp-client-port":   {fmt.Sprint(m.ClientPort)},
			"smtp-helo":          {string(m.Helo)},
			"smtp-declared-size": {fmt.Sprint(m.Size)},
			"smtp-body":          {m.Body.String()},
			"smtp-utf8":          {fmt.Sprint(m.SMTPUTF8)},
			"smtp-received-at":   {m.Received.UTC().Format("2006-01-02T15:04:05.000Z")},
			"smtp-node":          {"test-node"},
			"smtp-tls-version":   {m.TLSVersion},
			"smtp-tls-cipher":    {m.TLSCipher},
			"smtp-auth-user":     {string(m.AuthUser)},
		} {
			want[k] = v
		}
	}
	if !reflect.DeepEqual(got.Header, want) {
		t.Errorf("%s: headers\n got %#v\nwant %#v", id, got.Header, want)
	}
}

// TestNATSContract publishes messages of every shape and reads them back
// from the stream: body byte for byte, Nats-Msg-Id the queue ID, the
// smtp-* headers with one value per recipient.
func TestNATSContract(t *testing.T) {
	for _, env := range []string{EnvelopeBoth, EnvelopeTrace, EnvelopeHeaders} {
		t.Run(env, func(t *testing.T) {
			cfg, names := testNATSConfig(t, natstest.URL)
			cfg.Envelope = env
			b := startBroker(t, cfg)
			waitReady(t, b, readyWait)
			want := sink.Limits{TraceFields: env != EnvelopeHeaders, MaxEnvelope: 32 << 10, RecipientOverhead: len("smtp-recipients: \r\n")}
			if lim := b.Limits(); lim != want {
				t.Errorf("Limits = %+v, want %+v", lim, want)
			}
			// The stock server's max_payload, 1 MiB, less the reserve.
			if n := b.MaxMessageSize(); n != 1<<20-b.tr.(*natsTransport).reserve || n < 1<<20-96<<10 {
				t.Errorf("MaxMessageSize = %d", n)
			}
			allBytes := allOctets()
			cases := []contractCase{
				{"empty", "a@example.org", []string{"b@example.com"}, nil, nil},
				{"null-sender", "", []string{"postmaster"}, []byte("Subject: bounce\r\n\r\nx\r\n"), nil},
				{"binary", "a@example.org", []string{"b@example.com"}, allBytes, func(m *sink.Message) { m.Body = sink.BodyBinaryMIME; m.Size = 256 }},
				{"utf8", "jörg@bücher.example", []string{"ünïcode@例え.jp"}, []byte("Subject: grüße\r\n\r\n"), func(m *sink.Message) { m.SMTPUTF8 = true }},
				{"several-rcpts", "a@example.org", []string{"one@x.example", "two@y.example", "three@x.example"}, []byte("hi\r\n"), nil},
				{"tls-auth", "a@example.org", []string{"b@example.com"}, []byte("hi\r\n"), func(m *sink.Message) {
					m.TLSVersion, m.TLSCipher, m.AuthUser = "TLS 1.3", "TLS_AES_128_GCM_SHA256", []byte("alice")
				}},
			}
			rec := newRecorder()
			msgs := map[string]*sink.Message{}
			datas := map[string][]byte{}
			rcpts := map[string][]string{}
			for i, c := range cases {
				id := fmt.Sprintf("Q%02d%s", i, c.name)
				var m *sink.Message
				if env == EnvelopeHeaders {
					m = newMessage(rec, id, c.sender, c.rcpts, c.body)
				} else {
					m = traceMessage(rec, id, c.sender, c.rcpts, c.body)
				}
				m.Received = time.Date(2024, 5, 1, 12, 34, 56, 789_000_000+i, time.FixedZone("x", 3600))
				if c.edit != nil {
					c.edit(m)
				}
				msgs[id], datas[id], rcpts[id] = m, bytes.Clone(m.Data.B), c.rcpts
				b.Submit(m)
			}
			waitCompleted(t, rec, msgs)
			got := natstest.Messages(t, names.Stream)
			if len(got) != len(cases) {
				t.Fatalf("%d messages in the stream, want %d", len(got), len(cases))
			}
			for _, g := range got {
				id := g.Header.Get(HeaderMsgID)
				m := msgs[id]
				if m == nil {
					t.Errorf("unexpected Nats-Msg-Id %q", id)
					continue
				}
				wantNATSMessage(t, g, m, id, cfg.NATSSubject, datas[id], rcpts[id], env != EnvelopeTrace)
			}
			checkAllConfirmed(t, b, len(cases))
		})
	}
}

// TestNATSDomainCopies: a {domain} subject publishes one copy per
// recipient domain, each naming only its own recipients (in its trace
// fields and its headers), with Nats-Msg-Id <queue ID>.<domain>.
func TestNATSDomainCopies(t *testing.T) {
	cfg, names := testNATSConfig(t, natstest.URL)
	cfg.NATSSubject = names.Subject + ".in.{domain}"
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	if lim := b.Limits(); !lim.CopyPerDomain || lim.MaxDomains != cfg.MaxDomains || lim.MaxDomain < 255 {
		t.Errorf("Limits = %+v", lim)
	}
	rec := newRecorder()
	m := traceMessage(rec, "QDOM1", "s@example.org", []string{"x@A.Example", "z@b.example", "y@a.example"}, []byte("body\r\n"))
	rest := bytes.Clone(m.Data.B[m.TraceLen:])
	b.Submit(m)
	rec.wait(t, 1, 10*time.Second)
	if err := rec.result(t, "QDOM1"); err != nil {
		t.Fatalf("completed with %v", err)
	}
	got := natstest.Messages(t, names.Stream)
	if len(got) != 2 {
		t.Fatalf("%d copies, want 2", len(got))
	}
	sort.Slice(got, func(i, j int) bool { return got[i].Subject < got[j].Subject })
	for i, c := range []struct {
		domain string
		rcpts  []string
	}{{"a.example", []string{"x@A.Example", "y@a.example"}}, {"b.example", []string{"z@b.example"}}} {
		var raw [][]byte
		for _, r := range c.rcpts {
			raw = append(raw, []byte(r))
		}
		body := append(sink.AppendTrace(nil, m, raw), rest...)
		wantNATSMessage(t, got[i], m, "QDOM1."+c.domain, names.Subject+".in."+c.domain, body, c.rcpts, true)
	}
}

// TestNATSUnreachable: with the server unreachable, a message waits for
// its deadline and gets 451 4.3.0; once the server is back (the proxy
// up) the next one is stored, without a restart.
func TestNATSUnreachable(t *testing.T) {
	p := natstest.Proxy(t)
	p.Down()
	cfg, names := testNATSConfig(t, natstest.ProxyURL(p))
	cfg.PublishRetryWindow = 300 * time.Millisecond
	cfg.ConfirmTimeout = 300 * time.Millisecond
	b := startBroker(t, cfg)
	rec := newRecorder()
	b.Submit(traceMessage(rec, "QDOWN1", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	rec.wait(t, 1, 5*time.Second)
	if err := rec.result(t, "QDOWN1"); err != sink.ErrUnavailable {
		t.Fatalf("completed with %v, want %v", err, sink.ErrUnavailable)
	}
	if r := sink.Reply(rec.result(t, "QDOWN1")); r.Code != 451 || r.Enhanced != "4.3.0" {
		t.Errorf("reply %d %s", r.Code, r.Enhanced)
	}
	if err := p.Up(); err != nil {
		t.Fatal(err)
	}
	waitReady(t, b, readyWait)
	b.Submit(traceMessage(rec, "QDOWN2", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	rec.wait(t, 2, 5*time.Second)
	if err := rec.result(t, "QDOWN2"); err != nil {
		t.Fatalf("after recovery: completed with %v", err)
	}
	if n := natstest.Count(t, names.Stream); n != 1 {
		t.Errorf("%d messages in the stream, want 1", n)
	}
}

// TestNATSStreamFull: a stream at its MaxBytes with discard new refuses
// the message; it is retried within its window and then answered 451
// 4.3.1, and the stream holds only what fitted.
func TestNATSStreamFull(t *testing.T) {
	cfg, names := testNATSConfig(t, natstest.URL)
	cfg.NATSMaxBytes = 4096
	cfg.PublishRetryWindow = 500 * time.Millisecond
	cfg.ConfirmTimeout = 500 * time.Millisecond
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	rec := newRecorder()
	b.Submit(traceMessage(rec, "QFULL1", "a@example.org", []string{"b@example.com"}, testBody(3000)))
	rec.wait(t, 1, 5*time.Second)
	if err := rec.result(t, "QFULL1"); err != nil {
		t.Fatalf("first message: %v", err)
	}
	b.Submit(traceMessage(rec, "QFULL2", "a@example.org", []string{"b@example.com"}, testBody(3000)))
	rec.wait(t, 2, 5*time.Second)
	err := rec.result(t, "QFULL2")
	if err != ErrStorageFull {
		t.Fatalf("second message: completed with %v, want %v", err, ErrStorageFull)
	}
	if r := sink.Reply(err); r.Code != 451 || r.Enhanced != "4.3.1" {
		t.Errorf("reply %d %s", r.Code, r.Enhanced)
	}
	if n := natstest.Count(t, names.Stream); n != 1 {
		t.Errorf("%d messages in the stream, want 1", n)
	}
	if st := b.Stats(); st.Nacked == 0 || st.Expired != 1 {
		t.Errorf("stats: nacked %d expired %d", st.Nacked, st.Expired)
	}
}

// TestNATSDuplicateStoredOnce: a publish of a queue ID the stream already
// holds, within its duplicate window, is acknowledged (the message is
// answered 250) and stored once: first two messages with one queue ID,
// then the broker's own republish of a message whose PubAck it never got
// (the proxy holds the server's replies, so the publish reaches the
// stream but its PubAck does not reach lsmtp; the cut connection makes it
// publish again on the next one).
func TestNATSDuplicateStoredOnce(t *testing.T) {
	p := natstest.Proxy(t)
	cfg, names := testNATSConfig(t, natstest.ProxyURL(p))
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	rec := newRecorder()

	// Direct double publish.
	b.Submit(traceMessage(rec, "QDUP1", "a@example.org", []string{"b@example.com"}, []byte("one\r\n")))
	rec.wait(t, 1, 5*time.Second)
	b.Submit(traceMessage(rec, "QDUP1", "a@example.org", []string{"b@example.com"}, []byte("one\r\n")))
	rec.wait(t, 2, 5*time.Second)
	for _, err := range rec.results["QDUP1"] {
		if err != nil {
			t.Fatalf("QDUP1 completed with %v", err)
		}
	}
	if n := natstest.Count(t, names.Stream); n != 1 {
		t.Fatalf("%d messages in the stream after a double publish, want 1", n)
	}
	if st := b.Stats(); st.Duplicates != 1 {
		t.Errorf("Duplicates = %d, want 1", st.Duplicates)
	}

	// The republish after a lost PubAck.
	p.HoldReplies()
	m := traceMessage(rec, "QDUP2", "a@example.org", []string{"b@example.com"}, []byte("two\r\n"))
	data := bytes.Clone(m.Data.B)
	b.Submit(m)
	for deadline := time.Now().Add(5 * time.Second); natstest.Count(t, names.Stream) < 2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the publish did not reach the stream")
		}
	}
	rec.mu.Lock()
	n := rec.n
	rec.mu.Unlock()
	if n != 2 {
		t.Fatal("completed without its PubAck")
	}
	p.Cut()
	p.Resume()
	rec.wait(t, 3, 10*time.Second)
	if err := rec.result(t, "QDUP2"); err != nil {
		t.Fatalf("QDUP2 completed with %v", err)
	}
	got := natstest.Messages(t, names.Stream)
	if len(got) != 2 {
		t.Fatalf("%d messages in the stream, want 2", len(got))
	}
	wantNATSMessage(t, got[1], m, "QDUP2", cfg.NATSSubject, data, []string{"b@example.com"}, true)
	st := b.Stats()
	if st.Duplicates != 2 || st.Republished != 1 || st.Lost != 1 {
		t.Errorf("stats: duplicates %d republished %d lost %d, want 2, 1, 1", st.Duplicates, st.Republished, st.Lost)
	}
}

// TestNATSCutUnderLoad: messages keep coming while the connection is cut
// every 100 ms. Every message is answered 250 within its retry window,
// and the stream holds each exactly once: what was published again
// after a lost PubAck was deduplicated.
func TestNATSCutUnderLoad(t *testing.T) {
	p := natstest.Proxy(t)
	cfg, names := testNATSConfig(t, natstest.ProxyURL(p))
	cfg.Logger = rabbittest.Logger(t, slog.LevelError) // every cut is a warning
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	rec := newRecorder()
	const loadTime = 2 * time.Second
	total := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		for end := time.Now().Add(loadTime); time.Now().Before(end); total++ {
			b.Submit(traceMessage(rec, fmt.Sprintf("QCUT%05d", total), "a@example.org", []string{"b@example.com"}, testBody(512)))
			if total%20 == 0 {
				time.Sleep(2 * time.Millisecond)
				// As the engine's connection limit would: a bounded
				// number of messages held at once, so that none is
				// answered ErrBusy however slow the run.
				for b.pending.Load() > 2000 {
					time.Sleep(time.Millisecond)
				}
			}
		}
	}()
	cuts := 0
	for {
		select {
		case <-done:
		case <-time.After(100 * time.Millisecond):
			p.Cut()
			cuts++
			continue
		}
		break
	}
	rec.wait(t, total, 30*time.Second)
	failed := 0
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for id, errs := range rec.results {
		if len(errs) != 1 || errs[0] != nil {
			failed++
			if failed < 5 {
				t.Errorf("%s: %v", id, errs)
			}
		}
	}
	ids := map[string]int{}
	for _, m := range natstest.Messages(t, names.Stream) {
		ids[m.Header.Get(HeaderMsgID)]++
	}
	lost, twice := 0, 0
	for i := 0; i < total; i++ {
		switch ids[fmt.Sprintf("QCUT%05d", i)] {
		case 0:
			lost++
		case 1:
		default:
			twice++
		}
	}
	st := b.Stats()
	t.Logf("%d messages, %d cuts, %d connects; lost in flight %d, republished %d, deduplicated %d",
		total, cuts, st.Connects, st.Lost, st.Republished, st.Duplicates)
	if failed != 0 || lost != 0 || twice != 0 || len(ids) != total {
		t.Errorf("failed %d, lost %d, stored twice %d, distinct %d of %d", failed, lost, twice, len(ids), total)
	}
	// A cut can land on a connection still being set up, or twice on
	// one connection on a busy machine: the faults took when a good part
	// of them cost a connection.
	if cuts < 10 || st.Disconnects < 5 || st.Connects < 5 {
		t.Errorf("%d connects and %d disconnects for %d cuts", st.Connects, st.Disconnects, cuts)
	}
}

// TestNATSCloseDrains: Close waits for the PubAcks of what it holds, and
// what has none when its context ends is answered 451 4.3.0, never 250.
func TestNATSCloseDrains(t *testing.T) {
	p := natstest.Proxy(t)
	cfg, names := testNATSConfig(t, natstest.ProxyURL(p))
	b := newReadyBroker(t, cfg)
	rec := newRecorder()
	for i := 0; i < 50; i++ {
		b.Submit(traceMessage(rec, fmt.Sprintf("QDRAIN%02d", i), "a@example.org", []string{"b@example.com"}, testBody(256)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for i := 0; i < 50; i++ {
		if err := rec.result(t, fmt.Sprintf("QDRAIN%02d", i)); err != nil {
			t.Errorf("QDRAIN%02d: %v", i, err)
		}
	}
	if n := natstest.Count(t, names.Stream); n != 50 {
		t.Errorf("%d messages in the stream, want 50", n)
	}

	// PubAcks held back: Close's deadline answers the rest.
	cfg2, _ := testNATSConfig(t, natstest.ProxyURL(p))
	b2 := newReadyBroker(t, cfg2)
	p.HoldReplies()
	defer p.Resume()
	rec2 := newRecorder()
	b2.Submit(traceMessage(rec2, "QHELD", "a@example.org", []string{"b@example.com"}, testBody(256)))
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if err := b2.Close(ctx2); err == nil {
		t.Error("Close returned nil with a PubAck outstanding")
	}
	rec2.wait(t, 1, 5*time.Second)
	if err := rec2.result(t, "QHELD"); err != sink.ErrUnavailable {
		t.Errorf("held message completed with %v, want %v", err, sink.ErrUnavailable)
	}
}

// TestNATSSpool: with NATS unreachable a spooled message is answered 250
// at once, and published into the stream once the server is back.
func TestNATSSpool(t *testing.T) {
	p := natstest.Proxy(t)
	p.Down()
	cfg, names := testNATSConfig(t, natstest.ProxyURL(p))
	cfg.SpoolDir = t.TempDir()
	b := startBroker(t, cfg)
	rec := newRecorder()
	m := traceMessage(rec, "QSPOOL", "a@example.org", []string{"b@example.com"}, []byte("spooled\r\n"))
	data := bytes.Clone(m.Data.B)
	b.Submit(m)
	rec.wait(t, 1, 5*time.Second)
	if err := rec.result(t, "QSPOOL"); err != nil {
		t.Fatalf("spooled message: %v", err)
	}
	if err := p.Up(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); b.Stats().Replayed != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not replayed: %+v", b.Stats())
		}
	}
	got := natstest.Messages(t, names.Stream)
	if len(got) != 1 {
		t.Fatalf("%d messages in the stream, want 1", len(got))
	}
	if !bytes.Equal(got[0].Data, data) || got[0].Header.Get(HeaderMsgID) != "QSPOOL" {
		t.Errorf("replayed %q with Nats-Msg-Id %q", got[0].Data, got[0].Header.Get(HeaderMsgID))
	}
}

// TestNATSNoResponders: with NATSDeclare off and no stream for the
// subject, the publish has no responders: retried within the window,
// then 451 4.3.0; a stream created meanwhile takes the next message.
func TestNATSNoResponders(t *testing.T) {
	cfg, names := testNATSConfig(t, natstest.URL)
	cfg.NATSDeclare = false
	cfg.PublishRetryWindow = 300 * time.Millisecond
	cfg.ConfirmTimeout = 300 * time.Millisecond
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	rec := newRecorder()
	b.Submit(traceMessage(rec, "QNR1", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	rec.wait(t, 1, 5*time.Second)
	if err := rec.result(t, "QNR1"); err != sink.ErrUnavailable {
		t.Fatalf("completed with %v, want %v", err, sink.ErrUnavailable)
	}
	if st := b.Stats(); st.Nacked == 0 || st.Retried == 0 {
		t.Errorf("stats: nacked %d retried %d, want both > 0", st.Nacked, st.Retried)
	}
	natstest.CreateStream(t, names.Stream, 0, cfg.NATSSubject)
	b.Submit(traceMessage(rec, "QNR2", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	rec.wait(t, 2, 5*time.Second)
	if err := rec.result(t, "QNR2"); err != nil {
		t.Fatalf("with the stream there: %v", err)
	}
}

// TestNATSStreamFullNoRetry: without a retry window a full stream is
// answered 451 4.3.1 at once.
func TestNATSStreamFullNoRetry(t *testing.T) {
	cfg, _ := testNATSConfig(t, natstest.URL)
	cfg.NATSMaxBytes = 1024
	cfg.PublishRetryWindow = 0
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	rec := newRecorder()
	b.Submit(traceMessage(rec, "QFNR", "a@example.org", []string{"b@example.com"}, testBody(2000)))
	rec.wait(t, 1, 5*time.Second)
	if err := rec.result(t, "QFNR"); err != ErrStorageFull {
		t.Fatalf("completed with %v, want %v", err, ErrStorageFull)
	}
	if st := b.Stats(); st.Retried != 0 || st.Failed != 1 {
		t.Errorf("stats: retried %d failed %d, want 0 and 1", st.Retried, st.Failed)
	}
}

// TestNATSDeclareUpdatesStream: an existing stream gets lsmtp's settings
// (the subject added, max bytes, discard new, the duplicate window) and
// keeps the others.
func TestNATSDeclareUpdatesStream(t *testing.T) {
	cfg, names := testNATSConfig(t, natstest.URL)
	natstest.CreateStream(t, names.Stream, 0, names.Subject+".other")
	js := natstest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, names.Stream)
	if err != nil {
		t.Fatal(err)
	}
	c := s.CachedInfo().Config
	c.MaxMsgs, c.Duplicates = 1000, 30*time.Second
	if _, err := js.UpdateStream(ctx, c); err != nil {
		t.Fatal(err)
	}
	cfg.NATSMaxBytes = 1 << 20
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := info.Config
	if !reflect.DeepEqual(got.Subjects, []string{names.Subject + ".other", cfg.NATSSubject}) || got.MaxBytes != 1<<20 ||
		got.Discard != jetstream.DiscardNew || got.Duplicates != 2*time.Minute || got.MaxMsgs != 1000 || got.Storage != jetstream.FileStorage {
		t.Errorf("stream config after declare: subjects %v max bytes %d discard %v duplicates %s max msgs %d",
			got.Subjects, got.MaxBytes, got.Discard, got.Duplicates, got.MaxMsgs)
	}
}

// TestNATSInterestStreamRefused: a stream with interest retention drops
// a message no consumer is bound for right after acknowledging it, so
// lsmtp does not publish into one (each 250 would be a silent loss),
// whether it declares the stream or only uses it.
func TestNATSInterestStreamRefused(t *testing.T) {
	for _, declare := range []bool{true, false} {
		t.Run(fmt.Sprintf("declare=%v", declare), func(t *testing.T) {
			cfg, names := testNATSConfig(t, natstest.URL)
			cfg.NATSDeclare = declare
			cfg.PublishRetryWindow = 300 * time.Millisecond
			cfg.ConfirmTimeout = 300 * time.Millisecond
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := natstest.JetStream(t).CreateStream(ctx, jetstream.StreamConfig{Name: names.Stream,
				Subjects: []string{cfg.NATSSubject}, Storage: jetstream.FileStorage, Retention: jetstream.InterestPolicy}); err != nil {
				t.Fatal(err)
			}
			b := startBroker(t, cfg)
			for deadline := time.Now().Add(5 * time.Second); b.Stats().ConnectFailures < 2; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("no failed connect: %+v", b.Stats())
				}
			}
			if b.Ready() {
				t.Fatal("ready with an interest-retention stream")
			}
			rec := newRecorder()
			b.Submit(traceMessage(rec, "QINTEREST", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
			rec.wait(t, 1, 5*time.Second)
			if err := rec.result(t, "QINTEREST"); err == nil {
				t.Fatal("answered 250 by a broker that never published")
			}
		})
	}
}

// TestNATSURLList: one --nats-url names one server. nats.go takes a
// comma-separated value as a list, and the log lines would then show
// every password but the first: such a value is refused, and the error
// names no password.
func TestNATSURLList(t *testing.T) {
	for _, u := range []string{
		"nats://u:first@127.0.0.1:4222,nats://u:second@127.0.0.1:4223",
		"nats://u:first,second@127.0.0.1:4222", // a comma in the password itself
		"nats://first,second@127.0.0.1:4222",   // in a token
	} {
		cfg, _ := testNATSConfig(t, natstest.URL)
		cfg.NATSURLs = []string{u}
		err := cfg.Validate()
		if err == nil {
			t.Errorf("%s: accepted", u)
			continue
		}
		if s := err.Error(); strings.Contains(s, "first") || strings.Contains(s, "second") || !strings.Contains(s, "one server per URL") {
			t.Errorf("error %q", s)
		}
	}
}

// TestNATSTimedOutPublishRecycles: a publish whose PubAck does not come
// within ConfirmTimeout ends its worker's JetStream context (so that no
// later publish can be handed the late PubAck under a reused reply
// token) and is republished on a new one at once, not after a channel
// failure's backoff; the stream's duplicate window keeps one copy.
func TestNATSTimedOutPublishRecycles(t *testing.T) {
	p := natstest.Proxy(t)
	cfg, names := testNATSConfig(t, natstest.ProxyURL(p))
	cfg.NATSWorkers = 1
	cfg.ConfirmTimeout = 300 * time.Millisecond
	cfg.PublishRetryWindow = 5 * time.Second
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	rec := newRecorder()
	p.HoldReplies()
	b.Submit(traceMessage(rec, "QRECYCLE", "a@example.org", []string{"b@example.com"}, []byte("held\r\n")))
	for deadline := time.Now().Add(5 * time.Second); b.Stats().TimedOut == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the publish did not time out: %+v", b.Stats())
		}
	}
	time.Sleep(100 * time.Millisecond) // the republish goes out on the new context, its PubAck held too
	p.Resume()
	rec.wait(t, 1, 5*time.Second)
	if err := rec.result(t, "QRECYCLE"); err != nil {
		t.Fatalf("completed with %v", err)
	}
	st := b.Stats()
	if st.ChannelFailures != 0 || st.Republished == 0 {
		t.Errorf("channel failures %d (want 0: a recycle is not a failure), republished %d", st.ChannelFailures, st.Republished)
	}
	if n := natstest.Count(t, names.Stream); n != 1 {
		t.Errorf("%d messages in the stream, want 1", n)
	}
}

// TestNATSReserveHoldsTheLargestEnvelope: a message of exactly the size
// advertised, with every field lsmtp adds at its largest (the envelope
// at Limits' MaxEnvelope, the Received: field at sink.MaxReceived),
// passes the per-message max_payload check in each envelope mode and
// with a {domain} subject: what the engine accepts always fits.
func TestNATSReserveHoldsTheLargestEnvelope(t *testing.T) {
	const maxPayload = 1 << 20
	for _, env := range []string{EnvelopeTrace, EnvelopeHeaders, EnvelopeBoth} {
		for _, subject := range []string{"lsmtp.inbound", "lsmtp.inbound.{domain}"} {
			cfg := DefaultConfig()
			cfg.Sink, cfg.Envelope, cfg.NATSSubject, cfg.Node = SinkNATS, env, subject, strings.Repeat("n", 255)
			b := &Broker{cfg: cfg}
			tr := newNATSTransport(b)
			b.tr = tr
			lim := tr.limits()
			// Recipients of 254 octets up to MaxEnvelope, as the engine counts it.
			m := newMessage(nil, strings.Repeat("Q", 26), strings.Repeat("s", 254), nil, nil)
			used := len(m.Sender) + lim.RecipientOverhead
			for i := 0; used+254+lim.RecipientOverhead <= lim.MaxEnvelope; i++ {
				m.Recipients = append(m.Recipients, []byte(fmt.Sprintf("%03d%s@d.example", i, strings.Repeat("r", 254-13))))
				used += 254 + lim.RecipientOverhead
			}
			m.Helo, m.AuthUser = make([]byte, 512), make([]byte, 255)
			m.TLSVersion, m.TLSCipher = "TLS 1.3", strings.Repeat("c", 64)
			var data []byte
			if tr.trace {
				data = sink.AppendTrace(nil, m, m.Recipients)
			}
			data = append(data, make([]byte, sink.MaxReceived+maxPayload-int(tr.reserve))...)
			m.Data = &bytebufferpool.ByteBuffer{B: data}
			p := &natsPublisher{t: tr, maxPayload: maxPayload}
			if tr.headers {
				p.common = make(nats.Header, 13)
			}
			copies := p.prepare(m)
			if pr := p.check(copies); pr.what != "" {
				t.Errorf("%s, %s: %d recipients: %s, %d octets over %d", env, subject, len(m.Recipients), pr.what, pr.size, pr.limit)
			}
		}
	}
}

// TestNATSRetireTakesNoNewPublishes: after a publish times out, its
// session publishes nothing more on the context it is about to end:
// what waited in the ring goes out on the next one and is answered 250,
// and a publish that was in flight and not yet overdue keeps its own
// time to be confirmed (no retry window here, so a needless failure
// would be a 451 for a stored message).
func TestNATSRetireTakesNoNewPublishes(t *testing.T) {
	// heldQA starts a broker with one worker, room for pending publishes
	// in flight, a 300 ms confirm timeout and no retry window, and
	// submits QA with its PubAck held back by p.
	heldQA := func(t *testing.T, pending int) (*faultproxy.Proxy, *Broker, *recorder, natstest.Names) {
		t.Helper()
		p := natstest.Proxy(t)
		cfg, names := testNATSConfig(t, natstest.ProxyURL(p))
		cfg.NATSWorkers, cfg.NATSMaxPending = 1, pending
		cfg.ConfirmTimeout = 300 * time.Millisecond
		cfg.PublishRetryWindow = 0
		b := startBroker(t, cfg)
		waitReady(t, b, readyWait)
		rec := newRecorder()
		p.HoldReplies()
		b.Submit(traceMessage(rec, "QA", "a@example.org", []string{"b@example.com"}, []byte("a\r\n")))
		return p, b, rec, names
	}
	// waitTimedOut waits for QA's publish to time out.
	waitTimedOut := func(t *testing.T, b *Broker) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); b.Stats().TimedOut == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("QA did not time out")
			}
		}
	}
	t.Run("ring", func(t *testing.T) {
		p, b, rec, names := heldQA(t, 1)
		time.Sleep(50 * time.Millisecond)
		b.Submit(traceMessage(rec, "QM", "a@example.org", []string{"b@example.com"}, []byte("m\r\n"))) // the window is full: it waits in the ring
		waitTimedOut(t, b)
		time.Sleep(20 * time.Millisecond)
		p.Resume()
		rec.wait(t, 2, 5*time.Second)
		if err := rec.result(t, "QA"); err != sink.ErrUnavailable {
			t.Errorf("QA: %v, want %v", err, sink.ErrUnavailable)
		}
		if err := rec.result(t, "QM"); err != nil {
			t.Errorf("QM: %v, want nil (stored: %d messages in the stream)", err, natstest.Count(t, names.Stream))
		}
	})
	t.Run("in flight", func(t *testing.T) {
		p, b, rec, _ := heldQA(t, 4)
		time.Sleep(150 * time.Millisecond)
		b.Submit(traceMessage(rec, "QB", "a@example.org", []string{"b@example.com"}, []byte("b\r\n"))) // due 150 ms after QA
		waitTimedOut(t, b)
		time.Sleep(20 * time.Millisecond) // QB has about 130 ms left
		p.Resume()
		rec.wait(t, 2, 5*time.Second)
		if err := rec.result(t, "QB"); err != nil {
			t.Errorf("QB: %v, want nil: its PubAck came within its own timeout", err)
		}
	})
}

// TestNATSSizeBeforeFirstConnect: before any server has said its
// max_payload, the bound is nats-server's default less the reserve, so a
// message received while NATS is unreachable (and spooled) is never one
// the server cannot take.
func TestNATSSizeBeforeFirstConnect(t *testing.T) {
	p := natstest.Proxy(t)
	p.Down()
	cfg, _ := testNATSConfig(t, natstest.ProxyURL(p))
	b := startBroker(t, cfg)
	tr := b.tr.(*natsTransport)
	if got, want := b.MaxMessageSize(), int64(natsDefaultMaxPayload)-tr.reserve; got != want {
		t.Errorf("MaxMessageSize before the first connect = %d, want %d", got, want)
	}
}

// TestNATSMaxPayloadBelowReserve: a server whose max_payload is smaller
// than what lsmtp may add to a message gets no SIZE of its own (0: the
// engine's max-message-size stands), rather than SIZE 1 and a 552 for
// every message; a message that fits is stored, one that does not is
// answered 451 by the publisher's check.
func TestNATSMaxPayloadBelowReserve(t *testing.T) {
	url := natstest.Server(t, "max_payload: 16384")
	cfg, _ := testNATSConfig(t, url)
	cfg.NATSDeclare = true
	cfg.PublishRetryWindow = 0
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	tr := b.tr.(*natsTransport)
	if tr.reserve < 16384 {
		t.Fatalf("reserve %d: the test needs a max_payload below it", tr.reserve)
	}
	if got := b.MaxMessageSize(); got != 0 {
		t.Fatalf("MaxMessageSize = %d, want 0 (no bound of the server's)", got)
	}
	rec := newRecorder()
	b.Submit(newMessage(rec, "QFITS", "a@example.org", []string{"b@example.com"}, testBody(1000)))
	b.Submit(newMessage(rec, "QLARGE", "a@example.org", []string{"b@example.com"}, testBody(20000)))
	rec.wait(t, 2, 10*time.Second)
	if err := rec.result(t, "QFITS"); err != nil {
		t.Errorf("QFITS: %v, want nil", err)
	}
	if err := rec.result(t, "QLARGE"); err != sink.ErrUnavailable {
		t.Errorf("QLARGE: %v, want %v", err, sink.ErrUnavailable)
	}
}
