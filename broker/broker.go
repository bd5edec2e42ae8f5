package broker

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lsmtp/lsmtp/codec"
	"github.com/lsmtp/lsmtp/internal/hist"
	"github.com/lsmtp/lsmtp/internal/sink"
	"github.com/lsmtp/lsmtp/internal/spool"
)

// Errors the broker answers with besides sink.ErrUnavailable, sink.ErrBusy
// and sink.ErrShuttingDown. All are 4xx: trouble on our side is temporary
// for the client (RFC 5321 §4.2.5).
var (
	// ErrUnroutable: the exchange had no queue for the routing key
	// (basic.return); RFC 3463 X.3.5 "system incorrectly configured".
	ErrUnroutable = &codec.Reply{Code: 451, Enhanced: "4.3.5", Text: "Message not routable to a queue, try again later"}
	// ErrStorageFull: the broker refused the message for want of room
	// (a JetStream stream at its MaxBytes or MaxMsgs with discard new)
	// until its deadline; RFC 3463 X.3.1, mail system full.
	ErrStorageFull = &codec.Reply{Code: 451, Enhanced: "4.3.1", Text: "Insufficient system storage, try again later"}
)

// Broker is the broker sink: RabbitMQ or NATS JetStream (Config.Sink).
// Create it with New; it is safe for concurrent use.
type Broker struct {
	cfg      Config
	log      *slog.Logger
	tr       transport // the broker-specific half (transport.go)
	ring     *ring
	deferred *deferredQueue
	epoch    time.Time // base of now()

	capacity int64 // most messages held at once (pending)
	maxWait  int64 // Config.maxWait in ns: a message's deadline is received + maxWait
	retry    bool  // Config.PublishRetryWindow > 0

	// maxSize is the largest client message the broker can take
	// (sink.SizeLimiter), learned at each connect; 0 for none known.
	maxSize atomic.Int64

	state   atomic.Uint32 // stateReady | stateBlocked | stateClosing
	pending atomic.Int64  // messages between Submit and Complete
	stats   counters

	workers      []*worker
	liveChannels atomic.Int32 // workers with an open channel

	// The durable backing of the deferred queue (spool.go); nil without
	// Config.SpoolDir.
	spool      *spool.Spool
	spoolShare int          // most spooled records in the replaying worker's window
	replayer   atomic.Int32 // worker id+1 holding the replay lease, 0 for none

	// confirmLatency is publish call to confirm (ack or nack), seconds.
	confirmLatency *hist.Histogram

	connMu      sync.Mutex
	conn        *connection   // nil while disconnected
	connChanged chan struct{} // closed (and replaced) whenever conn changes

	templated  bool // RoutingKey contains {domain}
	nodeValue  any  // Config.Node, boxed once for the header table
	limits     logLimits
	closeOnce  sync.Once
	closeErr   error
	closedDone chan struct{}

	stopWorkers chan struct{} // closed when the workers must finish at once
	stopSup     chan struct{} // closed when the supervisor must disconnect
	workersDone sync.WaitGroup
	supDone     chan struct{}
}

const (
	stateReady   = 1 << iota // connected, topology declared
	stateBlocked             // the broker sent connection.blocked
	stateClosing             // Close was called
)

// New validates cfg and starts connecting in the background. It returns
// even when no broker is reachable: until a connection is up, Submit
// answers sink.ErrUnavailable at once.
func New(cfg Config) (*Broker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "broker")
	if cfg.Sink == SinkNATS {
		// The shared half sizes the windows from Workers and Window.
		cfg.Workers, cfg.Window = cfg.NATSWorkers, cfg.NATSMaxPending
	}
	b := &Broker{
		cfg: cfg,
		log: log,
		// One cell more than the messages that can be held, so that a
		// push never meets a cell whose consumer has claimed it but not
		// yet freed it (ring.go).
		ring:        newRing(cfg.capacity() + 1),
		deferred:    newDeferredQueue(cfg.ReconnectMin),
		capacity:    int64(cfg.capacity()),
		maxWait:     int64(cfg.maxWait()),
		retry:       cfg.PublishRetryWindow > 0,
		epoch:       time.Now(),
		connChanged: make(chan struct{}),
		templated:   containsDomain(cfg.RoutingKey),
		nodeValue:   cfg.Node,
		closedDone:  make(chan struct{}),
		stopWorkers: make(chan struct{}),
		stopSup:     make(chan struct{}),
		supDone:     make(chan struct{}),

		confirmLatency: hist.New(hist.Exponential(0.0005, 2, 16)...), // 0.5 ms .. 16 s
	}
	if cfg.Sink == SinkNATS {
		b.tr = newNATSTransport(b)
	} else {
		b.tr = &amqpTransport{b: b}
	}
	if cfg.SpoolDir != "" {
		if err := b.openSpool(); err != nil {
			return nil, err
		}
	}
	for i := 0; i < cfg.Workers; i++ {
		w := newWorker(b, i)
		b.workers = append(b.workers, w)
		b.workersDone.Add(1)
		go w.run()
	}
	go b.supervise()
	return b, nil
}

