package broker

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/lsmtp/lsmtp/internal/sink"
)

// worker is one publisher: it owns a publishing session (an AMQP channel
// in confirm mode, a JetStream context: transport.go), takes messages
// from the ring while fewer than Window publishes are unconfirmed, and
// completes each message when the confirms of all its copies are back.
//
// The in-flight publishes are a FIFO in the order they were published,
// tagged 1, 2, 3… per session; a confirm settles the head (RabbitMQ
// confirms in that order) or marks its entry, which is settled when it
// reaches the head (settleTag): no goroutine per message.
type worker struct {
	b    *Broker
	id   int
	kick chan struct{} // 1-buffered: look at the deferred queue and the state again
	wake chan struct{} // 1-buffered: the ring has something (Broker.notify)
	// open says the worker has a channel and room in its window: the
	// first open worker is the one Broker.notify wakes.
	open atomic.Bool

	// publishingSince is the broker clock when the publish call in progress
	// started, 0 when none is; read by the supervisor's watchdog.
	publishingSince atomic.Int64

	fifo    fifo
	nextTag uint64 // tag of the next publish in the current session
	head    copies // outcomes of the settled copies of the message at the head
	// timer wakes the worker for the deferred queue: a deadline, or the
	// end of the backoff.
	timer      *time.Timer
	timerArmed bool
	// ws is what the current session waits for besides its confirms.
	ws waitSet

	spInFlight int // spooled records in the window (spool.go)
}

func newWorker(b *Broker, id int) *worker {
	w := &worker{b: b, id: id, kick: make(chan struct{}, 1), wake: make(chan struct{}, 1), timer: time.NewTimer(time.Hour)}
	w.timer.Stop()
	return w
}

// wakeUp tells w the ring has something, without waiting.
func (w *worker) wakeUp() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// copies collects the outcomes of a message's copies until the last one
// is settled.
type copies struct {
	acked, retry, unknown, unroutable, full bool
}

// outcome is how RabbitMQ answered (or did not answer) one publish.
type outcome uint8

const (
	outAcked      outcome = iota
	outNacked             // refused: not stored, worth another attempt
	outUnknown            // lost with its channel or connection, or timed out: maybe stored
	outUnroutable         // returned: another attempt would be returned too
	outFull               // refused for want of room (a full stream): not stored, worth another attempt
)

// armTimer sets the worker's timer for the deferred queue's next event
// (retry: the end of the backoff too, when the worker could publish),
// or stops it when nothing is deferred.
func (w *worker) armTimer(retry bool) <-chan time.Time {
	if w.b.deferred.len() == 0 {
		if w.timerArmed {
			w.timer.Stop()
			w.timerArmed = false
		}
		return nil
	}
	now := w.b.now()
	at := w.b.deferred.next(now, retry)
	if at == 0 {
		return nil
	}
	w.timer.Reset(time.Duration(max(at-now, 0)))
	w.timerArmed = true
	return w.timer.C
}

// run serves connection after connection until Close.
func (w *worker) run() {
	defer w.b.workersDone.Done()
	retry := w.b.cfg.ReconnectMin
	var failed *connection // connection on which our channel failed last
	var retryAt time.Time  // when to reopen a channel on failed; wake-ups must not push it back
	for {
		c, changed := w.b.currentConn()
		if c != nil && c != failed {
			err := w.session(c)
			select {
			case <-w.b.stopWorkers:
				return
			default:
			}
			if err == nil {
				continue
			}
			w.b.stats.channelFailures.Add(1)
			select {
			case <-c.closed:
				// The connection went; the supervisor logs that.
			default:
				if w.b.limits.channel.allow(w.b.now()) {
					w.b.log.Warn("publisher channel failed, reopening it",
						"worker", w.id, "err", err, "suppressed", w.b.limits.channel.suppressedSince())
				}
			}
			failed = c
			retryAt = time.Now().Add(retry)
			retry = min(retry*2, w.b.cfg.ReconnectMax)
		}
		// No channel here. If no other worker has one either, whatever
		// reaches the ring is deferred (answered when its deadline passes
		// unless a channel opens before), or without a retry window
		// answered at once; otherwise the ring is left (wake-ups
		// included) to the workers that can publish. Meanwhile wait for a
		// (new) connection or, after a channel failure on a live
		// connection, for the retry time.
		var wake chan struct{}
		if w.b.liveChannels.Load() == 0 {
			if w.b.retry {
				w.deferRing()
			} else {
				w.failRing()
			}
			wake = w.wake
		}
		var retryC <-chan time.Time
		var t *time.Timer
		if c != nil && c == failed {
			t = time.NewTimer(time.Until(retryAt))
			retryC = t.C
		}
		select {
		case <-changed:
			retry = w.b.cfg.ReconnectMin
		case <-retryC:
			failed = nil
		case <-wake:
			if w.b.liveChannels.Load() > 0 && w.b.ring.len() > 0 {
				// Another worker opened a channel meanwhile: the wake-up
				// was meant for it, so pass it on rather than swallow it.
				w.b.notify()
			}
		case <-w.kick:
		case <-w.armTimer(false):
			w.b.expireDeferred(w.b.now())
		case <-w.b.stopWorkers:
			return
		}
		if t != nil {
			t.Stop()
		}
	}
}

