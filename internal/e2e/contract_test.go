package e2e

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/broker"
	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// transaction is one SMTP message as a test sends it, with what the
// consumer must find.
type transaction struct {
	name   string
	helo   string
	ehlo   bool
	from   string // reverse-path without <>; "" is the null sender
	params string // MAIL parameters, e.g. " BODY=8BITMIME"
	rcpts  []string

	// The body goes one of three ways:
	//   - wire == nil, chunks == nil: DATA with content dot-stuffed;
	//   - wire != nil: DATA with wire sent as is (it carries its own
	//     stuffing and terminator), content is what it must unstuff to;
	//   - chunks != nil: BDAT per chunk, the last with LAST; zeroLast
	//     sends all chunks plain and then "BDAT 0 LAST".
	content  []byte
	wire     []byte
	chunks   [][]byte
	zeroLast bool
	pipeline bool // MAIL, RCPTs and DATA (or the first BDAT) in one write (RFC 2920)

	// Expected contract values.
	body         string // smtp-body
	utf8         bool   // smtp-utf8
	declaredSize int64  // smtp-declared-size

	// Filled in when sent.
	queueID    string
	clientPort int
	before     time.Time // just before the final dot or BDAT LAST went out
	after      time.Time // when its 250 arrived
}

// send runs t's transaction on c and records its queue ID.
func (tx *transaction) send(c *smtptest.Conn) error {
	mail := "MAIL FROM:<" + tx.from + ">" + tx.params
	var cmds []string
	cmds = append(cmds, mail)
	for _, r := range tx.rcpts {
		cmds = append(cmds, "RCPT TO:<"+r+">")
	}
	var final smtptest.Reply
	var err error
	switch {
	case tx.chunks != nil:
		final, err = tx.sendBDAT(c, cmds)
	default:
		final, err = tx.sendDATA(c, cmds)
	}
	if err != nil {
		return err
	}
	tx.after = time.Now()
	id, ok := final.QueueID()
	if !ok {
		return fmt.Errorf("final reply %q, want 250 2.0.0 OK queued as <id>", final.String())
	}
	tx.queueID = id
	// The client's TCP source port, which the server reports in
	// smtp-client-port.
	tx.clientPort = c.NetConn().LocalAddr().(*net.TCPAddr).Port
	return nil
}

// sendCommands sends cmds (pipelined or one by one) and checks that each
// got want[i].
func sendCommands(c *smtptest.Conn, cmds []string, want []int, pipeline bool) error {
	if pipeline {
		replies, err := c.Pipeline(cmds...)
		if err != nil {
			return err
		}
		for i, r := range replies {
			if r.Code != want[i] {
				return fmt.Errorf("%s: got %q, want %d", cmds[i], r.String(), want[i])
			}
		}
		return nil
	}
	for i, cmd := range cmds {
		if _, err := c.Expect(cmd, want[i]); err != nil {
			return err
		}
	}
	return nil
}

func (tx *transaction) sendDATA(c *smtptest.Conn, cmds []string) (smtptest.Reply, error) {
	cmds = append(cmds, "DATA")
	want := make([]int, len(cmds))
	for i := range want {
		want[i] = 250
	}
	want[len(want)-1] = 354
	if err := sendCommands(c, cmds, want, tx.pipeline); err != nil {
		return smtptest.Reply{}, err
	}
	tx.before = time.Now()
	var err error
	if tx.wire != nil {
		err = c.Write(tx.wire)
	} else {
		err = c.WriteData(tx.content)
	}
	if err != nil {
		return smtptest.Reply{}, err
	}
	return c.Read()
}