// ConfirmLatency is the time from a publish call to the broker's confirm
// (ack or nack, PubAck or error), in seconds, one observation per publish.
func (b *Broker) ConfirmLatency() *hist.Histogram { return b.confirmLatency }

// now is a monotonic clock in nanoseconds since New.
func (b *Broker) now() int64 { return int64(time.Since(b.epoch)) }

// Ready reports whether a connection to the broker is up, for health checks.
func (b *Broker) Ready() bool { return b.state.Load()&stateReady != 0 }

// Kind names the broker: "RabbitMQ" or "NATS".
func (b *Broker) Kind() string { return b.tr.kind() }

// Limits reports what one message may carry so that it always encodes
// (sink.Limiter); see internal/sink/limits.go.
func (b *Broker) Limits() sink.Limits { return b.tr.limits() }

var _ sink.Limiter = (*Broker)(nil)

// MaxMessageSize is the largest client message the broker can take
// (sink.SizeLimiter): for NATS, the server's max_payload less what lsmtp
// adds at its largest, from the last connect; 0 before it, and always 0
// for RabbitMQ, which tells a client no limit of its own (its
// max_message_size, 128 MiB by default, is above what the in-flight
// budget lets one message be).
func (b *Broker) MaxMessageSize() int64 { return b.maxSize.Load() }

var _ sink.SizeLimiter = (*Broker)(nil)

// Submit hands msg to a publisher worker. It never blocks and does not
// allocate. After Close it answers sink.ErrShuttingDown, and with more
// than Config.capacity messages held sink.ErrBusy, at once. While the
// broker is not connected or is blocked the message waits (deferred) up
// to its deadline; with PublishRetryWindow 0 it is answered
// sink.ErrUnavailable at once instead.
func (b *Broker) Submit(msg *sink.Message) {
	// Counted before the state is read, so that Close, once it has set
	// stateClosing and seen pending reach zero, knows no Submit is between
	// its check and its push.
	n := b.pending.Add(1)
	st := b.state.Load()
	switch {
	case st&stateClosing != 0:
		b.stats.rejectedShutdown.Add(1)
		b.finish(msg, sink.ErrShuttingDown)
		return
	case !b.retry && st&stateReady == 0:
		b.stats.rejectedDown.Add(1)
		b.finish(msg, sink.ErrUnavailable)
		return
	case !b.retry && st&stateBlocked != 0:
		b.stats.rejectedBlocked.Add(1)
		b.finish(msg, sink.ErrUnavailable)
		return
	}
	// With pending at most capacity, the ring (capacity+1 cells) has
	// room: push fails only when more messages are held than configured.
	if n > b.capacity || !b.ring.push(msg, b.stamp(msg)) {
		b.stats.rejectedBusy.Add(1)
		if b.limits.busy.allow(b.now()) {
			b.log.Warn("more messages held than the broker is sized for (RingSize, MaxWaiting), answering 451 4.3.2",
				"capacity", b.capacity, "suppressed", b.limits.busy.suppressedSince())
		}
		b.finish(msg, sink.ErrBusy)
		return
	}
	b.stats.submitted.Add(1)
	b.notify()
}

// stamp is when msg was handed over, on the broker clock: its deadline is
// stamp + maxWait. The engine submits at the final dot, so this is when
// the client started waiting for its reply; msg.Received is not used,
// since it is the engine's to set (a test or a replay may set any time).
func (b *Broker) stamp(*sink.Message) int64 { return b.now() }