// deferRing moves every message in the ring to the deferred queue: no
// worker can publish now, or older mail waits for its backoff, and newer
// mail waits behind it. There, each is answered when its deadline passes.
func (w *worker) deferRing() {
	moved := false
	for m, at := w.b.ring.pop(); m != nil; m, at = w.b.ring.pop() {
		w.b.stats.deferred.Add(1)
		if w.b.spool != nil {
			w.b.spoolDefer(m, at+w.b.maxWait, false, false)
		} else {
			w.b.deferred.add(deferredMsg{msg: m, due: at + w.b.maxWait})
		}
		moved = true
	}
	if moved {
		w.b.kick() // the others arm their timers for the new deadlines
	}
}

// failRing answers every message in the ring with ErrUnavailable.
func (w *worker) failRing() {
	for m, _ := w.b.ring.pop(); m != nil; m, _ = w.b.ring.pop() {
		w.b.stats.noChannel.Add(1)
		w.b.stats.failed.Add(1)
		w.b.finish(m, sink.ErrUnavailable)
	}
}

// errChannelClosed ends a session whose channel or connection closed.
var errChannelClosed = errors.New("channel closed")

// errRecycle ends a session that its publisher cannot go on with but
// whose link is fine (a NATS context holding a publish the worker timed
// out): the worker opens the next one at once, without the backoff of
// a failure.
var errRecycle = errors.New("publisher recycled")

// session publishes through one publisher on c until it or c closes
// (error) or the broker stops the workers (nil). Whatever is unconfirmed
// then is deferred (or, when stopping or without a retry window, answered
// ErrUnavailable).
func (w *worker) session(c *connection) (err error) {
	p, err := c.link.publisher(w)
	if err != nil {
		return err
	}
	w.nextTag = 1
	w.head = copies{}
	w.b.liveChannels.Add(1)
	defer func() {
		w.open.Store(false)
		if w.b.liveChannels.Add(-1) == 0 {
			w.b.notify() // workers without a channel now answer the ring
		}
		p.drain(w)
		w.failInFlight()
		w.releaseReplay()
		err = p.close(err)
	}()

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	armed := false
	w.ws = waitSet{kick: w.kick, timeout: timer.C, stop: w.b.stopWorkers, closed: c.closed}
	for {
		p.cork()
		err := w.fill(p)
		w.publishingSince.Store(w.b.now())
		if uerr := p.uncork(); err == nil {
			err = uerr
		}
		w.publishingSince.Store(0)
		if err != nil {
			return err
		}
		if !armed && w.fifo.len() > 0 {
			timer.Reset(time.Duration(w.fifo.front().expiry - w.b.now()))
			armed = true
		}
		w.ws.wake = nil
		if w.fifo.len() < w.b.cfg.Window {
			w.ws.wake = w.wake
			// Open before looking at the ring: a message pushed after
			// fill's last look either finds the flag (Submit wakes us)
			// or is found here.
			w.open.Store(true)
			if w.b.ring.len() > 0 {
				w.wakeUp()
			}
		} else {
			w.open.Store(false)
			if w.b.ring.len() > 0 {
				w.b.notify() // our window is full: let the next worker help
			}
		}
		// The end of the backoff matters only when this worker can
		// publish what it frees.
		canPublish := w.fifo.len() < w.b.cfg.Window && w.b.state.Load()&stateBlocked == 0
		w.ws.deferred = w.armTimer(canPublish)
		ev, err := p.wait(w)
		if errors.Is(err, errRecycle) {
			return nil
		}
		if err != nil {
			return err
		}
		switch ev {
		case wokeDeferred:
			w.b.expireDeferred(w.b.now())
		case wokeTimeout:
			armed = false
			w.expire()
		case wokeStop:
			return nil
		}
	}
}

