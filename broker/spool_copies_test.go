package broker

import (
	"fmt"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/faultproxy"
	"github.com/lsmtp/lsmtp/internal/rabbittest"
)

// spoolWhileDown submits m while RabbitMQ is unreachable through p, so
// that it is answered from the spool, and brings RabbitMQ back.
func spoolWhileDown(t *testing.T, b *Broker, p *faultproxy.Proxy, submit func(syncDone)) {
	t.Helper()
	waitReady(t, b, readyWait)
	takeDown(b, p)
	done := make(syncDone, 1)
	submit(done)
	if err := <-done; err != nil {
		t.Fatalf("spooled message answered %v", err)
	}
	if err := p.Up(); err != nil {
		t.Fatal(err)
	}
}

// A spooled message with one {domain} copy routable and one not: the
// routable copy is stored once, not again at every round while the
// other is returned, and the record, unroutable for good, ends in the
// quarantine after spoolUnroutableMax attempts and spoolUnroutableFor
// instead of looping.
func TestSpooledPartlyUnroutableStoredOnceThenQuarantined(t *testing.T) {
	defer func(n int, d int64) { spoolUnroutableMax, spoolUnroutableFor = n, d }(spoolUnroutableMax, spoolUnroutableFor)
	spoolUnroutableMax, spoolUnroutableFor = 4, int64(200*time.Millisecond)
	p := newProxy(t)
	cfg := spoolConfig(t, proxyURL(p))
	cfg.RoutingKey = "inbound.{domain}"
	cfg.BindingKey = "inbound.a.example"
	b := startBroker(t, cfg)
	spoolWhileDown(t, b, p, func(done syncDone) {
		b.Submit(newMessage(done, "partial-1", "x@example.org", []string{"u@a.example", "v@b.example"}, testBody(100)))
	})
	deadline := time.Now().Add(20 * time.Second)
	for b.Stats().SpoolMessages > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	st := b.Stats()
	t.Logf("%+v", st)
	if st.SpoolMessages != 0 || st.SpoolRejected != 1 {
		t.Fatalf("spool holds %d, rejected %d; want the record quarantined", st.SpoolMessages, st.SpoolRejected)
	}
	q, err := rabbittest.AdminChannel(t).QueueDeclarePassive(cfg.Queue, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if q.Messages != 1 {
		t.Errorf("queue holds %d copies of the a.example copy, want 1", q.Messages)
	}
	if d := consume(t, cfg.Queue, 1, 300*time.Millisecond, 5*time.Second); len(d) != 1 || d[0].MessageId != "partial-1.a.example" {
		t.Errorf("stored copy %v, want message_id partial-1.a.example", d)
	}
}

// The copies of a message replayed from the spool carry the IDs they
// would have had live, <queue ID>.<domain> ("_" for a bare postmaster),
// one per copy, and each copy only its domain's recipients.
func TestSpooledCopiesKeepTheirIDs(t *testing.T) {
	p := newProxy(t)
	cfg := spoolConfig(t, proxyURL(p))
	cfg.RoutingKey = "inbound.{domain}"
	cfg.Envelope = EnvelopeHeaders
	b := startBroker(t, cfg)
	spoolWhileDown(t, b, p, func(done syncDone) {
		b.Submit(newMessage(done, "copies-1", "x@example.org", []string{"u@A.example", "postmaster", "v@b.example", "w@a.example"}, testBody(100)))
	})
	got := map[string]string{}
	for _, d := range consume(t, cfg.Queue, 3, 500*time.Millisecond, 20*time.Second) {
		got[d.MessageId] = d.RoutingKey + " " + fmt.Sprint(d.Headers[HeaderRecipients])
	}
	want := map[string]string{
		"copies-1.a.example": "inbound.a.example [u@A.example w@a.example]",
		"copies-1._":         "inbound. [postmaster]",
		"copies-1.b.example": "inbound.b.example [v@b.example]",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("replayed copies %v, want %v", got, want)
	}
}

// A message replayed from the spool carries the TLS and AUTH headers it
// would have carried live.
func TestSpooledKeepsTLSAndAuthHeaders(t *testing.T) {
	p := newProxy(t)
	cfg := spoolConfig(t, proxyURL(p))
	b := startBroker(t, cfg)
	spoolWhileDown(t, b, p, func(done syncDone) {
		m := newMessage(done, "tls-1", "x@example.org", []string{"u@a.example"}, testBody(100))
		m.TLSVersion, m.TLSCipher, m.AuthUser = "TLS 1.3", "TLS_AES_128_GCM_SHA256", []byte("alice")
		b.Submit(m)
	})
	d := consume(t, cfg.Queue, 1, 500*time.Millisecond, 20*time.Second)[0]
	if d.Headers[HeaderTLSVersion] != "TLS 1.3" || d.Headers[HeaderTLSCipher] != "TLS_AES_128_GCM_SHA256" ||
		d.Headers[HeaderAuthUser] != "alice" {
		t.Errorf("replayed with tls-version %q cipher %q auth-user %q", d.Headers[HeaderTLSVersion],
			d.Headers[HeaderTLSCipher], d.Headers[HeaderAuthUser])
	}
}

// The disk fills part way through a large record; a small message that
// still fits is answered 250, and it and every other message answered
// 250 reach the queue: the group after a failed write is written where
// its record is looked for, not past a hole.
func TestSpoolDiskFullThenSmallAllDelivered(t *testing.T) {
	p := newProxy(t)
	cfg := smallDiskConfig(t, p)
	b := startThenDown(t, cfg, p)
	var ok []string
	for i := 0; i < 100; i++ {
		id := fmt.Sprintf("big-%03d", i)
		if err := send(b, id, "full@example.org", testBody(300<<10)); err != nil {
			break // the disk is full
		}
		ok = append(ok, id)
	}
	if err := send(b, "small", "full@example.org", testBody(2000)); err != nil {
		t.Fatalf("small: %v", err)
	}
	ok = append(ok, "small")
	if err := p.Up(); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, id := range bySender(t, cfg.Queue, len(ok))["full@example.org"] {
		seen[id] = true
	}
	for _, id := range ok {
		if !seen[id] {
			t.Errorf("%s answered 250, not in the queue", id)
		}
	}
	if st := b.Stats(); st.SpoolCorrupt != 0 {
		t.Errorf("%d damaged spool regions after a full disk", st.SpoolCorrupt)
	}
}
