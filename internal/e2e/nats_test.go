package e2e

import (
	"bytes"
	"fmt"
	"log/slog"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/lsmtp/lsmtp/broker"
	"github.com/lsmtp/lsmtp/engine"
	"github.com/lsmtp/lsmtp/internal/natstest"
	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// natsBrokerConfig is brokerConfig for the NATS sink: the test's own
// stream (deleted at the end) and subject.
func natsBrokerConfig(t testing.TB, url string) (broker.Config, natstest.Names) {
	cfg := quickConfig(t)
	names := natstest.Unique(t)
	cfg.Sink = broker.SinkNATS
	cfg.NATSURLs = []string{url}
	cfg.NATSStream = names.Stream
	cfg.NATSSubject = names.Subject + ".inbound"
	return cfg, names
}

// TestNATSMessagesRoundTrip sends messages of many shapes over SMTP to
// the NATS sink and reads them back from the stream: the body byte for
// byte as RabbitMQ gets it, Nats-Msg-Id the queue ID of the 250, and the
// smtp-* headers with one value per recipient.
func TestNATSMessagesRoundTrip(t *testing.T) {
	for _, env := range []string{broker.EnvelopeTrace, broker.EnvelopeHeaders, broker.EnvelopeBoth} {
		t.Run(env, func(t *testing.T) { testNATSMessagesRoundTrip(t, env) })
	}
}

func testNATSMessagesRoundTrip(t *testing.T, env string) {
	bc, names := natsBrokerConfig(t, natstest.URL)
	bc.Envelope = env
	s := startStack(t, bc, true)

	txs := append(sharedShapes(), []*transaction{
		{name: "512k", helo: "mid.example", ehlo: true, from: "a@example.org", rcpts: []string{"b@example.com"}, content: lines(512 << 10)},
	}...)
	sendAll(t, s, txs)
	got := map[string][]*jetstream.RawStreamMsg{}
	for _, m := range natstest.Messages(t, names.Stream) {
		id := m.Header.Get(broker.HeaderMsgID)
		got[id] = append(got[id], m)
	}
	if len(got) != len(txs) {
		t.Errorf("%d distinct Nats-Msg-Ids in the stream, want %d", len(got), len(txs))
	}
	for _, tx := range txs {
		t.Run(tx.name, func(t *testing.T) {
			ms := got[tx.queueID]
			if len(ms) != 1 {
				t.Fatalf("message %s is %d times in the stream, want once", tx.queueID, len(ms))
			}
			checkNATSMessage(t, tx, ms[0], bc, bc.NATSSubject)
		})
	}
}

// checkNATSMessage compares m with everything the NATS contract promises
// for tx under bc.Envelope, published to subject.
func checkNATSMessage(t *testing.T, tx *transaction, m *jetstream.RawStreamMsg, bc broker.Config, subject string) {
	t.Helper()
	if m.Subject != subject {
		t.Errorf("subject %q, want %q", m.Subject, subject)
	}
	body := checkTrace(t, tx, m.Data, bc.Envelope, tx.rcpts)
	wantHdr := map[string][]string{broker.HeaderMsgID: {tx.queueID}}
	if bc.Envelope == broker.EnvelopeTrace {
		if !reflect.DeepEqual(map[string][]string(m.Header), wantHdr) {
			t.Errorf("headers %v with --envelope trace, want Nats-Msg-Id alone", m.Header)
		}
		checkBody(t, tx, body, tx.after)
		return
	}
	receivedAt := m.Header.Get(broker.HeaderReceivedAt)
	at, err := time.Parse("2006-01-02T15:04:05.000Z", receivedAt)
	if err != nil {
		t.Errorf("smtp-received-at %q is not RFC 3339 UTC with milliseconds: %v", receivedAt, err)
	}
	if at.Before(tx.before.Add(-time.Millisecond)) || at.After(tx.after) {
		t.Errorf("smtp-received-at %s not within [%s, %s]", at, tx.before.UTC(), tx.after.UTC())
	}
	for k, v := range map[string]string{
		broker.HeaderSender:       tx.from,
		broker.HeaderClientIP:     "127.0.0.1",
		broker.HeaderClientPort:   strconv.Itoa(tx.clientPort),
		broker.HeaderHelo:         tx.helo,
		broker.HeaderDeclaredSize: strconv.FormatInt(tx.declaredSize, 10),
		broker.HeaderBody:         tx.body,
		broker.HeaderUTF8:         strconv.FormatBool(tx.utf8),
		broker.HeaderReceivedAt:   receivedAt,
		broker.HeaderNode:         nodeName,
		broker.HeaderTLSVersion:   "",
		broker.HeaderTLSCipher:    "",
		broker.HeaderAuthUser:     "",
	} {
		wantHdr[k] = []string{v}
	}
	wantHdr[broker.HeaderRecipients] = tx.rcpts
	if !reflect.DeepEqual(map[string][]string(m.Header), wantHdr) {
		t.Errorf("headers\n got %v\nwant %v", m.Header, wantHdr)
	}
	checkBody(t, tx, body, at)
}

// TestNATSSizeFromMaxPayload: the stock nats-server takes 1 MiB per
// message (max_payload), below the default max-message-size. EHLO
// advertises what fits once lsmtp's own fields are added, MAIL SIZE= and
// bodies past it get 552 5.3.4 (a body after its end, the session still
// in step), and a body of exactly that size gets 250 and reaches the
// stream byte for byte, with DATA and with BDAT.
func TestNATSSizeFromMaxPayload(t *testing.T) {
	for _, env := range []string{broker.EnvelopeTrace, broker.EnvelopeBoth} {
		t.Run(env, func(t *testing.T) { testNATSSizeFromMaxPayload(t, env) })
	}
}

func testNATSSizeFromMaxPayload(t *testing.T, env string) {
	bc, names := natsBrokerConfig(t, natstest.URL)
	bc.Envelope = env
	bc.MaxMessageSize = engine.Defaults.MaxMessageSize
	s := startStack(t, bc, true)
	c := s.session(t, "big.example", false)
	r, err := c.Cmd("EHLO big.example")
	if err != nil || r.Code != 250 {
		t.Fatalf("EHLO: %q, %v", r.String(), err)
	}
	var size int64
	for _, l := range r.Lines {
		if v, ok := strings.CutPrefix(l[min(4, len(l)):], "SIZE "); ok {
			size, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	if size != s.brk.MaxMessageSize() || size >= 1<<20 || size < 1<<20-96<<10 {
		t.Fatalf("EHLO advertises SIZE %d; want the broker's bound %d, under max_payload (1 MiB) by what lsmtp adds", size, s.brk.MaxMessageSize())
	}
	t.Logf("EHLO advertises SIZE %d (max_payload %d)", size, 1<<20)
	const tooBig = "552 5.3.4 Message size exceeds fixed maximum message size"
	over := fmt.Sprintf("MAIL FROM:<a@example.org> SIZE=%d", size+1)
	if r, err := c.Cmd(over); err != nil || r.Last() != tooBig {
		t.Fatalf("%s: %q, %v", over, r.String(), err)
	}
	rcpts := []string{"b@example.com", "c@example.com"}
	send := func(what string, content []byte, bdat bool) smtptest.Reply {
		t.Helper()
		if _, err := c.Expect(fmt.Sprintf("MAIL FROM:<a@example.org> SIZE=%d", size), 250); err != nil {
			t.Fatal(err)
		}
		for _, rc := range rcpts {
			if _, err := c.Expect("RCPT TO:<"+rc+">", 250); err != nil {
				t.Fatal(err)
			}
		}
		if bdat {
			half := len(content) / 2
			if err := c.WriteBDAT(content[:half], false); err != nil {
				t.Fatal(err)
			}
			if r, err := c.Read(); err != nil || r.Code != 250 {
				t.Fatalf("%s: first chunk: %q, %v", what, r.String(), err)
			}
			if err := c.WriteBDAT(content[half:], true); err != nil {
				t.Fatal(err)
			}
		} else {
			if _, err := c.Expect("DATA", 354); err != nil {
				t.Fatal(err)
			}
			if err := c.WriteData(content); err != nil {
				t.Fatal(err)
			}
		}
		r, err := c.Read()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return r
	}
	var ids []string
	for _, bdat := range []bool{false, true} {
		what := map[bool]string{false: "DATA", true: "BDAT"}[bdat]
		if r := send(what, lines(int(size)+1), bdat); r.Last() != tooBig {
			t.Fatalf("%s one octet over SIZE: %q", what, r.String())
		}
		if _, err := c.Expect("NOOP", 250); err != nil {
			t.Fatalf("%s: session after the refused body: %v", what, err)
		}
		r := send(what, lines(int(size)), bdat)
		id, ok := r.QueueID()
		if !ok {
			t.Fatalf("%s of exactly SIZE: %q, want 250", what, r.String())
		}
		ids = append(ids, id)
	}
	content := lines(int(size))
	got := natstest.Messages(t, names.Stream)
	if len(got) != len(ids) {
		t.Fatalf("%d messages in the stream, want %d", len(got), len(ids))
	}
	for i, m := range got {
		if id := m.Header.Get(broker.HeaderMsgID); id != ids[i] {
			t.Errorf("message %d: Nats-Msg-Id %q, want %q", i, id, ids[i])
		}
		head, ok := bytes.CutSuffix(m.Data, content)
		if !ok {
			t.Errorf("%s: the stream's body does not end in the %d octets sent", ids[i], size)
			continue
		}
		if !bytes.HasPrefix(head, []byte("Return-Path: <a@example.org>\r\nX-Original-To: b@example.com\r\nX-Original-To: c@example.com\r\n")) ||
			!bytes.Contains(head, []byte(" id "+ids[i]+";")) || !bytes.HasSuffix(head, []byte(" +0000\r\n")) {
			t.Errorf("%s: the fields above the body:\n%s", ids[i], head)
		}
	}
}

// TestNATSServerDownThenUp: with the NATS server unreachable a message
// waits out the retry window and gets 451 4.3.0; once the server is
// reachable the same session's next message gets 250, without a restart.
func TestNATSServerDownThenUp(t *testing.T) {
	p := natstest.Proxy(t)
	bc, names := natsBrokerConfig(t, natstest.ProxyURL(p))
	bc.PublishRetryWindow = 500 * time.Millisecond
	bc.ConfirmTimeout = 500 * time.Millisecond
	bc.Logger = rabbittest.Logger(t, slog.LevelError)
	s := startStack(t, bc, true)
	c := s.session(t, "down.example", true)
	p.Down()
	r, err := c.Send("a@example.org", []string{"b@example.com"}, lines(100))
	if err != nil || r.Last() != "451 4.3.0 Temporary failure storing the message, try again later" {
		t.Fatalf("with the server down: %q, %v", r.String(), err)
	}
	if err := p.Up(); err != nil {
		t.Fatal(err)
	}
	s.waitReady(10 * time.Second)
	r, err = c.Send("a@example.org", []string{"b@example.com"}, lines(100))
	if err != nil || r.Code != 250 {
		t.Fatalf("after the server came back: %q, %v", r.String(), err)
	}
	id, _ := r.QueueID()
	ms := natstest.Messages(t, names.Stream)
	if len(ms) != 1 || ms[0].Header.Get(broker.HeaderMsgID) != id {
		t.Errorf("stream holds %d messages, want only %s", len(ms), id)
	}
}

// TestNATSCutUnderLoad: concurrent SMTP clients send while the fault
// proxy cuts the NATS connection every 300 ms. Every 250 is in the
// stream, and no queue ID is stored twice (a republish after a lost
// PubAck is deduplicated); 4xx answers are allowed, 5xx are not.
func TestNATSCutUnderLoad(t *testing.T) {
	p := natstest.Proxy(t)
	bc, names := natsBrokerConfig(t, natstest.ProxyURL(p))
	bc.Logger = rabbittest.Logger(t, 100) // hundreds of expected warnings
	s := startStack(t, bc, true)

	const loadTime = 6 * time.Second
	tally, cuts, cutConns := cutLoad(t, s, p, loadTime)
	st := s.brk.Stats()
	t.Logf("%d cuts closed %d connections; broker: %d connects, %d confirmed, %d failed (lost %d, republished %d, duplicates %d)",
		cuts, cutConns, st.Connects, st.Confirmed, st.Failed, st.Lost, st.Republished, st.Duplicates)
	checkCutLoad(t, tally, st, cuts, loadTime)
	byID := map[string]int{}
	for _, m := range natstest.Messages(t, names.Stream) {
		byID[m.Header.Get(broker.HeaderMsgID)]++
	}
	lost, twice := 0, 0
	for id := range tally.acked {
		if byID[id] == 0 {
			lost++
			if lost <= 10 {
				t.Errorf("message %s got 250 and is not in the stream", id)
			}
		}
	}
	for _, n := range byID {
		twice += n - 1
	}
	t.Logf("stream: %d distinct queue IDs; acknowledged %d, lost %d, same queue ID stored twice %d",
		len(byID), len(tally.acked), lost, twice)
	if lost > 0 || twice > 0 {
		t.Errorf("lost %d, stored twice %d", lost, twice)
	}
}