// fill publishes while the window has room: deferred messages whose
// backoff is over first (oldest deadline first), then the ring.
func (w *worker) fill(p publisher) error {
	b := w.b
	for w.fifo.len() < b.cfg.Window {
		if b.retry {
			now := b.now()
			if b.state.Load()&stateBlocked != 0 || b.deferred.len() > 0 && now < b.deferred.retryAt.Load() {
				// The broker stopped reading from this connection, or
				// older mail waits for its backoff: newer mail waits
				// with it, in deadline order.
				w.deferRing()
				return nil
			}
			if e, ok := b.deferred.take(now); ok {
				if e.due <= now {
					b.expire(e.msg, now, e.spoolErr, e.full)
					continue
				}
				if e.tried {
					b.stats.retried.Add(1)
				}
				if e.dup {
					b.stats.republished.Add(1)
				}
				if err := w.publish(p, e.msg, e.due, e.dup, nil); err != nil {
					return err
				}
				continue
			}
			if took, err := w.fillSpooled(p, now); err != nil {
				return err
			} else if took {
				continue
			}
		}
		m, at := b.ring.pop()
		if m == nil {
			return nil
		}
		if !b.retry && b.state.Load()&stateBlocked != 0 {
			// RabbitMQ stopped reading from this connection: a publish
			// now would only wait for the confirm timeout, or hang in the
			// write. Answer like Submit does while blocked.
			w.b.stats.rejectedBlocked.Add(1)
			w.b.stats.failed.Add(1)
			w.b.finish(m, sink.ErrUnavailable)
			continue
		}
		now := b.now()
		due := at + b.maxWait
		if now >= due {
			// Waited in the ring longer than it may wait at all.
			b.expire(m, now, false, false)
			continue
		}
		if err := w.publish(p, m, due, false, nil); err != nil {
			return err
		}
	}
	return nil
}

// publish sends every copy of m, whose deadline is due, and queues them
// for their confirms. m keeps its data until it is completed: a message
// that must be published again needs its body. dup says an earlier
// publish of m may have been stored. sp is m's spool record when m was
// read from the spool, nil for a message whose client waits.
func (w *worker) publish(p publisher, m *sink.Message, due int64, dup bool, sp *spooledEntry) error {
	b := w.b
	now := b.now()
	ncopies := p.prepare(m)
	if pr := p.check(ncopies); pr.what != "" && sp != nil {
		if pr.elsewhere {
			w.spoolPutBack(m, sp, now)
			return nil
		}
		w.spoolRejected(m, sp, pr.what)
		return nil
	} else if pr.what != "" {
		// Publishing it would close the connection (or, past the
		// domains cap, store too many copies): this message alone is
		// answered 451, at once, since no attempt can succeed. Its
		// envelope is not logged; the queue ID finds the session in the
		// engine's log.
		b.stats.failed.Add(1)
		if b.limits.publish.allow(now) {
			b.log.Warn("message exceeds what "+b.tr.kind()+" can carry, answering 451",
				"worker", w.id, "queue_id", m.QueueID, "too_large", pr.what, "size", pr.size, "limit", pr.limit,
				"suppressed", b.limits.publish.suppressedSince())
		}
		b.finish(m, sink.ErrUnavailable)
		return nil
	}
	// One attempt waits for its confirm at most ConfirmTimeout, and a
	// republish not past the message's deadline.
	expiry := now + int64(b.cfg.ConfirmTimeout)
	if b.retry {
		expiry = min(expiry, due)
	}
	// A spooled record is republished without the copies the broker
	// already confirmed at an earlier attempt.
	last := ncopies - 1
	if sp != nil {
		if len(sp.acked) != ncopies {
			sp.acked = make([]bool, ncopies)
		}
		for last > 0 && sp.acked[last] {
			last--
		}
		if sp.acked[last] { // every copy confirmed: settled already
			w.settleSpooled(inflight{msg: m, sp: sp}, copies{})
			return nil
		}
	}
	pushed := 0
	for i := 0; i <= last; i++ {
		if sp != nil && sp.acked[i] {
			continue
		}
		w.publishingSince.Store(b.now())
		id, key, err := p.send(m, i, w.nextTag)
		w.publishingSince.Store(0)
		if err != nil {
			b.stats.publishErrors.Add(1)
			if b.limits.publish.allow(now) {
				b.log.Warn("publish failed", "worker", w.id, "err", err,
					"suppressed", b.limits.publish.suppressedSince())
			}
			switch {
			case pushed == 0 && sp != nil:
				w.spoolPublishFailed(m, sp)
			case pushed == 0:
				w.retryOrFail(m, due, dup, now, sink.ErrUnavailable)
			default:
				// Earlier copies are queued: the message is settled with
				// them, and counts as not taken.
				t := w.fifo.back()
				t.last, t.failed = true, true
			}
			return err
		}
		w.fifo.push(inflight{tag: w.nextTag, msg: m, id: id, published: now, expiry: expiry, due: due,
			dup: dup, last: i == last, sp: sp, copy: i, key: key})
		w.nextTag++
		pushed++
	}
	return nil
}

