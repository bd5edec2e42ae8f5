package broker

import (
	"bytes"
	"fmt"
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/lsmtp/lsmtp/internal/natstest"
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
			waitReady(t, b, 5*time.Second)
			if lim := b.Limits(); lim != (sink.Limits{TraceFields: env != EnvelopeHeaders}) {
				t.Errorf("Limits = %+v", lim)
			}
			allBytes := make([]byte, 256)
			for i := range allBytes {
				allBytes[i] = byte(i)
			}
			cases := []struct {
				name   string
				sender string
				rcpts  []string
				body   []byte
				edit   func(*sink.Message)
			}{
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
			rec.wait(t, len(cases), 10*time.Second)
			for id := range msgs {
				if err := rec.result(t, id); err != nil {
					t.Errorf("%s: completed with %v, want nil", id, err)
				}
			}
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
			st := b.Stats()
			if st.Submitted != uint64(len(cases)) || st.Confirmed != uint64(len(cases)) || st.Failed != 0 {
				t.Errorf("stats: %+v", st)
			}
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
	waitReady(t, b, 5*time.Second)
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
	waitReady(t, b, 5*time.Second)
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
	waitReady(t, b, 5*time.Second)
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
