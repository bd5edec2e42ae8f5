package broker

import (
	"errors"
	"fmt"
	"time"

	"github.com/lsmtp/lsmtp/codec"
	"github.com/lsmtp/lsmtp/internal/sink"
	"github.com/lsmtp/lsmtp/internal/spool"
)

// The spool is the deferred queue's durable backing (docs/ARCHITECTURE.md,
// "When the broker cannot take a message now"). At the moment a message
// is deferred, with Config.SpoolDir set, it is written to the spool
// instead of kept in memory; once fsynced (in a group with the others of
// that moment) it is completed with nil, so that its client gets 250, and
// the deferred queue keeps only the record's location. The workers
// publish spooled records as they publish deferred messages, with the
// same backoff, and acknowledge a record to the spool only after
// RabbitMQ confirmed every copy of it.
//
// Order: the records are published in the order they were spooled by one
// worker at a time (the replay lease, held while its channel lives), so
// that RabbitMQ receives them in that order while attempts succeed; one
// whose attempt fails goes back ahead of the later ones not yet
// published, but after those already in the window (they are not taken
// back and published again: that would store them twice). At most spoolShare of that worker's
// window carries spooled records, so that a backlog leaves the rest of
// the windows to live mail, which may therefore overtake it.

// ErrSpoolFull is the reply to a message that could not be spooled (the
// spool full, the disk full or failing) and that RabbitMQ did not take
// before its deadline: RFC 3463 X.3.1, mail system full.
var ErrSpoolFull = &codec.Reply{Code: 451, Enhanced: "4.3.1", Text: "Insufficient system storage, try again later"}

// spoolAlarmEvery is how often the age of the oldest spooled record is
// compared with Config.SpoolMaxAge (and logged when past it).
const spoolAlarmEvery = time.Minute

// spooledEntry is a spooled record waiting to be published.
type spooledEntry struct {
	loc      spool.Loc
	seq      uint64 // order of spooling
	received int64  // Unix ns: when the message was received
	// acked marks the copies ({domain} groups, by copyOf index) RabbitMQ
	// confirmed at an earlier attempt, which are not published again.
	// Kept in memory only: after a restart every copy goes again.
	acked []bool
	// unroutable counts the attempts in which a copy was returned, the
	// first of them at unroutableSince (broker clock).
	unroutable      int
	unroutableSince int64
}

// A spooled record a copy of which is returned (no queue bound for its
// routing key) is moved to the spool's quarantine, with a log line and
// the spool_rejected counter, rather than published for ever, once it
// was returned at spoolUnroutableMax attempts and for spoolUnroutableFor
// since the first: time for a binding to come back (a queue being
// redeclared). Vars for the tests.
var (
	spoolUnroutableMax       = 30
	spoolUnroutableFor int64 = int64(time.Minute)
)

// openSpool opens the spool and queues what the last process left,
// before the first Submit.
func (b *Broker) openSpool() error {
	s, entries, err := spool.Open(spool.Config{Dir: b.cfg.SpoolDir, MaxBytes: b.cfg.SpoolMaxBytes, Logger: b.log})
	if err != nil {
		return fmt.Errorf("broker: SpoolDir: %w", err)
	}
	b.spool = s
	b.spoolShare = max(1, b.cfg.Window/2)
	for _, e := range entries {
		b.deferred.addSpooled(spooledEntry{loc: e.Loc, received: e.Received.UnixNano()})
	}
	if len(entries) > 0 {
		b.log.Info("spool: publishing the messages left by the last run", "messages", len(entries),
			"octets", s.Stats().Bytes)
	}
	go b.spoolAlarm()
	return nil
}

// spoolDefer writes m to the spool; once it is fsynced, m is answered nil
// and its record queued for publishing. If it cannot be written, m waits
// in memory as without a spool, and is answered ErrSpoolFull if its
// deadline passes. due, dup and tried are m's, for that case.
func (b *Broker) spoolDefer(m *sink.Message, due int64, dup, tried bool) {
	b.spool.Append(m, func(loc spool.Loc, err error) {
		if err != nil {
			b.stats.spoolFailed.Add(1)
			if now := b.now(); b.limits.spool.allow(now) {
				b.log.Warn("cannot spool a message: it waits in memory until its deadline",
					"err", err, "suppressed", b.limits.spool.suppressedSince())
			}
			select {
			case <-b.stopWorkers:
				// Closing, and no worker is left to answer it later.
				b.stats.failed.Add(1)
				b.finish(m, ErrSpoolFull)
			default:
				b.deferred.add(deferredMsg{msg: m, due: due, tried: tried, dup: dup, spoolErr: true})
				b.kick()
			}
			return
		}
		b.stats.spooled.Add(1)
		b.deferred.addSpooled(spooledEntry{loc: loc, received: m.Received.UnixNano()})
		b.finish(m, nil)
		b.kick()
	})
}