// settleTag records the outcome of the publish tagged tag, for a
// publisher whose confirms may come in any order, and settles the head
// of the FIFO while its outcome is known, so that messages complete in
// the order they were published. A tag no longer in the FIFO (its
// attempt timed out) is ignored.
func (w *worker) settleTag(tag uint64, o outcome) {
	if w.fifo.len() == 0 {
		return
	}
	first := w.fifo.front().tag
	if tag < first || tag-first >= uint64(w.fifo.len()) {
		return
	}
	e := w.fifo.at(int(tag - first))
	if e.settled {
		return
	}
	e.settled, e.out = true, o
	w.b.confirmLatency.Observe(float64(w.b.now()-e.published) / 1e9)
	w.settleKnownHead()
}

// settleKnownHead settles the publishes at the head of the FIFO whose
// outcome came already (out of order, through settleTag).
func (w *worker) settleKnownHead() {
	for w.fifo.len() > 0 && w.fifo.front().settled {
		head := w.fifo.pop()
		if head.failed && head.out == outAcked {
			head.out = outUnknown
		}
		w.settle(head, head.out)
	}
}

// settle records e's outcome; with the last copy of its message it
// completes the message: nil when every copy was acked, ErrUnroutable
// when one was returned, otherwise it is deferred for another attempt
// (or answered ErrUnavailable, or ErrStorageFull when the broker said it
// is full, when it cannot be).
func (w *worker) settle(e inflight, o outcome) {
	h := &w.head
	switch o {
	case outAcked:
		h.acked = true
		if e.sp != nil {
			e.sp.acked[e.copy] = true
		}
	case outNacked:
		h.retry = true
	case outFull:
		h.retry, h.full = true, true
	case outUnknown:
		h.retry, h.unknown = true, true
	case outUnroutable:
		h.unroutable = true
	}
	if !e.last {
		return
	}
	done := *h
	w.head = copies{}
	if e.sp != nil {
		w.settleSpooled(e, done)
		return
	}
	switch {
	case done.unroutable:
		w.b.stats.failed.Add(1)
		w.b.finish(e.msg, ErrUnroutable)
	case done.retry:
		// A copy that was acked (or may have been stored) is stored again
		// when the message is republished whole.
		err := error(sink.ErrUnavailable)
		if done.full {
			err = ErrStorageFull
		}
		w.retryOrFail(e.msg, e.due, e.dup || done.unknown || done.acked, w.b.now(), err)
	default:
		// Only a message taken whole ends the backoff: one copy acked
		// while another is refused says nothing of the next round.
		w.b.deferred.acked()
		w.b.stats.confirmed.Add(1)
		w.b.finish(e.msg, nil)
	}
}