// sendBDAT sends the chunks (RFC 3030). With pipelining the first chunk
// goes in the same write as MAIL and RCPT.
func (tx *transaction) sendBDAT(c *smtptest.Conn, cmds []string) (smtptest.Reply, error) {
	want := make([]int, len(cmds))
	for i := range want {
		want[i] = 250
	}
	if tx.pipeline {
		if err := c.Write([]byte(strings.Join(cmds, "\r\n") + "\r\n")); err != nil {
			return smtptest.Reply{}, err
		}
	} else if err := sendCommands(c, cmds, want, false); err != nil {
		return smtptest.Reply{}, err
	}
	var last smtptest.Reply
	n := len(tx.chunks)
	for i, chunk := range tx.chunks {
		isLast := i == n-1 && !tx.zeroLast
		head := fmt.Sprintf("BDAT %d", len(chunk))
		if isLast {
			head += " LAST"
			tx.before = time.Now()
		}
		if err := c.WriteBDAT(chunk, isLast); err != nil {
			return smtptest.Reply{}, err
		}
		if i == 0 && tx.pipeline {
			for j := range cmds {
				r, err := c.Read()
				if err != nil || r.Code != 250 {
					return r, fmt.Errorf("%s: got %q, %v", cmds[j], r.String(), err)
				}
			}
		}
		r, err := c.Read()
		if err != nil {
			return r, fmt.Errorf("%s: %w", head, err)
		}
		if !isLast {
			if want := fmt.Sprintf("250 2.0.0 %d octets received", len(chunk)); r.Last() != want {
				return r, fmt.Errorf("%s: got %q, want %q", head, r.String(), want)
			}
		}
		last = r
	}
	if tx.zeroLast {
		tx.before = time.Now()
		return c.Cmd("BDAT 0 LAST")
	}
	return last, nil
}

// expected returns the message as the client meant it.
func (tx *transaction) expected() []byte {
	if tx.chunks != nil {
		return bytes.Join(tx.chunks, nil)
	}
	return tx.content
}

// protocol is the "with" of our Received: header (RFC 3848, RFC 6531 §3.7.3).
func (tx *transaction) protocol() string {
	switch {
	case tx.utf8:
		return "UTF8SMTP"
	case tx.ehlo:
		return "ESMTP"
	default:
		return "SMTP"
	}
}

// lines makes content of exactly size octets: CRLF-terminated lines of
// printable text, every seventh starting with a dot so that stuffing is
// exercised throughout. size must be 0 or at least 2.
func lines(size int) []byte {
	b := make([]byte, 0, size)
	line := func(n, l int) {
		start := len(b)
		for i := 0; i < l; i++ {
			b = append(b, 'a'+byte((n+i)%26))
		}
		if n%7 == 3 && l > 0 {
			b[start] = '.'
		}
		b = append(b, "\r\n"...)
	}
	n := 0
	for ; size-len(b) > 81; n++ {
		line(n, 78)
	}
	if size > 0 {
		line(n, size-len(b)-2)
	}
	return b
}

