package broker

import (
	"errors"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/internal/sink"
)

// worker is one publisher: it owns an AMQP channel in confirm mode, takes
// messages from the ring while fewer than Window publishes are
// unconfirmed, and completes each message when the confirms of all its
// copies are back.
//
// RabbitMQ confirms the publishes of a channel in delivery-tag order
// (possibly several at once with multiple=true, which amqp091-go hands on
// as one Confirmation per tag, in order). So the in-flight publishes are a
// FIFO in tag order and a confirm always settles the head: no map, no
// goroutine per message.
type worker struct {
	b  *Broker
	id int

	// publishingSince is the broker clock when the publish call in progress
	// started, 0 when none is; read by the supervisor's watchdog.
	publishingSince atomic.Int64

	fifo    fifo
	nextTag uint64 // delivery tag of the next publish on the current channel
	msgErr  error  // first failure among the settled copies of the message at the head
	// frameMax is the frame_max negotiated on the current connection (0:
	// unlimited), against which check measures each content header.
	frameMax int

	pub publishBuilder
}

func newWorker(b *Broker, id int) *worker {
	w := &worker{b: b, id: id}
	w.pub.init(b)
	return w
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
					w.b.log.Warn("publisher channel failed, answering 451 until it is reopened",
						"worker", w.id, "err", err, "suppressed", w.b.limits.channel.suppressedSince())
				}
			}
			failed = c
			retryAt = time.Now().Add(retry)
			retry = min(retry*2, w.b.cfg.ReconnectMax)
		}
		// No channel here. If no other worker has one either, whatever
		// reaches the ring is answered at once; otherwise the ring is left
		// (wake-ups included) to the workers that can publish. Meanwhile
		// wait for a (new) connection or, after a channel failure on a
		// live connection, for the retry time.
		var wake chan struct{}
		if w.b.liveChannels.Load() == 0 {
			w.failRing()
			wake = w.b.wake
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
		case <-w.b.stopWorkers:
			return
		}
		if t != nil {
			t.Stop()
		}
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

// session publishes on one channel of c until the channel or c closes
// (error) or the broker stops the workers (nil). Whatever is unconfirmed
// then is answered ErrUnavailable.
func (w *worker) session(c *connection) (err error) {
	ch, err := c.amqp.Channel()
	if err != nil {
		return err
	}
	if err := ch.Confirm(false); err != nil {
		go ch.Close()
		return err
	}
	// Room for every confirm and return that can be outstanding, so that
	// amqp091-go's reader goroutine never waits on this worker (it drops a
	// notification after 5 s of waiting, and it must keep reading
	// heartbeats).
	room := w.b.cfg.Window + maxCopies
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, room))
	returns := ch.NotifyReturn(make(chan amqp.Return, room))
	closes := ch.NotifyClose(make(chan *amqp.Error, 1))
	w.nextTag = 1
	w.msgErr = nil
	w.frameMax = c.amqp.Config.FrameSize
	w.b.liveChannels.Add(1)
	defer func() {
		if w.b.liveChannels.Add(-1) == 0 {
			w.b.notify() // workers without a channel now answer the ring
		}
		// Confirms that arrived before the channel went still count:
		// every one settled here is a message its client need not resend.
		w.drainConfirms(confirms, returns)
		w.failInFlight(sink.ErrUnavailable, &w.b.stats.lost)
		if errors.Is(err, errChannelClosed) {
			// The confirm or return channel closed first: the reason, if
			// any, is in the close notification.
			select {
			case e, ok := <-closes:
				if ok && e != nil {
					err = e
				}
			default:
			}
		}
		if err != nil && !ch.IsClosed() {
			go ch.Close() // abandoned after a publish error; may wait for the broker
		}
	}()

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	armed := false
	for {
		if err := w.fill(ch); err != nil {
			return err
		}
		if !armed && w.fifo.len() > 0 {
			timer.Reset(time.Duration(w.fifo.front().deadline - w.b.now()))
			armed = true
		}
		var wake chan struct{}
		if w.fifo.len() < w.b.cfg.Window {
			wake = w.b.wake
		}
		select {
		case conf, ok := <-confirms:
			if !ok {
				return errChannelClosed
			}
			// RabbitMQ sends a message's basic.return before its ack, and
			// amqp091-go hands both on from one goroutine in that order:
			// the return is already queued when its ack arrives.
			w.drainReturns(returns)
			w.confirm(conf)
		case ret, ok := <-returns:
			if !ok {
				return errChannelClosed
			}
			w.returned(ret)
		case e, ok := <-closes:
			if ok && e != nil {
				return e
			}
			return errChannelClosed
		case <-c.closed:
			return errChannelClosed
		case <-wake:
		case <-timer.C:
			armed = false
			w.expire()
		case <-w.b.stopWorkers:
			return nil
		}
	}
}

