package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/natstest"
	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// freeAddr is a loopback address no one listens on at the moment.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startLsmtp builds lsmtp and runs it with args until the test ends
// (SIGTERM), returning its SMTP address once it greets.
func startLsmtp(t *testing.T, args ...string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "lsmtp")
	build := exec.Command("go", "build", "-o", bin, "github.com/lsmtp/lsmtp/cmd/lsmtp")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build lsmtp: %v\n%s", err, out)
	}
	addr := freeAddr(t)
	var log bytes.Buffer
	cmd := exec.Command(bin, append([]string{"--listen", addr, "--admin-listen", "", "--hostname", "mx.consume.test", "--log-level", "warn"}, args...)...)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("lsmtp's log:\n%s", log.String())
		}
	})
	for deadline := time.Now().Add(15 * time.Second); ; {
		c, greeting, err := smtptest.Dial(addr, time.Second)
		if err == nil {
			c.Close()
			if greeting.Code == 220 {
				return addr
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("lsmtp did not greet on %s: %v %v\n%s", addr, greeting, err, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// e2eMessage is one SMTP transaction of the end-to-end test.
type e2eMessage struct {
	from    string
	rcpts   []string
	content []byte // as the client means it (WriteData dot-stuffs it)
	id      string // the queue ID of its 250
}

// TestEndToEndNATS: lsmtp --sink nats, then lsmtp-consume --mode eml:
// each file holds lsmtp's Received: field and then exactly the octets the
// client sent (dot-unstuffed), with none of the trace fields, one file
// per copy of a {domain} subject; print mode shows each copy's envelope
// from the smtp-* headers and the trace fields.
func TestEndToEndNATS(t *testing.T) {
	// natstest deletes the stream after lsmtp stopped (cleanups run
	// last first): a running lsmtp would declare it again.
	test := natstest.Unique(t)
	stream, subject := test.Stream, test.Subject+".inbound"
	addr := startLsmtp(t, "--sink", "nats", "--nats-url", natstest.URL, "--nats-stream", stream,
		"--nats-subject", subject+".{domain}", "--envelope", "both")

	msgs := []*e2eMessage{
		{from: "alice@example.org", rcpts: []string{"bob@example.com"},
			content: []byte("From: alice@example.org\r\nTo: bob@example.com\r\nSubject: plain\r\n\r\nHello Bob\r\n")},
		{from: "a@example.org", rcpts: []string{"b@example.com"},
			content: []byte("Subject: dots\r\n\r\n.\r\n..two\r\n.x\r\n\r\nend\r\n")},
		{from: "a@example.org", rcpts: []string{"one@example.com", "bcc@example.net"},
			content: []byte("Subject: two domains\r\nTo: one@example.com\r\n\r\nhi\r\n")},
		{from: "", rcpts: []string{"b@example.com"},
			content: append([]byte("Subject: 8bit\r\n\r\n"), 0xc3, 0xa9, 0xff, '\r', '\n')},
	}
	c, _, err := smtptest.Dial(addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Expect("EHLO client.example", 250); err != nil {
		t.Fatal(err)
	}
	copies := 0
	for _, m := range msgs {
		if _, err := c.Expect("MAIL FROM:<"+m.from+"> BODY=8BITMIME", 250); err != nil {
			t.Fatal(err)
		}
		for _, r := range m.rcpts {
			if _, err := c.Expect("RCPT TO:<"+r+">", 250); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.Expect("DATA", 354); err != nil {
			t.Fatal(err)
		}
		if err := c.WriteData(m.content); err != nil {
			t.Fatal(err)
		}
		reply, err := c.Read()
		id, ok := reply.QueueID()
		if err != nil || !ok {
			t.Fatalf("final reply %v, %v; want 250 with a queue ID", reply, err)
		}
		m.id = id
		copies += len(domains(m.rcpts))
	}

	// The envelope of every copy, read by a consumer of its own.
	_, out := natsConsume(t, stream, copies, "--mode", "print", "--nats-durable", "e2e-print")
	for _, want := range []string{
		`  smtp-recipients: "bcc@example.net"` + "\n", // the example.net copy names its recipient only
		`  smtp-recipients: "one@example.com"` + "\n",
		"  X-Original-To: bcc@example.net\n",
		`  smtp-sender: ""` + "\n", // the null sender
		"  Return-Path: <>\n",
		fmt.Sprintf("subject %q", subject+".example.net"),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("print output lacks %q:\n%s", want, out)
		}
	}

	dir := t.TempDir()
	if n, _ := natsConsume(t, stream, copies, "--mode", "eml", "--dir", dir); n != copies {
		t.Fatalf("handled %d, want %d", n, copies)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if len(names) != copies {
		t.Fatalf("files %v, want one per copy (%d)", names, copies)
	}
	for _, m := range msgs {
		var mine []string
		for _, n := range names {
			if strings.HasPrefix(n, m.id) {
				mine = append(mine, n)
			}
		}
		if len(mine) != len(domains(m.rcpts)) {
			t.Errorf("message %s: files %v, want one per recipient domain", m.id, mine)
		}
		for _, n := range mine {
			got, err := os.ReadFile(filepath.Join(dir, n))
			if err != nil {
				t.Fatal(err)
			}
			checkStored(t, n, got, m)
		}
	}
	assertAllAcked(t, stream)
}

// checkStored checks a stored message: lsmtp's Received: field naming
// the queue ID, then the content exactly; nothing of the trace fields.
func checkStored(t *testing.T, name string, got []byte, m *e2eMessage) {
	t.Helper()
	if !hasFieldName(got, "Received:") {
		t.Errorf("%s starts with %q, want lsmtp's Received: field (the trace fields removed)", name, got[:min(len(got), 60)])
		return
	}
	n := fieldLen(got)
	if n < 0 {
		t.Errorf("%s: Received: field does not end", name)
		return
	}
	id := "by mx.consume.test (lsmtp) with ESMTP id " + m.id
	if received := string(got[:n]); !strings.Contains(received, id+";") && !strings.Contains(received, id+"\r\n") {
		t.Errorf("%s: Received: field %q names neither our host nor queue ID %s", name, received, m.id)
	}
	if rest := got[n:]; !bytes.Equal(rest, m.content) {
		t.Errorf("%s after Received: is\n%q\nwant\n%q", name, rest, m.content)
	}
}

// domains are the distinct recipient domains, lower-cased: one copy each.
func domains(rcpts []string) map[string]bool {
	d := map[string]bool{}
	for _, r := range rcpts {
		d[strings.ToLower(r[strings.LastIndexByte(r, '@')+1:])] = true
	}
	return d
}

// TestEndToEndAMQPCopies: lsmtp --sink amqp with a {domain} routing key,
// then lsmtp-consume --mode eml: one message to two domains is two
// copies with the message_ids <queue ID>.<domain>, and so two files, each
// lsmtp's Received: field and then exactly the client's octets; neither
// copy overwrites the other.
func TestEndToEndAMQPCopies(t *testing.T) {
	name := fmt.Sprintf("lsmtp-test.consume.%s.%08x", t.Name(), rand.Uint32())
	ch := rabbittest.AdminChannel(t)
	t.Cleanup(func() { // after lsmtp stopped (cleanups run last first)
		ch.QueueDelete(name, false, false, false)
		ch.ExchangeDelete(name, false, false)
	})
	addr := startLsmtp(t, "--sink", "amqp", "--amqp-url", rabbittest.URL, "--exchange", name, "--queue", name,
		"--queue-type", "classic", "--routing-key", "inbound.{domain}")
	m := &e2eMessage{from: "a@example.org", rcpts: []string{"one@example.com", "bcc@Example.NET", "two@example.com"},
		content: []byte("Subject: two domains\r\nTo: one@example.com\r\n\r\nhi\r\n.\r\n")}
	c, _, err := smtptest.Dial(addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Expect("EHLO client.example", 250); err != nil {
		t.Fatal(err)
	}
	r, err := c.Send(m.from, m.rcpts, m.content)
	if err != nil {
		t.Fatal(err)
	}
	id, ok := r.QueueID()
	if !ok {
		t.Fatalf("final reply %q, want 250 with a queue ID", r.String())
	}
	m.id = id

	dir := t.TempDir()
	if n, _ := runConsume(t, "--amqp-url", rabbittest.URL, "--queue", name, "--count", "2", "--mode", "eml", "--dir", dir); n != 2 {
		t.Fatalf("handled %d, want 2", n)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if want := []string{id + ".example.com.eml", id + ".example.net.eml"}; fmt.Sprint(names) != fmt.Sprint(want) {
		t.Fatalf("files %v, want %v", names, want)
	}
	for _, n := range names {
		got, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		checkStored(t, n, got, m)
	}
	if l := queueLen(t, name); l != 0 {
		t.Errorf("%d messages left unacknowledged", l)
	}
}