func eightBit() []byte {
	var b bytes.Buffer
	b.WriteString("Subject: =?utf-8?q?8bit?=\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
	b.WriteString("Grüße aus Köln — ☃ 雪\r\n")
	for c := 0x80; c <= 0xff; c++ {
		b.WriteByte(byte(c))
		if c%32 == 31 {
			b.WriteString("\r\n")
		}
	}
	return b.Bytes()
}

// binaryChunk holds what only BDAT carries intact: NUL, bare CR and LF,
// and a CRLF.CRLF that DATA would take for the end.
var binaryChunk = []byte("Content-Type: application/octet-stream\r\n\r\n\x00\x01\n\r.\r\n.\r\nnot the end\r\n")

// sharedShapes are the messages both round trips send, RabbitMQ's
// (TestMessagesRoundTrip) and NATS's (TestNATSMessagesRoundTrip): a fresh
// set for each call, since sendAll records what became of each.
func sharedShapes() []*transaction {
	dotWire := []byte("Subject: dots\r\n\r\n..\r\n...two\r\n.x\r\nmid.dle\r\n\r\n..\r\n.\r\n")
	dotContent := []byte("Subject: dots\r\n\r\n.\r\n..two\r\nx\r\nmid.dle\r\n\r\n.\r\n")
	return []*transaction{
		{name: "empty", helo: "empty.example", ehlo: true, from: "a@example.org", rcpts: []string{"b@example.com"}, content: nil},
		{name: "plain", helo: "plain.example", ehlo: true, from: "alice@example.org", params: " SIZE=59", rcpts: []string{"bob@example.com"},
			content: []byte("From: alice@example.org\r\nTo: bob@example.com\r\n\r\nHello Bob\r\n"), declaredSize: 59},
		{name: "dot-stuffed", helo: "dots.example", ehlo: true, from: "a@example.org", rcpts: []string{"b@example.com"}, wire: dotWire, content: dotContent},
		{name: "8bit", helo: "8bit.example", ehlo: true, from: "a@example.org", params: " BODY=8BITMIME", rcpts: []string{"b@example.com"},
			content: eightBit(), body: "8BITMIME"},
		{name: "smtputf8", helo: "utf8.example", ehlo: true, from: "josé@exämple.org", params: " SMTPUTF8 BODY=8BITMIME",
			rcpts: []string{"用户@例子.广告", "Ünïcode@straße.example"}, content: []byte("Subject: ☃\r\n\r\nsnow\r\n"), body: "8BITMIME", utf8: true},
		{name: "several recipients", helo: "many.example", ehlo: true, from: "a@example.org",
			rcpts: []string{"one@example.com", "two@example.net", "Three@Example.COM", "postmaster"}, content: []byte("Subject: many\r\n\r\nhi\r\n")},
		{name: "null sender", helo: "bounce.example", ehlo: true, from: "", rcpts: []string{"b@example.com"},
			content: []byte("Subject: Undelivered Mail\r\n\r\nbounce\r\n")},
		{name: "pipelined", helo: "pipe.example", ehlo: true, from: "a@example.org", rcpts: []string{"b@example.com", "c@example.com"},
			content: []byte("Subject: pipelined\r\n\r\n.leading dot\r\n"), pipeline: true},
		{name: "bdat binarymime pipelined", helo: "bin.example", ehlo: true, from: "a@example.org", params: " BODY=BINARYMIME",
			rcpts: []string{"b@example.com"}, chunks: [][]byte{binaryChunk}, pipeline: true, body: "BINARYMIME"},
	}
}

// TestMessagesRoundTrip sends messages of every shape over SMTP and finds
// each in the queue exactly as the message contract says, for each
// --envelope: the trace fields (trace, both), our Received: header,
// exactly the octets the client meant, the properties, and every smtp-*
// header (headers, both) or no header table at all (trace).
func TestMessagesRoundTrip(t *testing.T) {
	for _, env := range []string{broker.EnvelopeTrace, broker.EnvelopeHeaders, broker.EnvelopeBoth} {
		t.Run(env, func(t *testing.T) { testMessagesRoundTrip(t, env) })
	}
}

func testMessagesRoundTrip(t *testing.T, env string) {
	bc := brokerConfig(t, rabbittest.URL)
	bc.Envelope = env
	s := startStack(t, bc, true)

	half := lines(maxMessageSize / 2)
	txs := append(sharedShapes(), []*transaction{
		{name: "crlf only", helo: "crlf.example", ehlo: true, from: "a@example.org", rcpts: []string{"b@example.com"}, content: []byte("\r\n")},
		{name: "helo", helo: "old.example", ehlo: false, from: "a@example.org", rcpts: []string{"b@example.com"}, content: []byte("Subject: HELO\r\n\r\nx\r\n")},
		{name: "64k", helo: "mid.example", ehlo: true, from: "a@example.org", rcpts: []string{"b@example.com"}, content: lines(64 << 10)},
		{name: "at the limit", helo: "limit.example", ehlo: true, from: "a@example.org", params: fmt.Sprintf(" SIZE=%d", maxMessageSize),
			rcpts: []string{"b@example.com"}, content: lines(maxMessageSize), declaredSize: maxMessageSize},
		{name: "bdat two chunks", helo: "bdat.example", ehlo: true, from: "a@example.org", rcpts: []string{"b@example.com"},
			chunks: [][]byte{[]byte("Subject: chunked\r\n\r\nfirst half, "), []byte("second half\r\n.\r\n")}},
		{name: "bdat then 0 LAST", helo: "bdat0.example", ehlo: true, from: "a@example.org", rcpts: []string{"b@example.com"},
			chunks: [][]byte{[]byte("Subject: zero last\r\n\r\nbody\r\n")}, zeroLast: true},
		{name: "bdat only 0 LAST", helo: "bdat00.example", ehlo: true, from: "a@example.org", rcpts: []string{"b@example.com"},
			chunks: [][]byte{}, zeroLast: true},
		{name: "bdat at the limit", helo: "bdatlimit.example", ehlo: true, from: "a@example.org", rcpts: []string{"b@example.com"},
			chunks: [][]byte{half, lines(maxMessageSize - len(half))}},
	}...)
	for _, n := range []int{0, 2, 3, 81, 82, 83, 64 << 10, maxMessageSize, maxMessageSize + 1} {
		if got := len(lines(n)); got != n {
			t.Fatalf("lines(%d) made %d octets", n, got)
		}
	}
	if n := len(txs[len(txs)-1].expected()); n != maxMessageSize {
		t.Fatalf("the BDAT message at the limit has %d octets", n)
	}
	sendAll(t, s, txs)

	// Over the limit by one octet: refused after the whole body was read,
	// stored nowhere, and the session goes on.
	c := s.session(t, "over.example", true)
	over := &transaction{from: "a@example.org", rcpts: []string{"b@example.com"}, content: lines(maxMessageSize + 1)}
	if err := sendCommands(c, []string{"MAIL FROM:<a@example.org>", "RCPT TO:<b@example.com>", "DATA"}, []int{250, 250, 354}, false); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteData(over.content); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Read(); err != nil || r.Last() != "552 5.3.4 Message size exceeds fixed maximum message size" {
		t.Fatalf("one octet over the limit with DATA: %q, %v", r.String(), err)
	}
	if err := sendCommands(c, []string{"MAIL FROM:<a@example.org>", "RCPT TO:<b@example.com>"}, []int{250, 250}, false); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteBDAT(lines(maxMessageSize+1), true); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Read(); err != nil || r.Last() != "552 5.3.4 Message size exceeds fixed maximum message size" {
		t.Fatalf("one octet over the limit with BDAT: %q, %v", r.String(), err)
	}
	if _, err := c.Expect("NOOP", 250); err != nil {
		t.Fatalf("session after the refused bodies: %v", err)
	}

	got := map[string][]amqp.Delivery{}
	for _, d := range consume(t, bc.Queue, len(txs), time.Second, 20*time.Second) {
		got[d.MessageId] = append(got[d.MessageId], d)
	}
	if len(got) != len(txs) {
		t.Errorf("%d distinct message IDs in the queue, want %d (refused bodies must not be stored)", len(got), len(txs))
	}
	for _, tx := range txs {
		t.Run(tx.name, func(t *testing.T) {
			ds := got[tx.queueID]
			if len(ds) != 1 {
				t.Fatalf("message %s is %d times in the queue, want once", tx.queueID, len(ds))
			}
			checkDelivery(t, tx, ds[0], bc, bc.RoutingKey, nil)
		})
	}
}

// sendAll sends each of txs in a session of its own (7BIT where tx.body
// is empty) and ends the session with QUIT.
func sendAll(t *testing.T, s *stack, txs []*transaction) {
	t.Helper()
	for _, tx := range txs {
		if tx.body == "" {
			tx.body = "7BIT"
		}
		c := s.session(t, tx.helo, tx.ehlo)
		if err := tx.send(c); err != nil {
			t.Fatalf("%s: %v", tx.name, err)
		}
		if _, err := c.Expect("QUIT", 221); err != nil {
			t.Errorf("%s: %v", tx.name, err)
		}
		c.Close()
	}
}

// checkDelivery compares d with everything the contract promises for tx
// under bc.Envelope: routed with routingKey, the trace fields and
// smtp-recipients holding rcpts (all of tx's recipients when nil; one
// domain's under a {domain} routing key).
func checkDelivery(t *testing.T, tx *transaction, d amqp.Delivery, bc broker.Config, routingKey string, rcpts []string) {
	t.Helper()
	if d.RoutingKey != routingKey {
		t.Errorf("routing key %q, want %q", d.RoutingKey, routingKey)
	}
	if d.DeliveryMode != amqp.Persistent {
		t.Errorf("delivery_mode %d, want 2", d.DeliveryMode)
	}
	if d.ContentType != "message/rfc822" {
		t.Errorf("content_type %q", d.ContentType)
	}
	if d.AppId != "lsmtp" {
		t.Errorf("app_id %q", d.AppId)
	}
	// A per-domain copy's ID is <queue ID>.<domain>, so that consumers
	// that drop duplicates by message_id keep every copy.
	wantID := tx.queueID
	if strings.Contains(bc.RoutingKey, broker.DomainPlaceholder) {
		prefix, _, _ := strings.Cut(bc.RoutingKey, broker.DomainPlaceholder)
		wantID += "." + strings.TrimPrefix(routingKey, prefix)
	}
	if d.MessageId != wantID {
		t.Errorf("message_id %q, want %q", d.MessageId, wantID)
	}
	// AMQP timestamps are whole seconds.
	if lo, hi := tx.before.Truncate(time.Second), tx.after; d.Timestamp.Before(lo) || d.Timestamp.After(hi) {
		t.Errorf("timestamp %s not within [%s, %s]", d.Timestamp, lo, hi)
	}

	if rcpts == nil {
		rcpts = tx.rcpts
	}
	body := checkTrace(t, tx, d.Body, bc.Envelope, rcpts)
	if bc.Envelope == broker.EnvelopeTrace {
		if d.Headers != nil {
			t.Errorf("header table %v with --envelope trace, want none", d.Headers)
		}
		checkBody(t, tx, body, tx.after)
		return
	}

	// Every smtp-* header, with its AMQP type.
	rcptValues := make([]any, len(rcpts))
	for i, r := range rcpts {
		rcptValues[i] = r
	}
	want := amqp.Table{
		broker.HeaderSender:       tx.from,
		broker.HeaderRecipients:   rcptValues,
		broker.HeaderClientIP:     "127.0.0.1",
		broker.HeaderClientPort:   int32(tx.clientPort),
		broker.HeaderHelo:         tx.helo,
		broker.HeaderDeclaredSize: tx.declaredSize,
		broker.HeaderBody:         tx.body,
		broker.HeaderUTF8:         tx.utf8,
		broker.HeaderNode:         nodeName,
		// The e2e clients speak in the clear and do not authenticate.
		broker.HeaderTLSVersion: "",
		broker.HeaderTLSCipher:  "",
		broker.HeaderAuthUser:   "",
	}
	checkHeaders(t, d.Headers, want)
	receivedAt, ok := d.Headers[broker.HeaderReceivedAt].(string)
	if !ok {
		t.Fatalf("smtp-received-at is %T, want string", d.Headers[broker.HeaderReceivedAt])
	}
	at, err := time.Parse("2006-01-02T15:04:05.000Z", receivedAt)
	if err != nil {
		t.Errorf("smtp-received-at %q is not RFC 3339 UTC with milliseconds: %v", receivedAt, err)
	}
	if at.Before(tx.before.Add(-time.Millisecond)) || at.After(tx.after) {
		t.Errorf("smtp-received-at %s not within [%s, %s]", at, tx.before.UTC(), tx.after.UTC())
	}
	if !d.Timestamp.Equal(at.Truncate(time.Second)) {
		t.Errorf("timestamp %s is not smtp-received-at %s in whole seconds", d.Timestamp.UTC(), at)
	}

	checkBody(t, tx, body, at)
}

// checkTrace checks the trace fields above our Received: in body, byte
// for byte, for tx and rcpts (none under --envelope headers), and
// returns the rest of body.
func checkTrace(t *testing.T, tx *transaction, body []byte, envelope string, rcpts []string) []byte {
	t.Helper()
	if envelope != broker.EnvelopeHeaders {
		want := "Return-Path: <" + tx.from + ">\r\n"
		for _, r := range rcpts {
			want += "X-Original-To: " + r + "\r\n"
		}
		utf8 := "no"
		if tx.utf8 {
			utf8 = "yes"
		}
		want += fmt.Sprintf("X-Lsmtp-Envelope: port=%d; size=%d; body=%s; smtputf8=%s\r\n", tx.clientPort, tx.declaredSize, tx.body, utf8)
		if !bytes.HasPrefix(body, []byte(want)) {
			t.Fatalf("trace fields\n%q\nwant\n%q", head(body), want)
		}
		body = body[len(want):]
	} else if bytes.HasPrefix(body, []byte("Return-Path:")) {
		t.Errorf("trace fields with --envelope headers: %q", head(body))
	}
	return body
}

// checkBody checks what follows the trace fields: our Received: header,
// dated no later than notAfter, and the message as the client meant it.
func checkBody(t *testing.T, tx *transaction, body []byte, notAfter time.Time) {
	t.Helper()
	hdr, rest, ok := splitReceived(body)
	if !ok {
		t.Fatalf("body does not start with a Received: header: %q", head(body))
	}
	checkReceived(t, tx, hdr, notAfter)
	if !bytes.Equal(rest, tx.expected()) {
		t.Errorf("message after Received: differs from what the client sent: %d octets, want %d; first difference at %d",
			len(rest), len(tx.expected()), firstDiff(rest, tx.expected()))
	}
}

// checkHeaders compares the smtp-* headers with want, values and types.
func checkHeaders(t *testing.T, got, want amqp.Table) {
	t.Helper()
	for k := range got {
		if _, ok := want[k]; !ok && k != broker.HeaderReceivedAt {
			t.Errorf("unexpected header %s = %#v", k, got[k])
		}
	}
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("header %s missing", k)
			continue
		}
		if fmt.Sprintf("%T %#v", g, g) != fmt.Sprintf("%T %#v", w, w) {
			t.Errorf("header %s = %T %#v, want %T %#v", k, g, g, w, w)
		}
	}
}