// fill publishes messages from the ring while the window has room.
func (w *worker) fill(ch *amqp.Channel) error {
	for w.fifo.len() < w.b.cfg.Window {
		m, at := w.b.ring.pop()
		if m == nil {
			return nil
		}
		if w.b.state.Load()&stateBlocked != 0 {
			// RabbitMQ stopped reading from this connection: a publish
			// now would only wait for the confirm timeout, or hang in the
			// write. Answer like Submit does while blocked.
			w.b.stats.rejectedBlocked.Add(1)
			w.b.stats.failed.Add(1)
			w.b.finish(m, sink.ErrUnavailable)
			continue
		}
		if err := w.publish(ch, m, at); err != nil {
			return err
		}
	}
	if w.b.ring.len() > 0 {
		w.b.notify() // our window is full: let another worker help
	}
	return nil
}

// publish sends every copy of m and queues them for their confirms. It
// releases m's data once the last publish call returned: amqp091-go has
// copied the body into its frame buffer (or written it out) by then.
func (w *worker) publish(ch *amqp.Channel, m *sink.Message, queued int64) error {
	now := w.b.now()
	if now-queued > int64(w.b.cfg.ConfirmTimeout) {
		// Waited in the ring longer than it may wait at all.
		w.b.stats.expired.Add(1)
		w.b.stats.failed.Add(1)
		if w.b.limits.expired.allow(now) {
			w.b.log.Warn("message waited longer than the confirm timeout for a publisher, answering 451",
				"timeout", w.b.cfg.ConfirmTimeout, "suppressed", w.b.limits.expired.suppressedSince())
		}
		w.b.finish(m, sink.ErrUnavailable)
		return nil
	}
	copies := w.pub.prepare(m)
	if pr := w.pub.check(copies, w.frameMax); pr.what != "" {
		// Publishing it would close the connection (or, past the
		// domains cap, store too many copies): this message alone is
		// answered 451. Its envelope is not logged; the queue ID finds
		// the session in the engine's log.
		w.b.stats.failed.Add(1)
		if w.b.limits.publish.allow(now) {
			w.b.log.Warn("message exceeds what AMQP can carry, answering 451",
				"worker", w.id, "queue_id", m.QueueID, "too_large", pr.what, "size", pr.size, "limit", pr.limit,
				"suppressed", w.b.limits.publish.suppressedSince())
		}
		w.b.finish(m, sink.ErrUnavailable)
		return nil
	}
	deadline := now + int64(w.b.cfg.ConfirmTimeout)
	for i := 0; i < copies; i++ {
		key, pub := w.pub.copyOf(m, i)
		w.publishingSince.Store(w.b.now())
		err := ch.Publish(w.b.cfg.Exchange, key, true, false, pub)
		w.publishingSince.Store(0)
		if err != nil {
			m.ReleaseData()
			w.b.stats.publishErrors.Add(1)
			if w.b.limits.publish.allow(now) {
				w.b.log.Warn("publish failed, answering 451", "worker", w.id, "err", err,
					"suppressed", w.b.limits.publish.suppressedSince())
			}
			if i == 0 {
				w.b.stats.failed.Add(1)
				w.b.finish(m, sink.ErrUnavailable)
			} else {
				// Earlier copies are queued: the message is settled with
				// them, failed.
				t := w.fifo.back()
				t.last, t.failed = true, true
			}
			return err
		}
		w.fifo.push(inflight{tag: w.nextTag, msg: m, id: pub.MessageId, deadline: deadline, last: i == copies-1})
		w.nextTag++
	}
	m.ReleaseData()
	return nil
}

