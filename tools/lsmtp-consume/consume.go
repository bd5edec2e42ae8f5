package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// A message is one delivery from either source, as the writers need it.
type message struct {
	id      string   // lsmtp's queue ID: AMQP message_id, JetStream Nats-Msg-Id; may be empty
	seq     uint64   // the source's number for it (delivery tag, stream sequence), names a message without an ID
	body    []byte   // as published
	summary string   // where it came from, after "message <id>: <size> bytes, " in print mode
	headers []header // the broker's headers (smtp-* and others), sorted by name

	ack     func() error // after the write: the source forgets the message
	requeue func()       // the write failed: the source delivers it again
}

// header is one header of a message with its value as print shows it.
type header struct{ name, value string }

// A source hands out messages one at a time.
type source interface {
	// next waits for the next message until ctx ends. left is how many
	// more the run takes (0: no limit), so that no more are fetched
	// ahead than will be handled.
	next(ctx context.Context, left int) (*message, error)
	// close gives back what was fetched but not handed out and
	// disconnects.
	close()
}

// run consumes until ctx ends, o.count messages were handled, or a
// message cannot be written (it is then requeued). It returns how many
// messages were handled and acknowledged.
func run(ctx context.Context, o options, out io.Writer) (int, error) {
	write, err := newWriter(o, out)
	if err != nil {
		return 0, err
	}
	var src source
	switch o.source {
	case sourceNATS:
		src, err = openNATS(ctx, o)
	default:
		src, err = openAMQP(o)
	}
	if err != nil {
		return 0, err
	}
	defer src.close()
	return consume(ctx, src, write, o.count)
}

// newWriter is what o.mode does with each message.
func newWriter(o options, out io.Writer) (func(*message) error, error) {
	switch o.mode {
	case "eml":
		if err := os.MkdirAll(o.dir, 0o700); err != nil {
			return nil, err
		}
		return func(m *message) error { return writeEML(o.dir, m) }, nil
	case "maildir":
		md, err := openMaildir(o.dir)
		if err != nil {
			return nil, err
		}
		return md.deliver, nil
	default:
		return func(m *message) error { return printEnvelope(out, m) }, nil
	}
}

// beforeWrite, when set (by tests), runs between a message's arrival and
// its write.
var beforeWrite func(*message)

// consume writes messages from src until ctx ends, count were handled (0:
// no limit), or one cannot be written. A message is acknowledged only
// after its write returned (for eml and maildir: after the fsyncs), so a
// crash at any point leaves it with the broker, to be delivered again.
func consume(ctx context.Context, src source, write func(*message) error, count int) (int, error) {
	n := 0
	for count == 0 || n < count {
		left := 0
		if count > 0 {
			left = count - n
		}
		m, err := src.next(ctx, left)
		if err != nil {
			return n, err
		}
		if beforeWrite != nil {
			beforeWrite(m)
		}
		if err := write(m); err != nil {
			// Back to the broker, for this run or the next: losing a
			// message is worse than stopping.
			m.requeue()
			return n, fmt.Errorf("message %q: %w", m.id, err)
		}
		if err := m.ack(); err != nil {
			return n, fmt.Errorf("ack %q: %w", m.id, err)
		}
		n++
	}
	return n, nil
}

// traceFields are the fields lsmtp writes above its Received: field with
// --envelope trace or both (README, "What reaches the queue"). They name
// every recipient, Bcc ones included, so a message written where its
// recipients read it must not keep them.
var traceFields = []string{"Return-Path:", "X-Original-To:", "X-Lsmtp-Envelope:", "X-Lsmtp-Auth:"}

// splitTrace splits lsmtp's trace fields from the head of body: the
// leading Return-Path, X-Original-To and X-Lsmtp-Envelope fields, only
// when a Received: field follows them (lsmtp's own, under which the
// message as the client sent it starts). Anything else is no trace of
// lsmtp's and stays: trace is then empty.
func splitTrace(body []byte) (trace, rest []byte) {
	i := 0
	for {
		if hasFieldName(body[i:], "Received:") {
			return body[:i], body[i:]
		}
		known := false
		for _, f := range traceFields {
			known = known || hasFieldName(body[i:], f)
		}
		if !known {
			return nil, body
		}
		n := fieldLen(body[i:])
		if n < 0 {
			return nil, body
		}
		i += n
	}
}