// afterTrace is body without the trace fields above our Received:
// (README: what consumers strip), if it has any.
func afterTrace(body []byte) []byte {
	for _, f := range []string{"Return-Path: ", "X-Original-To: ", "X-Lsmtp-Envelope: "} {
		for bytes.HasPrefix(body, []byte(f)) {
			_, hdr, ok := splitField(body)
			if !ok {
				return body
			}
			body = hdr
		}
	}
	return body
}

// splitField splits the first header field (with its folded lines)
// from the rest of body.
func splitField(body []byte) (hdr, rest []byte, ok bool) {
	for i := 0; i+2 <= len(body); {
		j := bytes.Index(body[i:], []byte("\r\n"))
		if j < 0 {
			return nil, nil, false
		}
		end := i + j + 2
		if end == len(body) || (body[end] != ' ' && body[end] != '\t') {
			return body[:end], body[end:], true
		}
		i = end
	}
	return nil, nil, false
}

// splitReceived splits the first header field (with its folded lines)
// from the rest of body, which must start with Received:.
func splitReceived(body []byte) (hdr, rest []byte, ok bool) {
	if !bytes.HasPrefix(body, []byte("Received: ")) {
		return nil, nil, false
	}
	return splitField(body)
}

// checkReceived checks our trace header (RFC 5321 §4.4): client HELO and
// IP, our name, the protocol, the queue ID from the 250 reply, the single
// recipient (only when there is one), and the date.
func checkReceived(t *testing.T, tx *transaction, hdr []byte, at time.Time) {
	t.Helper()
	want := fmt.Sprintf("Received: from %s ([127.0.0.1])\r\n\tby %s (lsmtp) with %s id %s", tx.helo, serverName, tx.protocol(), tx.queueID)
	if len(tx.rcpts) == 1 {
		want += "\r\n\tfor <" + tx.rcpts[0] + ">"
	}
	want += ";\r\n\t"
	got := string(hdr)
	if !strings.HasPrefix(got, want) {
		t.Fatalf("Received: header\n%q\nwant it to start with\n%q", got, want)
	}
	date := strings.TrimSuffix(strings.TrimPrefix(got, want), "\r\n")
	d, err := time.Parse("Mon, 02 Jan 2006 15:04:05 -0700", date)
	if err != nil {
		t.Fatalf("Received: date %q: %v", date, err)
	}
	// Our Received: line is written when the body starts (it heads the
	// buffer the body streams into), smtp-received-at when it ended.
	if d.Before(tx.before.Truncate(time.Second)) || d.After(at) {
		t.Errorf("Received: date %s not within [%s, %s]", d, tx.before.UTC(), at)
	}
}

func head(b []byte) []byte { return b[:min(len(b), 200)] }

func firstDiff(a, b []byte) int {
	for i := 0; i < min(len(a), len(b)); i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
