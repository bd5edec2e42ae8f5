package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/lsmtp/lsmtp/internal/natstest"
)

// testStream creates a stream of its own for the test (file storage, as
// lsmtp declares it) holding testIDs shaped as lsmtp publishes them:
// the body, Nats-Msg-Id the queue ID, and for Q0001 the smtp-* headers of
// --envelope headers (recipients as repeated values). Q0004 goes to the
// subject of a {domain} template. The stream is deleted when the test
// ends.
func testStream(t *testing.T) (stream, subject string, bodies map[string][]byte) {
	t.Helper()
	names := natstest.Unique(t)
	stream, subject = names.Stream, names.Subject+".inbound"
	natstest.CreateStream(t, stream, 0, subject, subject+".>")
	js := natstest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bodies = testBodies()
	for _, id := range testIDs {
		msg := &nats.Msg{Subject: subject, Data: bodies[id], Header: nats.Header{}}
		msg.Header.Set(jetstream.MsgIDHeader, id)
		switch id {
		case "Q0001":
			msg.Header.Set("smtp-sender", "a@example.org")
			msg.Header["smtp-recipients"] = []string{"b@example.com", "c@example.com"}
			msg.Header.Set("smtp-client-port", "50123")
		case "Q0004":
			msg.Subject = subject + ".example.com"
		}
		if _, err := js.PublishMsg(ctx, msg); err != nil {
			t.Fatalf("publish %s: %v", id, err)
		}
	}
	return stream, subject, bodies
}

// natsConsume runs lsmtp-consume on stream for count messages.
func natsConsume(t *testing.T, stream string, count int, args ...string) (int, string) {
	t.Helper()
	return runConsume(t, append([]string{"--source", "nats", "--nats-url", natstest.URL, "--nats-stream", stream, "--count", fmt.Sprint(count)}, args...)...)
}

