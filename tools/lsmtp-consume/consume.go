package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/broker"
)

// run consumes until ctx ends, o.count messages were handled, or a
// message cannot be written (it is then requeued). It returns how many
// messages were handled and acknowledged.
func run(ctx context.Context, o options, out io.Writer) (int, error) {
	cfg := amqp.Config{Heartbeat: 10 * time.Second, Locale: "en_US", Dial: amqp.DefaultDial(10 * time.Second)}
	if o.username != "" {
		cfg.SASL = []amqp.Authentication{&amqp.PlainAuth{Username: o.username, Password: o.password}}
	}
	conn, err := amqp.DialConfig(o.url, cfg)
	if err != nil {
		return 0, fmt.Errorf("connect to %s: %w", broker.RedactURL(o.url), err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return 0, err
	}
	if err := ch.Qos(o.prefetch, 0, false); err != nil {
		return 0, err
	}
	deliveries, err := ch.Consume(o.queue, "lsmtp-consume", false, false, false, false, nil)
	if err != nil {
		return 0, fmt.Errorf("consume %q: %w", o.queue, err)
	}
	var write func(amqp.Delivery) error
	switch o.mode {
	case "print":
		write = func(d amqp.Delivery) error { return printEnvelope(out, d) }
	case "eml":
		if err := os.MkdirAll(o.dir, 0o700); err != nil {
			return 0, err
		}
		write = func(d amqp.Delivery) error { return writeEML(o.dir, d) }
	case "maildir":
		md, err := openMaildir(o.dir)
		if err != nil {
			return 0, err
		}
		write = md.deliver
	}
	n := 0
	for o.count == 0 || n < o.count {
		var d amqp.Delivery
		var ok bool
		select {
		case d, ok = <-deliveries:
			if !ok {
				return n, errors.New("RabbitMQ closed the consumer")
			}
		case <-ctx.Done():
			return n, ctx.Err()
		}
		if err := write(d); err != nil {
			// Back to the queue, for this run or the next: losing a
			// message is worse than stopping.
			d.Nack(false, true)
			return n, fmt.Errorf("message %q: %w", d.MessageId, err)
		}
		if err := d.Ack(false); err != nil {
			return n, fmt.Errorf("ack %q: %w", d.MessageId, err)
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

// printEnvelope writes the properties, the smtp-* headers and lsmtp's
// trace fields of d, one per line (folded fields unfolded), and a blank
// line.
func printEnvelope(w io.Writer, d amqp.Delivery) error {
	var b strings.Builder
	fmt.Fprintf(&b, "message %s: %d bytes, routing key %q, published %s by %s\n",
		d.MessageId, len(d.Body), d.RoutingKey, d.Timestamp.UTC().Format(time.RFC3339), d.AppId)
	names := make([]string, 0, len(d.Headers))
	for k := range d.Headers {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(&b, "  %s: %s\n", k, headerValue(d.Headers[k]))
	}
	trace, _ := splitTrace(d.Body)
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

func headerValue(v any) string {
	switch v := v.(type) {
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = headerValue(e)
		}
		return strings.Join(parts, ", ")
	case string:
		return fmt.Sprintf("%q", v)
	default:
		return fmt.Sprint(v)
	}
}

// fileName makes a message ID safe as a file name.
func fileName(id string, tag uint64) string {
	if id == "" {
		return fmt.Sprintf("delivery-%d", tag)
	}
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, strings.TrimLeft(id, "."))
}

// writeEML writes d's body to dir/<message id>.eml: into a temporary file,
// fsynced, renamed into place, and the directory fsynced, so that the
// file is either complete or absent. A redelivered message overwrites its
// file with the same content.
func writeEML(dir string, d amqp.Delivery) error {
	final := filepath.Join(dir, fileName(d.MessageId, d.DeliveryTag)+".eml")
	tmp := filepath.Join(dir, "."+fileName(d.MessageId, d.DeliveryTag)+".eml.tmp")
	_, msg := splitTrace(d.Body)
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

func (m *maildir) deliver(d amqp.Delivery) error {
	name := m.uniqueName()
	tmp := filepath.Join(m.dir, "tmp", name)
	_, msg := splitTrace(d.Body)
	if err := writeSynced(tmp, msg); err != nil {
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