// replayLease reports whether w may publish spooled records: it holds the
// lease, or took it now.
func (w *worker) replayLease() bool {
	id := int32(w.id + 1)
	cur := w.b.replayer.Load()
	return cur == id || cur == 0 && w.b.replayer.CompareAndSwap(0, id)
}

// releaseReplay gives the lease back when w's channel is gone, so that
// another worker's channel carries the spool.
func (w *worker) releaseReplay() {
	if w.b.replayer.CompareAndSwap(int32(w.id+1), 0) {
		w.b.kick()
	}
	w.spInFlight = 0
}

// fillSpooled publishes the next spooled record if w may: it holds the
// replay lease and its share of the window has room. It reports whether
// it took one.
func (w *worker) fillSpooled(p publisher, now int64) (bool, error) {
	b := w.b
	if b.spool == nil || w.spInFlight >= b.spoolShare || b.deferred.spooledLen() == 0 || !w.replayLease() {
		return false, nil
	}
	e, ok := b.deferred.takeSpooled(now)
	if !ok {
		return false, nil
	}
	m, err := b.spool.Read(e.loc)
	if err != nil {
		if !errors.Is(err, spool.ErrCorrupt) {
			// Not readable now: try again after the backoff.
			b.deferred.returnSpooled(e)
			b.deferred.failed(now)
		}
		// A damaged record is quarantined by the spool, with its log line.
		if b.limits.spool.allow(now) {
			b.log.Warn("cannot read a spooled message", "err", err, "suppressed", b.limits.spool.suppressedSince())
		}
		return true, nil
	}
	w.spInFlight++
	return true, w.publish(p, m, 1<<63-1, false, &e)
}

// spoolRejected handles a spooled record AMQP cannot carry (publish.go's
// check): no attempt can succeed, so it is moved to the quarantine with
// a log line rather than kept at the head of the spool for ever.
func (w *worker) spoolRejected(m *sink.Message, e *spooledEntry, what string) {
	w.spInFlight--
	w.b.stats.spoolRejected.Add(1)
	w.b.log.Error("spooled message exceeds what "+w.b.tr.kind()+" can carry, moved to the spool's quarantine",
		"queue_id", m.QueueID, "too_large", what)
	m.ReleaseData()
	w.b.spool.Reject(e.loc)
}

// settleSpooled completes a spooled record's publish: acknowledged to
// the spool when every copy was acked, otherwise back in the queue ahead
// of later records, after the backoff. A returned (unroutable) record is
// kept too: it was answered 250, and the binding may come back.
func (w *worker) settleSpooled(e inflight, done copies) {
	b := w.b
	w.spInFlight--
	e.msg.ReleaseData()
	if done.unroutable {
		if e.sp.unroutable == 0 {
			e.sp.unroutableSince = b.now()
		}
		e.sp.unroutable++
		if e.sp.unroutable >= spoolUnroutableMax && b.now()-e.sp.unroutableSince >= spoolUnroutableFor {
			b.stats.spoolRejected.Add(1)
			b.log.Error("a spooled message stayed unroutable, moved to the spool's quarantine",
				"queue_id", e.msg.QueueID, "attempts", e.sp.unroutable)
			b.spool.Reject(e.sp.loc)
			return
		}
	}
	if done.retry || done.unroutable {
		if done.unroutable && b.limits.returned.allow(b.now()) {
			b.log.Warn("a spooled message is unroutable: kept in the spool, published again after the backoff",
				"queue_id", e.msg.QueueID, "attempts", e.sp.unroutable, "suppressed", b.limits.returned.suppressedSince())
		}
		b.deferred.returnSpooled(*e.sp)
		b.deferred.failed(b.now())
		b.kick()
		return
	}
	b.deferred.acked()
	b.spool.Ack(e.sp.loc)
	b.stats.replayed.Add(1)
}

// spoolPutBack puts back a spooled record this connection cannot carry
// (its frame_max is below the one lsmtp asks for) but another may.
func (w *worker) spoolPutBack(m *sink.Message, e *spooledEntry, now int64) {
	b := w.b
	w.spInFlight--
	if b.limits.publish.allow(now) {
		b.log.Warn("a spooled message exceeds what this connection can carry (its frame_max): kept in the spool",
			"queue_id", m.QueueID, "suppressed", b.limits.publish.suppressedSince())
	}
	m.ReleaseData()
	b.deferred.returnSpooled(*e)
	b.deferred.failed(now)
}