// consumerState is what the durable consumer still holds: messages not
// yet delivered, and delivered but not acknowledged.
func consumerState(t *testing.T, stream, durable string) (pending uint64, ackPending int) {
	t.Helper()
	js := natstest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := js.Consumer(ctx, stream, durable)
	if err != nil {
		t.Fatalf("consumer %s: %v", durable, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.NumPending, info.NumAckPending
}

func assertAllAcked(t *testing.T, stream string) {
	t.Helper()
	if pending, ackPending := consumerState(t, stream, "lsmtp-consume"); pending != 0 || ackPending != 0 {
		t.Errorf("consumer holds %d undelivered and %d unacknowledged messages, want none", pending, ackPending)
	}
}

func TestNATSPrint(t *testing.T) {
	stream, subject, _ := testStream(t)
	n, out := natsConsume(t, stream, len(testIDs), "--mode", "print")
	if n != len(testIDs) {
		t.Fatalf("handled %d messages, want %d", n, len(testIDs))
	}
	for _, want := range []string{
		fmt.Sprintf("message Q0001: 40 bytes, subject %q, stream %s sequence 1, stored ", subject, stream),
		", delivery 1\n",
		`  smtp-recipients: "b@example.com", "c@example.com"` + "\n",
		`  smtp-sender: "a@example.org"` + "\n",
		`  smtp-client-port: "50123"` + "\n",
		`  Nats-Msg-Id: "Q0001"` + "\n",
		"message Q0002: 20 bytes",
		"  Return-Path: <a@example.org>\n  X-Original-To: b@example.com\n  x-original-to: bcc@example.com\n" +
			"  X-Lsmtp-Envelope: port=50123; size=0; body=7BIT; smtputf8=no\n\n",
		fmt.Sprintf("message Q0004: 53 bytes, subject %q", subject+".example.com"),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	assertAllAcked(t, stream)
}

func TestNATSEML(t *testing.T) {
	stream, _, bodies := testStream(t)
	dir := t.TempDir()
	if n, _ := natsConsume(t, stream, len(testIDs), "--mode", "eml", "--dir", dir); n != len(testIDs) {
		t.Fatalf("handled %d, want %d", n, len(testIDs))
	}
	checkEML(t, dir, bodies, testIDs...)
	assertAllAcked(t, stream)
}

func TestNATSMaildir(t *testing.T) {
	stream, _, bodies := testStream(t)
	dir := t.TempDir()
	if n, _ := natsConsume(t, stream, len(testIDs), "--mode", "maildir", "--dir", dir); n != len(testIDs) {
		t.Fatalf("handled %d, want %d", n, len(testIDs))
	}
	checkMaildir(t, dir, bodies)
	assertAllAcked(t, stream)
}

// TestNATSSubjectFilter: --nats-subject takes only the messages on that
// subject (one domain's copies) and leaves the others to other consumers.
func TestNATSSubjectFilter(t *testing.T) {
	stream, subject, bodies := testStream(t)
	dir := t.TempDir()
	if n, _ := natsConsume(t, stream, 1, "--mode", "eml", "--dir", dir, "--nats-subject", subject+".*.com", "--nats-durable", "example-com"); n != 1 {
		t.Fatalf("handled %d, want 1", n)
	}
	checkEML(t, dir, bodies, "Q0004")
	if pending, ackPending := consumerState(t, stream, "example-com"); pending != 0 || ackPending != 0 {
		t.Errorf("filtered consumer holds %d undelivered and %d unacknowledged, want none", pending, ackPending)
	}
}

// TestNATSDurableResumes: a run of --count 2 takes two messages and
// leaves the rest to the next run of the same durable consumer at once
// (nothing fetched ahead and held until the ack wait), which gets no
// message twice.
func TestNATSDurableResumes(t *testing.T) {
	stream, _, bodies := testStream(t)
	dir := t.TempDir()
	for run := 0; run < 2; run++ {
		if n, _ := natsConsume(t, stream, 2, "--mode", "eml", "--dir", dir, "--prefetch", "3"); n != 2 {
			t.Fatalf("run %d handled %d, want 2", run, n)
		}
	}
	checkEML(t, dir, bodies, testIDs...)
	assertAllAcked(t, stream)
}

// TestNATSWriteFailureRequeues: a message that cannot be written is given
// back (a negative ack), and the run stops with the error; the next run
// gets every message at once.
func TestNATSWriteFailureRequeues(t *testing.T) {
	stream, _, bodies := testStream(t)
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil { // a file where the directory should be
		t.Fatal(err)
	}
	o, err := parseFlags([]string{"--source", "nats", "--nats-url", natstest.URL, "--nats-stream", stream, "--mode", "eml", "--dir", file + "/sub"}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := run(ctx, o, io.Discard); err == nil {
		t.Fatal("run succeeded writing below a file")
	}
	dir := t.TempDir()
	if n, _ := natsConsume(t, stream, len(testIDs), "--mode", "eml", "--dir", dir); n != len(testIDs) {
		t.Fatalf("handled %d, want %d", n, len(testIDs))
	}
	checkEML(t, dir, bodies, testIDs...)
	assertAllAcked(t, stream)
}

// childArgs, in a test binary started by TestNATSKilledBeforeWrite, are
// the lsmtp-consume arguments (separated by US, 0x1f) of a run that stops
// before its first write, for the parent to kill.
const childArgs = "LSMTP_CONSUME_TEST_CHILD"

func TestMain(m *testing.M) {
	if args := os.Getenv(childArgs); args != "" {
		beforeWrite = func(m *message) {
			fmt.Printf("received %s\n", m.id)
			select {} // killed here
		}
		o, err := parseFlags(strings.Split(args, "\x1f"), os.Getenv)
		if err == nil {
			_, err = run(context.Background(), o, io.Discard)
		}
		fmt.Println("child:", err)
		os.Exit(3)
	}
	os.Exit(m.Run())
}

// TestNATSKilledBeforeWrite: lsmtp-consume killed (SIGKILL) after a
// message reached it and before it was written leaves the message in the
// stream; the next run gets it again once the ack wait passed, and
// writes it whole.
func TestNATSKilledBeforeWrite(t *testing.T) {
	stream, _, bodies := testStream(t)
	dir := t.TempDir()
	args := []string{"--source", "nats", "--nats-url", natstest.URL, "--nats-stream", stream, "--nats-ack-wait", "1s", "--mode", "eml", "--dir", dir, "--count", "1"}
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), childArgs+"="+strings.Join(args, "\x1f"))
	stdout, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	child.Process.Kill()
	child.Wait()
	if err != nil || line != "received Q0001\n" {
		t.Fatalf("child said %q, %v; want it to receive Q0001", line, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("%d files written before the write", len(entries))
	}
	start := time.Now()
	// The same ack wait: every run sets the consumer's configuration.
	n, _ := natsConsume(t, stream, len(testIDs), "--mode", "eml", "--dir", dir, "--nats-ack-wait", "1s")
	if n != len(testIDs) {
		t.Fatalf("second run handled %d, want %d", n, len(testIDs))
	}
	if took := time.Since(start); took < 500*time.Millisecond {
		t.Errorf("the second run took %v: Q0001 came again before the ack wait of 1s", took)
	}
	checkEML(t, dir, bodies, testIDs...)
	assertAllAcked(t, stream)
}

func TestParseFlagsNATS(t *testing.T) {
	env := func(k string) string {
		return map[string]string{"LSMTP_NATS_USER": "u", "LSMTP_NATS_PASSWORD": "p", "LSMTP_AMQP_USERNAME": "amqp"}[k]
	}
	o, err := parseFlags([]string{"--source", "nats", "--nats-url", "nats://a:4222,nats://b:4222", "--nats-url", "nats://c:4222", "--mode", "eml", "--dir", "/tmp/m"}, env)
	if err != nil || o.source != sourceNATS || strings.Join(o.natsURLs, " ") != "nats://a:4222 nats://b:4222 nats://c:4222" ||
		o.natsUser != "u" || o.natsPassword != "p" || o.username != "" || o.natsStream != "LSMTP" || o.natsDurable != "lsmtp-consume" ||
		o.natsSubject != "" || o.natsAckWait != 30*time.Second {
		t.Errorf("got %+v, %v", o, err)
	}
	o, err = parseFlags([]string{"--source", "nats", "--nats-user", "flag", "--nats-password", "pw"}, env)
	if err != nil || o.natsUser != "flag" || o.natsPassword != "pw" || strings.Join(o.natsURLs, " ") != defaultNATSURL {
		t.Errorf("flags over variables: got %+v, %v", o, err)
	}
	none := func(string) string { return "" }
	for _, bad := range [][]string{
		{"--nats-url", "nats://a:4222"},                 // without --source nats
		{"--nats-stream", "S"},                          // likewise
		{"--source", "nats", "--queue", "q"},            // an AMQP flag
		{"--source", "nats", "--amqp-url", "amqp://x/"}, // likewise
		{"--source", "kafka"},                           // no such source
		{"--source", "nats", "--nats-password", "p"},    // a password without a user
		{"--source", "nats", "--nats-user", "u", "--nats-token", "t"},
		{"--source", "nats", "--nats-user", "u", "--nats-creds", "/x.creds"},
		{"--source", "nats", "--nats-token", "t", "--nats-creds", "/x.creds"},
		{"--source", "nats", "--nats-ack-wait", "10ms"},
		{"--source", "nats", "--nats-durable", ""},
	} {
		if _, err := parseFlags(bad, none); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

func TestRedactNATS(t *testing.T) {
	got := redactNATS([]string{"nats://user:secret@a:4222", "tok@b:4222", "nats://c:4222"})
	if want := "nats://xxxxx@a:4222,xxxxx@b:4222,nats://c:4222"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
