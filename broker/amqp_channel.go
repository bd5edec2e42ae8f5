package broker

import (
	"errors"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/internal/sink"
)

// amqpPublisher is one worker's AMQP channel in confirm mode.
//
// RabbitMQ confirms the publishes of a channel in delivery-tag order
// (possibly several at once with multiple=true, which amqp091-go hands on
// as one Confirmation per tag, in order). The worker's tags are the
// channel's delivery tags (both count from 1 per channel), so a confirm
// always settles the head of the worker's FIFO: no map, no goroutine per
// message.
type amqpPublisher struct {
	l        *amqpLink
	ch       *amqp.Channel
	confirms chan amqp.Confirmation
	returns  chan amqp.Return
	closes   chan *amqp.Error
	// frameMax is the frame_max negotiated on the connection (0:
	// unlimited), against which check measures each content header.
	frameMax int
	pub      publishBuilder
}

// publisher opens w's channel on c and puts it in confirm mode.
func (c *amqpLink) publisher(w *worker) (publisher, error) {
	ch, err := c.amqp.Channel()
	if err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		go ch.Close()
		return nil, err
	}
	// Room for every confirm and return that can be outstanding, so that
	// amqp091-go's reader goroutine never waits on this worker (it drops a
	// notification after 5 s of waiting, and it must keep reading
	// heartbeats).
	room := w.b.cfg.Window + maxCopies
	p := &amqpPublisher{l: c, ch: ch, frameMax: c.amqp.Config.FrameSize}
	p.confirms = ch.NotifyPublish(make(chan amqp.Confirmation, room))
	p.returns = ch.NotifyReturn(make(chan amqp.Return, room))
	p.closes = ch.NotifyClose(make(chan *amqp.Error, 1))
	p.pub.init(w.b)
	return p, nil
}

func (p *amqpPublisher) prepare(m *sink.Message) int { return p.pub.prepare(m) }

func (p *amqpPublisher) check(copies int) problem {
	pr := p.pub.check(copies, p.frameMax)
	if pr.what != "" && p.frameMax > 0 && p.frameMax < frameSize && p.pub.check(copies, frameSize).what == "" {
		// Fits the frame size lsmtp asks for, not the smaller one this
		// connection negotiated: another connection may take it.
		pr.elsewhere = true
	}
	return pr
}

func (p *amqpPublisher) send(m *sink.Message, i int, _ uint64) (id, key string, err error) {
	key, pub := p.pub.copyOf(m, i)
	err = p.ch.Publish(p.pub.b.cfg.Exchange, key, true, false, pub)
	p.pub.releaseCopy()
	return pub.MessageId, key, err
}

// The publishes of one fill go out in as few writes as the corked
// socket allows (cork.go).
func (p *amqpPublisher) cork()         { p.l.sock.cork() }
func (p *amqpPublisher) uncork() error { return p.l.sock.uncork() }

func (p *amqpPublisher) wait(w *worker) (woke, error) {
	ws := &w.ws
	select {
	case conf, ok := <-p.confirms:
		if !ok {
			return 0, errChannelClosed
		}
		// RabbitMQ sends a message's basic.return before its ack, and
		// amqp091-go hands both on from one goroutine in that order:
		// the return is already queued when its ack arrives.
		p.drainReturns(w)
		p.confirm(w, conf)
		// Settle every confirm already here before publishing again,
		// so that the next fill publishes the freed window as one
		// batch, in one write (cork.go), rather than one publish per
		// confirm.
		return wokeConfirm, p.settleWaiting(w)
	case ret, ok := <-p.returns:
		if !ok {
			return 0, errChannelClosed
		}
		p.returned(w, ret)
		return wokeConfirm, nil
	case e, ok := <-p.closes:
		if ok && e != nil {
			return 0, e
		}
		return 0, errChannelClosed
	case <-ws.closed:
		return 0, errChannelClosed
	case <-ws.wake:
		return wokeWake, nil
	case <-ws.kick:
		return wokeWake, nil
	case <-ws.deferred:
		return wokeDeferred, nil
	case <-ws.timeout:
		return wokeTimeout, nil
	case <-ws.stop:
		return wokeStop, nil
	}
}