// confirm settles the head of the FIFO with conf.
func (w *worker) confirm(conf amqp.Confirmation) {
	for w.fifo.len() > 0 {
		e := w.fifo.front()
		if e.tag > conf.DeliveryTag {
			return // the confirm of a publish that already timed out
		}
		head := w.fifo.pop()
		if head.tag < conf.DeliveryTag {
			// Its confirm never reached us (amqp091-go drops one after
			// waiting 5 s): the outcome is unknown, so it is a failure.
			w.b.stats.lost.Add(1)
			w.settle(head, sink.ErrUnavailable)
			continue
		}
		published := head.deadline - int64(w.b.cfg.ConfirmTimeout)
		w.b.confirmLatency.Observe(float64(w.b.now()-published) / 1e9)
		var err error
		switch {
		case !conf.Ack:
			w.b.stats.nacked.Add(1)
			if w.b.limits.nack.allow(w.b.now()) {
				w.b.log.Warn("RabbitMQ refused a message (basic.nack; queue full with reject-publish, or an internal error), answering 451",
					"worker", w.id, "suppressed", w.b.limits.nack.suppressedSince())
			}
			err = sink.ErrUnavailable
		case head.returned:
			err = ErrUnroutable
		case head.failed:
			err = sink.ErrUnavailable
		}
		w.settle(head, err)
		return
	}
}

// settle records e's outcome; with the last copy of its message it
// completes the message with the first failure of any copy.
func (w *worker) settle(e inflight, err error) {
	if err != nil && w.msgErr == nil {
		w.msgErr = err
	}
	if !e.last {
		return
	}
	if err = w.msgErr; err == nil {
		w.b.stats.confirmed.Add(1)
	} else {
		w.b.stats.failed.Add(1)
	}
	w.msgErr = nil
	w.b.finish(e.msg, err)
}

// drainConfirms settles the confirms already received, without waiting.
func (w *worker) drainConfirms(confirms <-chan amqp.Confirmation, returns <-chan amqp.Return) {
	for {
		select {
		case conf, ok := <-confirms:
			if !ok {
				return
			}
			w.drainReturns(returns)
			w.confirm(conf)
		default:
			return
		}
	}
}

func (w *worker) drainReturns(returns <-chan amqp.Return) {
	for {
		select {
		case ret, ok := <-returns:
			if !ok {
				return // closed with the channel; the session ends
			}
			w.returned(ret)
		default:
			return
		}
	}
}

// returned marks the publish that ret brings back; its ack follows.
func (w *worker) returned(ret amqp.Return) {
	w.b.stats.returned.Add(1)
	if w.b.limits.returned.allow(w.b.now()) {
		w.b.log.Warn("RabbitMQ returned a message as unroutable (no queue bound for its routing key), answering 451",
			"exchange", ret.Exchange, "routing_key", ret.RoutingKey, "reply", ret.ReplyText,
			"suppressed", w.b.limits.returned.suppressedSince())
	}
	for i := 0; i < w.fifo.len(); i++ {
		if e := w.fifo.at(i); !e.returned && e.id == ret.MessageId {
			e.returned = true
			return
		}
	}
}

// expire fails the publishes at the head whose confirm is overdue.
func (w *worker) expire() {
	now := w.b.now()
	n := 0
	for w.fifo.len() > 0 && w.fifo.front().deadline <= now {
		w.b.stats.timedOut.Add(1)
		w.settle(w.fifo.pop(), sink.ErrUnavailable)
		n++
	}
	if n > 0 && w.b.limits.timeout.allow(now) {
		w.b.log.Warn("RabbitMQ did not confirm in time, answering 451", "worker", w.id, "publishes", n,
			"timeout", w.b.cfg.ConfirmTimeout, "suppressed", w.b.limits.timeout.suppressedSince())
	}
}

// failInFlight fails every unconfirmed publish, counting each in c.
func (w *worker) failInFlight(err error, c *atomic.Uint64) {
	n := w.fifo.len()
	for w.fifo.len() > 0 {
		c.Add(1)
		w.settle(w.fifo.pop(), err)
	}
	w.msgErr = nil
	if n > 0 && w.b.limits.lost.allow(w.b.now()) {
		w.b.log.Warn("channel closed with publishes unconfirmed, answering 451", "worker", w.id, "publishes", n,
			"suppressed", w.b.limits.lost.suppressedSince())
	}
}

// inflight is one publish waiting for its confirm.
type inflight struct {
	tag      uint64
	msg      *sink.Message
	id       string // message_id, to match a basic.return
	deadline int64  // broker clock
	last     bool   // the message's last copy: settling it completes the message
	returned bool   // basic.return received for it
	failed   bool   // a later copy of its message could not be published
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
