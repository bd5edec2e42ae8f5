package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/internal/rabbittest"
)

// traced is what --envelope trace puts above lsmtp's Received: (the
// X-Lsmtp-Envelope field folded, as a long one is).
const traced = "Return-Path: <a@example.org>\r\nX-Original-To: b@example.com\r\nx-original-to: bcc@example.com\r\n" +
	"X-Lsmtp-Envelope: port=50123; size=0;\r\n\tbody=7BIT; smtputf8=no\r\n"

var testIDs = []string{"Q0001", "Q0002", "Q0003", "Q0004"}

// stored is what eml and maildir write for each message: lsmtp's trace
// fields removed, nothing else.
var stored = map[string]string{
	"Q0003": "Received: from x\r\nSubject: three\r\n\r\nbody\r\n",
}

func storedBody(id string, body []byte) []byte {
	if s, ok := stored[id]; ok {
		return []byte(s)
	}
	return body
}

// testBodies are the bodies of testIDs: without trace fields, with bytes
// that are no text, with lsmtp's trace fields, and with a field that
// looks like one but is not lsmtp's.
func testBodies() map[string][]byte {
	return map[string][]byte{
		"Q0001": []byte("Received: from x\r\nSubject: one\r\n\r\nbody\r\n"),
		"Q0002": append([]byte("Subject: two\r\n\r\n"), 0xff, 0x00, '\r', '\n'),
		"Q0003": []byte(traced + "Received: from x\r\nSubject: three\r\n\r\nbody\r\n"),
		// Not lsmtp's trace (no Received: under it): kept as it is.
		"Q0004": []byte("Return-Path: <a@example.org>\r\nSubject: four\r\n\r\nbody\r\n"),
	}
}