// retryOrFail defers m for another attempt if its deadline allows,
// or answers it err.
func (w *worker) retryOrFail(m *sink.Message, due int64, dup bool, now int64, err error) {
	b := w.b
	if b.spool != nil {
		// Spooled whatever its deadline, and while stopping too: once
		// fsynced, the client's wait is over.
		b.stats.deferred.Add(1)
		b.deferred.failed(now)
		b.spoolDefer(m, due, dup, true)
		return
	}
	stopping := false
	select {
	case <-b.stopWorkers:
		stopping = true
	default:
	}
	if !b.retry || stopping || now >= due {
		b.stats.failed.Add(1)
		b.finish(m, err)
		return
	}
	b.stats.deferred.Add(1)
	b.deferred.add(deferredMsg{msg: m, due: due, tried: true, dup: dup, full: err == ErrStorageFull})
	b.deferred.failed(now)
	b.kick()
}

// expire settles the publishes at the head whose confirm is overdue. A
// republish may expire before an older publish behind which it waits in
// the FIFO (its deadline comes first); it is then settled with that one,
// at most ConfirmTimeout after its own expiry.
func (w *worker) expire() {
	now := w.b.now()
	n := 0
	for w.fifo.len() > 0 && w.fifo.front().expiry <= now {
		w.b.stats.timedOut.Add(1)
		w.settle(w.fifo.pop(), outUnknown)
		n++
		w.settleKnownHead()
	}
	if n > 0 && w.b.limits.timeout.allow(now) {
		w.b.log.Warn(w.b.tr.kind()+" did not confirm in time", "worker", w.id, "publishes", n,
			"timeout", w.b.cfg.ConfirmTimeout, "suppressed", w.b.limits.timeout.suppressedSince())
	}
}

// failInFlight settles every unconfirmed publish as lost: its channel or
// connection closed, or the workers stop.
func (w *worker) failInFlight() {
	n := 0
	for w.fifo.len() > 0 {
		if w.fifo.front().settled { // its confirm came, out of order
			w.settleKnownHead()
			continue
		}
		n++
		w.b.stats.lost.Add(1)
		w.settle(w.fifo.pop(), outUnknown)
	}
	w.head = copies{}
	if n > 0 && w.b.limits.lost.allow(w.b.now()) {
		w.b.log.Warn("channel closed with publishes unconfirmed", "worker", w.id, "publishes", n,
			"republish", w.b.retry, "suppressed", w.b.limits.lost.suppressedSince())
	}
}

// inflight is one publish waiting for its confirm.
type inflight struct {
	tag       uint64
	msg       *sink.Message
	id        string // message_id, to match a basic.return
	published int64  // broker clock
	expiry    int64  // broker clock: when the attempt times out
	due       int64  // broker clock: the message's deadline
	dup       bool   // an earlier publish of the message may have been stored
	last      bool   // the message's last copy: settling it completes the message
	returned  bool   // basic.return received for it
	failed    bool   // a later copy of its message could not be published
	settled   bool   // its outcome is known (settleTag), out
	out       outcome
	copy      int    // which copy of its message (publishBuilder.copyOf)
	key       string // its routing key
	// sp is the spool record msg was read from; nil for a message whose
	// client waits.
	sp *spooledEntry
}

// fifo is a growable circular queue of in-flight publishes. It holds at
// most Window-1+maxCopies entries, so it grows a few times and then never.
type fifo struct {
	buf        []inflight
	head, size int
}

func (f *fifo) len() int { return f.size }

func (f *fifo) push(e inflight) {
	if f.size == len(f.buf) {
		n := max(2*len(f.buf), 64)
		nb := make([]inflight, n)
		for i := 0; i < f.size; i++ {
			nb[i] = f.buf[(f.head+i)%len(f.buf)]
		}
		f.buf, f.head = nb, 0
	}
	f.buf[(f.head+f.size)%len(f.buf)] = e
	f.size++
}

func (f *fifo) front() *inflight { return &f.buf[f.head] }

func (f *fifo) back() *inflight { return f.at(f.size - 1) }

func (f *fifo) at(i int) *inflight { return &f.buf[(f.head+i)%len(f.buf)] }

func (f *fifo) pop() inflight {
	e := f.buf[f.head]
	f.buf[f.head] = inflight{} // drop the message pointer for the GC
	f.head = (f.head + 1) % len(f.buf)
	f.size--
	return e
}