// hasFieldName reports whether b starts with the field name and colon
// name, compared case-insensitively (RFC 5322 §1.2.2).
func hasFieldName(b []byte, name string) bool {
	return len(b) >= len(name) && strings.EqualFold(string(b[:len(name)]), name)
}

// fieldLen is the length of the header field at the start of b with its
// folded lines (RFC 5322 §2.2.3) and final CRLF, or -1 if it does not end.
func fieldLen(b []byte) int {
	for i := 0; ; {
		j := bytes.Index(b[i:], []byte("\r\n"))
		if j < 0 {
			return -1
		}
		i += j + 2
		if i == len(b) || b[i] != ' ' && b[i] != '\t' {
			return i
		}
	}
}

// printEnvelope writes what the source says of m, its headers and
// lsmtp's trace fields, one per line (folded fields unfolded), and a
// blank line.
func printEnvelope(w io.Writer, m *message) error {
	var b strings.Builder
	fmt.Fprintf(&b, "message %s: %d bytes, %s\n", m.id, len(m.body), m.summary)
	for _, h := range m.headers {
		fmt.Fprintf(&b, "  %s: %s\n", h.name, h.value)
	}
	trace, _ := splitTrace(m.body)
	for len(trace) > 0 {
		n := fieldLen(trace)
		field := strings.NewReplacer("\r\n\t", " ", "\r\n ", " ").Replace(string(trace[:n-2]))
		fmt.Fprintf(&b, "  %s\n", strings.ToValidUTF8(field, "?"))
		trace = trace[n:]
	}
	b.WriteByte('\n')
	_, err := io.WriteString(w, b.String())
	return err
}

// fileName makes a message ID safe as a file name.
func fileName(id string, seq uint64) string {
	if id == "" {
		return fmt.Sprintf("delivery-%d", seq)
	}
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, strings.TrimLeft(id, "."))
}

// writeEML writes m's body to dir/<message id>.eml: into a temporary file,
// fsynced, renamed into place, and the directory fsynced, so that the
// file is either complete or absent. A redelivered message overwrites its
// file with the same content.
func writeEML(dir string, m *message) error {
	final := filepath.Join(dir, fileName(m.id, m.seq)+".eml")
	tmp := filepath.Join(dir, "."+fileName(m.id, m.seq)+".eml.tmp")
	_, msg := splitTrace(m.body)
	if err := writeSynced(tmp, msg); err != nil {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(dir)
}

// maildir delivers into a Maildir: write into tmp/, fsync, rename into
// new/ (https://cr.yp.to/proto/maildir.html).
type maildir struct {
	dir  string
	host string
	seq  atomic.Uint64
}

func openMaildir(dir string) (*maildir, error) {
	for _, sub := range []string{"tmp", "new", "cur"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, err
		}
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	// "/" and ":" cannot appear in a Maildir name; the convention escapes them.
	host = strings.NewReplacer("/", `\057`, ":", `\072`).Replace(host)
	return &maildir{dir: dir, host: host}, nil
}

// uniqueName is the modern Maildir form: seconds, then M<microseconds>
// P<pid> Q<delivery counter>, then the host.
func (m *maildir) uniqueName() string {
	now := time.Now()
	return fmt.Sprintf("%d.M%dP%dQ%d.%s", now.Unix(), now.Nanosecond()/1000, os.Getpid(), m.seq.Add(1), m.host)
}

func (m *maildir) deliver(msg *message) error {
	name := m.uniqueName()
	tmp := filepath.Join(m.dir, "tmp", name)
	_, body := splitTrace(msg.body)
	if err := writeSynced(tmp, body); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(m.dir, "new", name)); err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Join(m.dir, "new"))
}

// writeSynced writes data to path (created or truncated) and fsyncs it.
func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