// kick makes every worker look at the deferred queue and the state again.
func (b *Broker) kick() {
	for _, w := range b.workers {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
}

// expireDeferred answers 451 to the deferred messages whose deadline passed.
func (b *Broker) expireDeferred(now int64) {
	for e, ok := b.deferred.takeExpired(now); ok; e, ok = b.deferred.takeExpired(now) {
		b.expire(e.msg, now, e.spoolErr, e.full)
	}
}

// expire answers 451 to m, whose deadline passed before the broker took
// it: ErrSpoolFull when the spool could not take it (spoolErr),
// ErrStorageFull when the broker's last answer was that it is full.
func (b *Broker) expire(m *sink.Message, now int64, spoolErr, full bool) {
	b.stats.expired.Add(1)
	b.stats.failed.Add(1)
	if b.limits.expired.allow(now) {
		b.log.Warn(b.tr.kind()+" did not take a message before its deadline, answering 451",
			"deadline", b.cfg.maxWait(), "full", full, "suppressed", b.limits.expired.suppressedSince())
	}
	switch {
	case spoolErr:
		b.finish(m, ErrSpoolFull)
	case full:
		b.finish(m, ErrStorageFull)
	default:
		b.finish(m, sink.ErrUnavailable)
	}
}

// notify wakes one idle worker, if any is waiting; it never blocks.
//
// The wake-up goes to the first worker (lowest id) with a channel and
// room in its window, so that a worker is woken only when the ones
// before it are full: under light load one channel carries every
// publish, and RabbitMQ confirms them in that channel's batches rather
// than in smaller ones per channel (with a connection per SMTP message,
// two channels each nearly idle cost RabbitMQ 1.7x the system calls per
// message of the bridge's one, one channel 0.95x: bench/factors.md,
// "Connection per message"); under
// heavy load the next worker takes what the first one's window cannot
// hold. With no worker open and none with a channel, every worker is
// woken: without a channel a worker defers or answers the ring
// (worker.run).
//
// Submit pushes before it reads the workers' open flags, and a worker
// sets its flag before it looks at the ring again (worker.session), so
// a message is never left in the ring with every worker asleep.
func (b *Broker) notify() {
	for _, w := range b.workers {
		if w.open.Load() {
			w.wakeUp()
			return
		}
	}
	if b.liveChannels.Load() == 0 {
		b.wakeAll()
	}
}

// wakeAll wakes every worker.
func (b *Broker) wakeAll() {
	for _, w := range b.workers {
		w.wakeUp()
	}
}

// finish releases msg's data and tells the engine the outcome.
func (b *Broker) finish(msg *sink.Message, err error) {
	msg.ReleaseData()
	msg.Done.Complete(msg, err)
	b.pending.Add(-1)
}

// Close stops taking messages (Submit answers sink.ErrShuttingDown) and
// waits until every message already taken got its confirm or its error.
// When ctx ends first, what is still unconfirmed is answered
// sink.ErrUnavailable and Close returns ctx's error. Close then closes
// the connection. Calling Close again waits for the first call.
func (b *Broker) Close(ctx context.Context) error {
	b.closeOnce.Do(func() {
		b.closeErr = b.close(ctx)
		close(b.closedDone)
	})
	select {
	case <-b.closedDone:
		return b.closeErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *Broker) close(ctx context.Context) error {
	b.state.Or(stateClosing)
	b.wakeAll()
	var err error
	tick := time.NewTicker(2 * time.Millisecond)
	for b.pending.Load() > 0 && err == nil {
		select {
		case <-tick.C:
		case <-ctx.Done():
			err = fmt.Errorf("broker: close: %d messages not confirmed in time: %w", b.pending.Load(), ctx.Err())
		}
	}
	tick.Stop()
	close(b.stopWorkers) // workers answer what they still hold with ErrUnavailable
	b.workersDone.Wait()
	// What is still deferred, and a Submit that counted itself just before
	// stateClosing and pushed after the workers left: answer them here.
	// Submit never blocks, so this ends.
	for deadline := time.Now().Add(time.Second); b.pending.Load() > 0 && time.Now().Before(deadline); {
		if e, ok := b.deferred.takeAny(); ok {
			b.stats.failed.Add(1)
			b.finish(e.msg, sink.ErrUnavailable)
			continue
		}
		if m, _ := b.ring.pop(); m != nil {
			b.stats.failed.Add(1)
			b.finish(m, sink.ErrUnavailable)
			continue
		}
		time.Sleep(time.Millisecond)
	}
	close(b.stopSup)
	<-b.supDone
	if b.spool != nil {
		// What is spooled and not confirmed stays for the next start.
		if serr := b.spool.Close(); serr != nil && err == nil {
			err = fmt.Errorf("broker: close spool: %w", serr)
		}
	}
	return err
}

// currentConn returns the connection (nil while down) and a channel closed
// when that changes.
func (b *Broker) currentConn() (*connection, chan struct{}) {
	b.connMu.Lock()
	defer b.connMu.Unlock()
	return b.conn, b.connChanged
}

func (b *Broker) setConn(c *connection) {
	b.connMu.Lock()
	b.conn = c
	close(b.connChanged)
	b.connChanged = make(chan struct{})
	b.connMu.Unlock()
	if c != nil {
		// What waited for a connection goes at once on the new one.
		b.deferred.reset()
		b.state.Or(stateReady)
	} else {
		b.state.And(^uint32(stateReady | stateBlocked))
	}
}