// testQueue declares a queue holding messages shaped like lsmtp's (with
// and without trace fields), deleted when the test ends.
func testQueue(t *testing.T) (queue string, bodies map[string][]byte) {
	t.Helper()
	conn, err := amqp.Dial(rabbittest.URL)
	if err != nil {
		t.Fatalf("RabbitMQ is needed for this test: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	queue = fmt.Sprintf("lsmtp-test.consume.%s.%08x", t.Name(), rand.Uint32())
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ch.QueueDelete(queue, false, false, false) })
	bodies = testBodies()
	for _, id := range testIDs {
		err := ch.Publish("", queue, true, false, amqp.Publishing{
			MessageId:    id,
			ContentType:  "message/rfc822",
			DeliveryMode: amqp.Persistent,
			AppId:        "lsmtp",
			Timestamp:    time.Unix(1714566896, 0),
			Headers: amqp.Table{
				"smtp-sender":      "a@example.org",
				"smtp-recipients":  []any{"b@example.com", "c@example.com"},
				"smtp-client-port": int32(50123),
			},
			Body: bodies[id],
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return queue, bodies
}

func consumeAll(t *testing.T, args ...string) (int, string) {
	t.Helper()
	return runConsume(t, append([]string{"--amqp-url", rabbittest.URL, "--count", fmt.Sprint(len(testIDs))}, args...)...)
}

// runConsume runs lsmtp-consume with args and no environment, and
// returns how many messages it handled and what it printed.
func runConsume(t *testing.T, args ...string) (int, string) {
	t.Helper()
	o, err := parseFlags(args, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out bytes.Buffer
	n, err := run(ctx, o, &out)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return n, out.String()
}

// queueLen reports how many messages wait in queue (none may: every one
// was acknowledged after its write).
func queueLen(t *testing.T, queue string) int {
	conn, err := amqp.Dial(rabbittest.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, _ := conn.Channel()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return q.Messages
}

func TestPrint(t *testing.T) {
	queue, _ := testQueue(t)
	n, out := consumeAll(t, "--queue", queue, "--mode", "print")
	if n != len(testIDs) {
		t.Fatalf("handled %d messages, want %d", n, len(testIDs))
	}
	for _, want := range []string{
		"message Q0001: 40 bytes",
		`  smtp-recipients: "b@example.com", "c@example.com"` + "\n",
		`  smtp-sender: "a@example.org"` + "\n",
		"  smtp-client-port: 50123\n",
		"message Q0002: 20 bytes",
		"  Return-Path: <a@example.org>\n  X-Original-To: b@example.com\n  x-original-to: bcc@example.com\n" +
			"  X-Lsmtp-Envelope: port=50123; size=0; body=7BIT; smtputf8=no\n\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if l := queueLen(t, queue); l != 0 {
		t.Errorf("%d messages left unacknowledged", l)
	}
}

// checkEML compares the .eml files in dir with what lsmtp-consume stores
// of ids' bodies, byte for byte, and finds nothing else there.
func checkEML(t *testing.T, dir string, bodies map[string][]byte, ids ...string) {
	t.Helper()
	for _, id := range ids {
		got, err := os.ReadFile(filepath.Join(dir, id+".eml"))
		if want := storedBody(id, bodies[id]); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s.eml: %q, %v; want %q", id, got, err, want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != len(ids) {
		t.Errorf("%d files in %s, want %d (no temporary files left)", len(entries), dir, len(ids))
	}
}

// checkMaildir finds the stored form of every one of bodies in dir's
// new/, one file each, and nothing in tmp/; it returns new/'s entries.
func checkMaildir(t *testing.T, dir string, bodies map[string][]byte) []os.DirEntry {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, "new"))
	if err != nil || len(entries) != len(testIDs) {
		t.Fatalf("new/ holds %d entries (%v), want %d", len(entries), err, len(testIDs))
	}
	found := map[string]bool{}
	for _, e := range entries {
		got, _ := os.ReadFile(filepath.Join(dir, "new", e.Name()))
		for id, body := range bodies {
			if bytes.Equal(got, storedBody(id, body)) {
				found[id] = true
			}
		}
	}
	if len(found) != len(testIDs) {
		t.Errorf("bodies found: %v", found)
	}
	if tmp, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmp) != 0 {
		t.Errorf("tmp/ not empty: %d", len(tmp))
	}
	return entries
}

func TestEML(t *testing.T) {
	queue, bodies := testQueue(t)
	dir := t.TempDir()
	if n, _ := consumeAll(t, "--queue", queue, "--mode", "eml", "--dir", dir); n != len(testIDs) {
		t.Fatalf("handled %d, want %d", n, len(testIDs))
	}
	checkEML(t, dir, bodies, testIDs...)
	if l := queueLen(t, queue); l != 0 {
		t.Errorf("%d messages left unacknowledged", l)
	}
}

func TestMaildir(t *testing.T) {
	queue, bodies := testQueue(t)
	dir := t.TempDir()
	if n, _ := consumeAll(t, "--queue", queue, "--mode", "maildir", "--dir", dir); n != len(testIDs) {
		t.Fatalf("handled %d, want %d", n, len(testIDs))
	}
	for _, e := range checkMaildir(t, dir, bodies) {
		if strings.ContainsAny(e.Name(), "/:") {
			t.Errorf("bad maildir name %q", e.Name())
		}
	}
}

// TestWriteFailureRequeues: when the message cannot be written, it goes
// back to the queue and the run stops with the error.
func TestWriteFailureRequeues(t *testing.T) {
	queue, _ := testQueue(t)
	dir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(dir, nil, 0o600); err != nil { // a file where the directory should be
		t.Fatal(err)
	}
	o, err := parseFlags([]string{"--amqp-url", rabbittest.URL, "--queue", queue, "--mode", "eml", "--dir", dir + "/sub"}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := run(ctx, o, &bytes.Buffer{}); err == nil {
		t.Fatal("run succeeded writing below a file")
	}
	if l := queueLen(t, queue); l != len(testIDs) {
		t.Errorf("%d messages in the queue, want all %d still there", l, len(testIDs))
	}
}

func TestParseFlags(t *testing.T) {
	env := func(k string) string {
		return map[string]string{"LSMTP_AMQP_USERNAME": "u", "LSMTP_AMQP_PASSWORD": "p"}[k]
	}
	o, err := parseFlags([]string{"--mode", "maildir", "--dir", "/tmp/m", "--count", "3"}, env)
	if err != nil || o.mode != "maildir" || o.count != 3 || o.username != "u" || o.password != "p" || o.queue != "lsmtp.inbound" {
		t.Errorf("got %+v, %v", o, err)
	}
	for _, bad := range [][]string{{"--mode", "eml"}, {"--mode", "x"}, {"--prefetch", "0"}, {"extra"}} {
		if _, err := parseFlags(bad, env); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}