// spoolPublishFailed puts back a spooled record whose publish call failed.
func (w *worker) spoolPublishFailed(m *sink.Message, e *spooledEntry) {
	w.settleSpooled(inflight{msg: m, sp: e}, copies{retry: true})
}

// spoolAlarm logs, while it lasts, that the oldest spooled message is
// older than SpoolMaxAge. Nothing is dropped for its age.
func (b *Broker) spoolAlarm() {
	t := time.NewTicker(spoolAlarmEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if age := b.deferred.oldestSpooled(); age > 0 && time.Since(time.Unix(0, age)) > b.cfg.SpoolMaxAge {
				b.log.Error("spooled messages older than SpoolMaxAge wait for RabbitMQ (kept, not dropped)",
					"oldest", time.Since(time.Unix(0, age)).Round(time.Second), "max_age", b.cfg.SpoolMaxAge,
					"messages", b.spool.Stats().Records)
			}
		case <-b.stopSup:
			return
		}
	}
}

// SpoolTaking reports whether a spool is configured and takes messages
// now (not full, its last write succeeded): with it, lsmtp answers 250
// while RabbitMQ is away, and stays ready.
func (b *Broker) SpoolTaking() bool { return b.spool != nil && b.spool.Taking() }

// addSpooled queues a spooled record behind the others.
func (q *deferredQueue) addSpooled(e spooledEntry) {
	q.mu.Lock()
	e.seq = q.seq
	q.seq++
	q.sp = append(q.sp, e)
	q.ns.Add(1)
	q.mu.Unlock()
}

// returnSpooled puts back a record whose attempt failed: it goes ahead of
// every record spooled after it.
func (q *deferredQueue) returnSpooled(e spooledEntry) {
	q.mu.Lock()
	q.back = append(q.back, e)
	for i := len(q.back) - 1; i > 0; {
		p := (i - 1) / 2
		if q.back[p].seq <= q.back[i].seq {
			break
		}
		q.back[i], q.back[p] = q.back[p], q.back[i]
		i = p
	}
	q.ns.Add(1)
	q.mu.Unlock()
}

func (q *deferredQueue) spooledLen() int { return int(q.ns.Load()) }

// takeSpooled returns the oldest spooled record if republishing is not in
// backoff at now.
func (q *deferredQueue) takeSpooled(now int64) (spooledEntry, bool) {
	if q.ns.Load() == 0 || now < q.retryAt.Load() {
		return spooledEntry{}, false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	var e spooledEntry
	switch {
	case len(q.back) > 0 && (q.spHead == len(q.sp) || q.back[0].seq < q.sp[q.spHead].seq):
		e = q.popBack()
	case q.spHead < len(q.sp):
		e = q.sp[q.spHead]
		q.spHead++
		if q.spHead == len(q.sp) {
			q.sp, q.spHead = q.sp[:0], 0
		} else if q.spHead >= 4096 && q.spHead*2 >= len(q.sp) {
			n := copy(q.sp, q.sp[q.spHead:])
			q.sp, q.spHead = q.sp[:n], 0
		}
	default:
		return spooledEntry{}, false
	}
	q.ns.Add(-1)
	return e, true
}

func (q *deferredQueue) popBack() spooledEntry {
	h := q.back
	e := h[0]
	last := len(h) - 1
	h[0] = h[last]
	q.back = h[:last]
	for i := 0; ; {
		l, s := 2*i+1, i
		if l < last && q.back[l].seq < q.back[s].seq {
			s = l
		}
		if r := l + 1; r < last && q.back[r].seq < q.back[s].seq {
			s = r
		}
		if s == i {
			break
		}
		q.back[i], q.back[s] = q.back[s], q.back[i]
		i = s
	}
	return e
}

// oldestSpooled is when the oldest queued spooled message was received
// (Unix ns), 0 when none is queued. Records being published are not
// counted.
func (q *deferredQueue) oldestSpooled() int64 {
	if q.ns.Load() == 0 {
		return 0
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	var at int64
	if q.spHead < len(q.sp) {
		at = q.sp[q.spHead].received
	}
	if len(q.back) > 0 && (at == 0 || q.back[0].received < at) {
		at = q.back[0].received
	}
	return at
}
