package broker

import (
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/internal/queueid"
	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// domainOfLen is a domain of exactly n octets, in labels of at most 63.
func domainOfLen(n int) string {
	var sb strings.Builder
	for sb.Len() < n {
		if sb.Len() > 0 {
			sb.WriteByte('.')
		}
		sb.WriteString(strings.Repeat("d", min(63, n-sb.Len())))
	}
	return sb.String()
}

// needFrameSize skips a test whose sizes assume the frame_max Limits are
// computed from, when the RabbitMQ under test negotiates another.
func needFrameSize(t *testing.T) {
	t.Helper()
	conn, err := amqp.Dial(rabbittest.URL)
	if err != nil {
		t.Fatalf("RabbitMQ at %s is needed for this test: %v", rabbittest.Addr, err)
	}
	defer conn.Close()
	if fs := conn.Config.FrameSize; fs != frameSize {
		t.Skipf("RabbitMQ negotiates frame_max %d, the test assumes %d", fs, frameSize)
	}
}

type hostileCase struct {
	id    string
	rcpts []string
	ok    bool // confirmed; else answered 451 4.3.0
}

// submitBetween submits every case back to back, so that the refused
// ones are published between good ones on the same workers, and checks
// each outcome, that the connection and every channel survived, and
// that exactly the copies of the good messages reached the queue.
func submitBetween(t *testing.T, b *Broker, cfg Config, cases []hostileCase, mk func(*recorder, hostileCase) *sink.Message, copies int) {
	t.Helper()
	before := b.Stats()
	rec := newRecorder()
	ids := map[string]bool{}
	for _, c := range cases {
		m := mk(rec, c)
		ids[m.QueueID] = c.ok
		b.Submit(m)
	}
	rec.wait(t, len(cases), 15*time.Second)
	for _, c := range cases {
		m := mk(rec, c) // same QueueID
		err := rec.result(t, m.QueueID)
		switch {
		case c.ok && err != nil:
			t.Errorf("%s: completed with %v, want confirmed", c.id, err)
		case !c.ok && err != sink.ErrUnavailable:
			t.Errorf("%s: completed with %v, want %v", c.id, err, sink.ErrUnavailable)
		}
	}
	got := consume(t, cfg.Queue, copies, 300*time.Millisecond, 10*time.Second)
	if len(got) != copies {
		t.Errorf("%d copies in the queue, want %d", len(got), copies)
	}
	for _, d := range got {
		if qid, _, _ := strings.Cut(d.MessageId, "."); !ids[qid] {
			t.Errorf("a copy of refused message %.20s reached the queue (routing key %d octets)", d.MessageId, len(d.RoutingKey))
		}
	}
	after := b.Stats()
	if after.Connects != before.Connects || after.Disconnects != before.Disconnects || after.ChannelFailures != before.ChannelFailures {
		t.Errorf("connects %d -> %d, disconnects %d -> %d, channel failures %d -> %d: a refused message cost the connection or a channel",
			before.Connects, after.Connects, before.Disconnects, after.Disconnects, before.ChannelFailures, after.ChannelFailures)
	}
}

// TestHostileDomainFailsOnlyItsMessage: with a {domain} routing key, a
// domain that makes the key longer than a short string would close the
// connection in amqp091-go (and fail every message in flight). It fails
// only its own message, 451, whether the domain is long as received or
// only after lower-casing, and in whichever copy it is; so does a message
// with more domains than MaxDomains.
func TestHostileDomainFailsOnlyItsMessage(t *testing.T) {
	cfg := testConfig(t, rabbittest.URL)
	cfg.RoutingKey = "inbound.{domain}"
	cfg.MaxDomains = 3
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	maxDomain := b.Limits().MaxDomain
	// The copy's message_id, <queue ID>.<domain>, binds before the key.
	if want := 255 - queueid.Len - 1; maxDomain != want {
		t.Fatalf("MaxDomain = %d, want %d", maxDomain, want)
	}
	label := strings.Repeat("a", 62)
	fourLabels := label + "." + label + "." + label + "." + label // 251 octets: key 259
	upper := strings.Repeat("Ⱥ", 120)                             // 240 octets, 360 lower-cased
	cases := []hostileCase{
		{"QGOOD1", []string{"a@example.com"}, true},
		{"QLABELS", []string{"x@" + fourLabels}, false},
		{"QGOOD2", []string{"b@example.com"}, true},
		{"QUPPER", []string{"x@" + upper}, false},
		{"QGOOD3", []string{"c@example.com"}, true},
		{"QLONGEST", []string{"x@" + domainOfLen(maxDomain)}, true},
		// A queue ID as long as the engine's, the longest domain: a
		// message_id of exactly 255 octets.
		{strings.Repeat("Q", queueid.Len), []string{"x@" + domainOfLen(maxDomain)}, true},
		{"QGOOD4", []string{"d@example.com"}, true},
		{"QLONGER" + strings.Repeat("R", queueid.Len-7), []string{"x@" + domainOfLen(maxDomain+1)}, false}, // message_id 256 octets
		{"QGOOD5", []string{"e@example.com"}, true},
		// The bad domain in the second copy: the first must not be stored.
		{"QSECOND", []string{"f@example.com", "x@" + fourLabels}, false},
		{"QGOOD6", []string{"g@example.com"}, true},
		{"QFOUR", []string{"a@one.example", "b@two.example", "c@three.example", "d@four.example"}, false},
		{"QTHREE", []string{"a@one.example", "b@two.example", "c@three.example", "d@ONE.example"}, true},
		{"QGOOD7", []string{"h@example.com"}, true},
	}
	mk := func(rec *recorder, c hostileCase) *sink.Message {
		return newMessage(rec, c.id, "s@example.org", c.rcpts, []byte("body\r\n"))
	}
	submitBetween(t, b, cfg, cases, mk, 7+2+3)
}

// edgeMessage is the largest message but for its envelope: every other
// field of the content header at the size Limits reserves for it. Its
// envelope is exactly envelope octets as sink.Limits counts them.
func edgeMessage(rec *recorder, id string, envelope int) *sink.Message {
	sender := "s@example.org"
	var rcpts []string
	left := envelope - len(sender)
	for left > 0 {
		n := min(250, left-RecipientOverhead)
		r := "r@" + strings.Repeat("e", max(n-2, 1))
		rcpts = append(rcpts, r)
		left -= len(r) + RecipientOverhead
	}
	if left != 0 {
		panic("edgeMessage: envelope not reachable")
	}
	m := newMessage(rec, id+strings.Repeat("0", reserveShort-len(id)), sender, rcpts, []byte("body\r\n"))
	m.ClientIP = strings.Repeat("f", reserveShort)
	m.Helo = []byte(strings.Repeat("h", reserveHelo))
	m.Size = 1 << 62
	m.Body = sink.BodyBinaryMIME
	m.SMTPUTF8 = true
	m.TLSVersion = strings.Repeat("v", reserveShort)
	m.TLSCipher = strings.Repeat("c", reserveShort)
	m.AuthUser = []byte(strings.Repeat("u", reserveShort))
	return m
}

// TestHostileEnvelopeFailsOnlyItsMessage: a header table larger than the
// frame would make RabbitMQ close the connection (frame_too_large). It
// fails only its own message, 451; an envelope of exactly MaxEnvelope
// with every other field at its largest still fits (the limit is right)
// and one octet more does not (the check is exact). RabbitMQ would take
// that one (it tolerates 8 octets over frame_max) and then deliver a frame
// that a consumer with the same frame_max cannot read.
func TestHostileEnvelopeFailsOnlyItsMessage(t *testing.T) {
	needFrameSize(t)
	cfg := testConfig(t, rabbittest.URL)
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	maxEnv := b.Limits().MaxEnvelope
	wide := make([]string, 600)
	for i := range wide {
		wide[i] = strings.Repeat("w", 225) + "@" + domainOfLen(14)
	}
	cases := []hostileCase{
		{"QGOOD1", []string{"a@example.com"}, true},
		{"QWIDE", wide, false},
		{"QGOOD2", []string{"b@example.com"}, true},
		{"QEDGE", nil, true},
		{"QGOOD3", []string{"c@example.com"}, true},
		{"QOVER", nil, false},
		{"QGOOD4", []string{"d@example.com"}, true},
	}
	mk := func(rec *recorder, c hostileCase) *sink.Message {
		switch c.id {
		case "QEDGE":
			return edgeMessage(rec, c.id, maxEnv)
		case "QOVER":
			return edgeMessage(rec, c.id, maxEnv+1)
		}
		return newMessage(rec, c.id, "s@example.org", c.rcpts, []byte("body\r\n"))
	}
	submitBetween(t, b, cfg, cases, mk, 5)
}

// TestLimits checks Limits against a content header counted by hand.
func TestLimits(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Envelope = EnvelopeHeaders
	cfg.Node = "test-node"
	b := &Broker{cfg: cfg, nodeValue: cfg.Node}
	// Properties: 14 fixed, content type 15, message-id 256, app-id 6,
	// delivery mode 1, timestamp 8 = 300. Table: length 4, sender 17,
	// client IP 275, port 22, HELO 527, declared size 28, body 25,
	// SMTPUTF8 12, received-at 46, node 24, recipients 21 = 1001; TLS
	// version 277, cipher 276, auth user 275 = 828.
	want := sink.Limits{MaxEnvelope: frameSize - frameOverhead - 300 - 1001 - 828, RecipientOverhead: 5}
	if got := b.amqpLimits(); got != want {
		t.Errorf("static key: %+v, want %+v", got, want)
	}

	cfg.RoutingKey = "in.{domain}.x.{domain}"
	b = &Broker{cfg: cfg, nodeValue: cfg.Node, templated: true}
	want.MaxDomain = (255 - len("in..x.")) / 2
	want.MaxDomains = 50
	want.CopyPerDomain = true
	if got := b.amqpLimits(); got != want {
		t.Errorf("%s: %+v, want %+v", cfg.RoutingKey, got, want)
	}
}

// TestCheckDoesNotAllocate: the check adds nothing to the allocations of
// a publish, for a message that passes and for one that does not.
func TestCheckDoesNotAllocate(t *testing.T) {
	for _, key := range []string{"inbound", "inbound.{domain}"} {
		cfg := DefaultConfig()
		cfg.RoutingKey = key
		b := &Broker{cfg: cfg, nodeValue: cfg.Node, templated: containsDomain(key)}
		var p publishBuilder
		p.init(b)
		for _, domain := range []string{"example.com", strings.Repeat("Ⱥ", 120)} {
			m := newMessage(nopCompletion{}, "QALLOC", "s@example.org", []string{"a@example.org", "b@" + domain, "c@example.org"}, nil)
			copies := p.prepare(m)
			want := p.check(copies, frameSize)
			if n := testing.AllocsPerRun(1000, func() {
				if p.check(copies, frameSize) != want {
					t.Fatal("check is not stable")
				}
			}); n != 0 {
				t.Errorf("%s, domain %.12s: check allocates %.1f times per message", key, domain, n)
			}
		}
	}
}
