// Package sink defines the hand-off between the SMTP engine and the place a
// finished message goes (RabbitMQ, or nowhere for benchmarks).
//
// The engine fills a Message, calls Submit and answers the client only when
// the sink calls Done.Complete. A sink never blocks in Submit: Submit runs on
// an event loop.
package sink

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/valyala/bytebufferpool"

	"github.com/lsmtp/lsmtp/codec"
)

// BodyType is the BODY= parameter of MAIL (RFC 6152, RFC 3030).
type BodyType uint8

const (
	Body7Bit BodyType = iota
	Body8BitMIME
	BodyBinaryMIME
)

func (b BodyType) String() string {
	switch b {
	case Body8BitMIME:
		return "8BITMIME"
	case BodyBinaryMIME:
		return "BINARYMIME"
	default:
		return "7BIT"
	}
}

// Message is one finished SMTP transaction.
//
// The engine owns a Message and everything it points to; between Submit and
// Done.Complete the sink may read it from any goroutine. After Complete the
// sink must not touch it again: the engine reuses the struct and the byte
// slices for the session's next transaction.
type Message struct {
	QueueID    string    // time-sortable, unique across nodes and restarts
	Sender     []byte    // reverse-path without angle brackets; empty for <>
	Recipients [][]byte  // forward-paths without angle brackets
	ClientIP   string    // textual IP of the SMTP client
	ClientPort int       // TCP source port of the SMTP client
	Helo       []byte    // HELO/EHLO argument
	Size       int64     // SIZE= declared at MAIL (RFC 1870), 0 if none
	Body       BodyType  // BODY= declared at MAIL
	SMTPUTF8   bool      // SMTPUTF8 declared at MAIL (RFC 6531)
	Received   time.Time // when the final dot (or BDAT LAST) arrived

	// Over TLS (RFC 3207, RFC 8314): the version ("TLS 1.3") and cipher
	// suite (crypto/tls names); empty in the clear.
	TLSVersion, TLSCipher string
	// AuthUser is the user who authenticated (RFC 4954); nil for none.
	AuthUser []byte

	// Data is our Received: header (with Limits.TraceFields, under the
	// trace fields of the envelope) followed by the message exactly as
	// received after dot-unstuffing. It comes from bytebufferpool; the sink
	// calls ReleaseData once it no longer needs the bytes (for RabbitMQ, as
	// soon as the publish call returned), at the latest before Complete.
	Data *bytebufferpool.ByteBuffer
	// TraceLen is how many octets at the head of Data are the trace
	// fields above our Received: (Limits.TraceFields, trace.go); 0 when
	// the sink asked for none. A sink that publishes a copy per
	// recipient domain writes each copy's own in their place.
	TraceLen int

	// Done is told the outcome, exactly once, from any goroutine.
	Done Completion
}

// ReleaseData returns Data to its pool. It is safe to call more than once
// from the goroutine that owns the message at that moment.
func (m *Message) ReleaseData() {
	if m.Data != nil {
		bytebufferpool.Put(m.Data)
		m.Data = nil
	}
}

// Completion receives the outcome of a submitted message.
type Completion interface {
	// Complete reports that msg is safely stored (err == nil) or not. The
	// client is answered with Reply(err): a sink chooses its reply by
	// failing with a 4xx *codec.Reply; anything else is 451 4.3.0.
	Complete(msg *Message, err error)
}

// Sink takes finished messages.
type Sink interface {
	// Submit hands msg over; it must not block. msg.Done.Complete is called
	// exactly once, possibly before Submit returns.
	Submit(msg *Message)
	// Close stops taking messages and waits, until ctx ends, for every
	// submitted message to be completed.
	Close(ctx context.Context) error
}

// Replies shared by sinks. A sink fails a message with one of these, or
// with a *codec.Reply of its own, always a 4xx.
var (
	// ErrUnavailable: the broker is not connected or did not confirm.
	ErrUnavailable = &codec.Reply{Code: 451, Enhanced: "4.3.0", Text: "Temporary failure storing the message, try again later"}
	// ErrBusy: the hand-off queue is full.
	ErrBusy = &codec.Reply{Code: 451, Enhanced: "4.3.2", Text: "System busy, try again later"}
	// ErrShuttingDown: the sink is closing.
	ErrShuttingDown = &codec.Reply{Code: 421, Enhanced: "4.3.2", Text: "Service shutting down, try again later"}
)

// Reply is what the client is told about a message the sink failed with
// err. A sink's trouble is ours, never the sender's, so it is always
// temporary (RFC 5321 §4.2.5): a 4xx *codec.Reply stands as it is, and
// anything else, a 5xx included, becomes ErrUnavailable (451 4.3.0). err
// is taken as it is, not unwrapped: a sink returns its reply itself.
func Reply(err error) *codec.Reply {
	if r, ok := err.(*codec.Reply); ok && r.Code >= 400 && r.Code < 500 {
		return r
	}
	return ErrUnavailable
}

// QueuedPrefix starts the reply to a stored message; the queue ID and CRLF
// follow ("250 2.0.0 OK queued as <id>"). Clients cut the ID after it.
const QueuedPrefix = "250 2.0.0 OK queued as "

// AppendQueued appends the reply to a message stored under queueID.
func AppendQueued(dst []byte, queueID string) []byte {
	dst = append(dst, QueuedPrefix...)
	dst = append(dst, queueID...)
	return append(dst, '\r', '\n')
}

// Null accepts, counts and discards every message. It is the sink for
// benchmarks of the SMTP engine alone.
type Null struct {
	messages atomic.Int64
	octets   atomic.Int64
}

func (n *Null) Submit(msg *Message) {
	n.messages.Add(1)
	n.octets.Add(int64(msg.Data.Len()))
	msg.ReleaseData()
	msg.Done.Complete(msg, nil)
}

func (*Null) Close(context.Context) error { return nil }

// Messages is how many messages were submitted.
func (n *Null) Messages() int64 { return n.messages.Load() }

// Octets is the total size of the messages submitted, Received: headers
// included.
func (n *Null) Octets() int64 { return n.octets.Load() }
