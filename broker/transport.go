package broker

import (
	"time"

	"github.com/lsmtp/lsmtp/internal/sink"
)

// The broker is two halves. The shared half is the same for every
// broker: the ring, Submit, the deferred path with its backoff, the
// spool, expiry, completion, stats and Close (broker.go, worker.go,
// deferred.go, spool.go), and the supervisor that dials the configured
// servers in turn with backoff (conn.go). The other half speaks to one
// kind of broker: a transport dials a server and declares the topology,
// a link is the connection the workers share, and a publisher is one
// worker's publishing session on it, with its own window of publishes
// waiting for their confirms: an AMQP channel in confirm mode (amqp.go)
// or a JetStream context publishing asynchronously (nats.go).
//
// The worker loop (worker.session) owns the window, a FIFO of in-flight
// publishes tagged 1, 2, 3… per session, and settles each publish once
// the publisher reports its outcome by tag.

// transport connects to one kind of broker.
type transport interface {
	// kind names the broker in log lines: "RabbitMQ", "NATS".
	kind() string
	// urls are the servers the supervisor dials in turn.
	urls() []string
	// redact returns url fit for logs.
	redact(url string) string
	// dial connects to url and, with declaring configured, declares the
	// topology on it.
	dial(url string) (link, error)
	// limits is what one message may carry (sink.Limiter).
	limits() sink.Limits
}

// link is one established connection, shared by the workers.
type link interface {
	// watch follows the connection from the supervisor's goroutine until
	// it is lost (false) or stop is closed (true: closed gracefully).
	// While it runs it calls b.watchdog at least once a second.
	watch(b *Broker, stop <-chan struct{}) (stopped bool)
	// kill closes the socket at once: it unblocks a publish stuck in a
	// write, which a graceful close cannot.
	kill()
	// publisher opens a publishing session for w.
	publisher(w *worker) (publisher, error)
}

// publisher is one worker's publishing session on a link, used only by
// that worker's goroutine.
type publisher interface {
	// prepare readies the copies of m and returns how many there are.
	prepare(m *sink.Message) int
	// check says why the copies last prepared cannot be published; the
	// zero problem means they can. It does not allocate.
	check(copies int) problem
	// send publishes copy i of the message last prepared as the publish
	// tagged tag; id and key identify it to the broker (for matching a
	// returned publish).
	send(m *sink.Message, i int, tag uint64) (id, key string, err error)
	// cork and uncork bracket one fill of the window, so that its
	// publishes go out in as few writes as possible.
	cork()
	uncork() error
	// wait blocks until a confirm arrived (settled through w.settleTag or
	// the publisher's own order) or one of w.ws fired, and says which.
	wait(w *worker) (woke, error)
	// drain settles the confirms already received, without waiting.
	drain(w *worker)
	// close ends the session after the worker settled what was in
	// flight; err is why the session ended (nil when the workers stop),
	// and the result is err with the reason the broker gave, if any.
	close(err error) error
}

// waitSet is what a worker waits for besides its confirms; the worker
// fills it before every publisher.wait.
type waitSet struct {
	wake     <-chan struct{}  // the ring has something (nil while the window is full)
	kick     <-chan struct{}  // look at the deferred queue and the state again
	deferred <-chan time.Time // a deferred deadline or the end of the backoff
	timeout  <-chan time.Time // the head of the window is overdue
	stop     <-chan struct{}  // the workers stop
	closed   <-chan struct{}  // the link is gone
}

// woke says what ended a publisher.wait.
type woke uint8

const (
	wokeConfirm  woke = iota // confirms arrived and were settled
	wokeWake                 // the ring has something, or a kick
	wokeDeferred             // the deferred queue's timer
	wokeTimeout              // the window's timer
	wokeStop                 // the workers stop
)