// settleWaiting settles the confirms that have arrived, without waiting
// for more.
func (p *amqpPublisher) settleWaiting(w *worker) error {
	for {
		select {
		case conf, ok := <-p.confirms:
			if !ok {
				return errChannelClosed
			}
			p.drainReturns(w)
			p.confirm(w, conf)
		default:
			return nil
		}
	}
}

// drain settles the confirms already received: confirms that arrived
// before the channel went still count, every one settled here is a
// message its client need not resend.
func (p *amqpPublisher) drain(w *worker) {
	for {
		select {
		case conf, ok := <-p.confirms:
			if !ok {
				return
			}
			p.drainReturns(w)
			p.confirm(w, conf)
		default:
			return
		}
	}
}

func (p *amqpPublisher) close(err error) error {
	if errors.Is(err, errChannelClosed) {
		// The confirm or return channel closed first: the reason, if
		// any, is in the close notification.
		select {
		case e, ok := <-p.closes:
			if ok && e != nil {
				err = e
			}
		default:
		}
	}
	if err != nil && !p.ch.IsClosed() {
		go p.ch.Close() // abandoned after a publish error; may wait for the broker
	}
	return err
}

func (p *amqpPublisher) drainReturns(w *worker) {
	for {
		select {
		case ret, ok := <-p.returns:
			if !ok {
				return // closed with the channel; the session ends
			}
			p.returned(w, ret)
		default:
			return
		}
	}
}

// confirm settles the head of the FIFO with conf.
func (p *amqpPublisher) confirm(w *worker, conf amqp.Confirmation) {
	for w.fifo.len() > 0 {
		e := w.fifo.front()
		if e.tag > conf.DeliveryTag {
			return // the confirm of a publish that already timed out
		}
		head := w.fifo.pop()
		if head.tag < conf.DeliveryTag {
			// Its confirm never reached us (amqp091-go drops one after
			// waiting 5 s): the outcome is unknown.
			w.b.stats.lost.Add(1)
			w.settle(head, outUnknown)
			continue
		}
		w.b.confirmLatency.Observe(float64(w.b.now()-head.published) / 1e9)
		o := outAcked
		switch {
		case !conf.Ack:
			w.b.stats.nacked.Add(1)
			if w.b.limits.nack.allow(w.b.now()) {
				w.b.log.Warn("RabbitMQ refused a message (basic.nack: queue full with reject-publish, no quorum leader, or an internal error)",
					"worker", w.id, "suppressed", w.b.limits.nack.suppressedSince())
			}
			o = outNacked
		case head.returned:
			o = outUnroutable
		case head.failed:
			o = outUnknown
		}
		w.settle(head, o)
		return
	}
}

// returned marks the publish that ret brings back; its ack follows.
func (p *amqpPublisher) returned(w *worker, ret amqp.Return) {
	w.b.stats.returned.Add(1)
	if w.b.limits.returned.allow(w.b.now()) {
		w.b.log.Warn("RabbitMQ returned a message as unroutable (no queue bound for its routing key), answering 451",
			"exchange", ret.Exchange, "routing_key", ret.RoutingKey, "reply", ret.ReplyText,
			"suppressed", w.b.limits.returned.suppressedSince())
	}
	for i := 0; i < w.fifo.len(); i++ {
		// Each copy has its own message_id (copyID), which tells which
		// copy came back (a spooled record keeps per-copy state); the
		// routing key is compared as well, as a guard.
		if e := w.fifo.at(i); !e.returned && e.id == ret.MessageId && e.key == ret.RoutingKey {
			e.returned = true
			return
		}
	}
}

// retire: a delivery tag is never used twice on a channel, so a confirm
// that comes after its publish timed out is ignored (settleTag) and the
// channel goes on.
func (p *amqpPublisher) retire(*worker) bool { return false }
