package broker

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lsmtp/lsmtp/internal/sink"
)

// retryBackoffMax caps the wait between two rounds of republishing. A
// quorum queue without a leader NACKs for seconds (a new leader is elected
// within about 10 s of losing one); a cap of one second keeps the time
// between RabbitMQ taking messages again and lsmtp noticing it short,
// while a round costs RabbitMQ at most Workers×Window refused publishes.
const retryBackoffMax = time.Second

// deferredQueue holds the messages RabbitMQ cannot take now: not
// connected, connection.blocked, NACKed, lost with their channel or
// connection before the confirm, or past their confirm timeout. Each keeps
// its body and its deadline; the workers republish them, oldest deadline
// first, ahead of newer mail, after a backoff that grows while attempts
// keep failing and resets with the next ack. A message whose deadline
// passes here is answered 451.
//
// It is the memory backing of docs/ARCHITECTURE.md's deferred path: the
// queue is shared by the workers (a message deferred by a worker whose
// channel died is republished by another), touched under its mutex only
// on the failure path, and read without the lock (n) on the hot path.
// Its size is bounded by Broker.capacity, since every message in it is
// one Submit has counted in pending.
type deferredQueue struct {
	mu   sync.Mutex
	heap []deferredMsg // min-heap on (due, seq)
	seq  uint64        // deferrals so far, under mu: ties keep their order

	n       atomic.Int64 // len(heap), read without the lock
	retryAt atomic.Int64 // broker clock before which nothing is republished
	raised  atomic.Bool  // backoff is above its minimum

	backoff, min time.Duration // under mu

	// The spool's backing (spool.go): records waiting to be published,
	// in the order they were spooled (sp from spHead), and those whose
	// attempt failed (back, a min-heap on seq), under mu; ns counts both.
	sp     []spooledEntry
	spHead int
	back   []spooledEntry
	ns     atomic.Int64
}

// deferredMsg is one message waiting to be (re)published.
type deferredMsg struct {
	msg *sink.Message
	due int64  // broker clock: its deadline (received + the retry window)
	seq uint64 // order of deferral, among equal deadlines
	// tried: it was published before; dup: an earlier publish of it may
	// have been stored (its outcome was lost with its channel or
	// connection, or it timed out, or other copies of it were acked), so
	// that republishing it may store it twice.
	tried, dup bool
	// spoolErr: the spool could not take it; its deadline answers
	// ErrSpoolFull.
	spoolErr bool
	// full: the broker's last answer was that it is full; its deadline
	// answers ErrStorageFull.
	full bool
}

func newDeferredQueue(min time.Duration) *deferredQueue {
	return &deferredQueue{backoff: min, min: min}
}

// len counts the messages in memory and the spooled records queued.
func (q *deferredQueue) len() int { return int(q.n.Load() + q.ns.Load()) }

// memLen counts the messages in memory, whose clients wait.
func (q *deferredQueue) memLen() int { return int(q.n.Load()) }

// add queues e.
func (q *deferredQueue) add(e deferredMsg) {
	q.mu.Lock()
	e.seq = q.seq
	q.seq++
	q.heap = append(q.heap, e)
	q.up(len(q.heap) - 1)
	q.n.Store(int64(len(q.heap)))
	q.mu.Unlock()
}

// take returns the message with the earliest deadline if republishing is
// not in backoff at now.
func (q *deferredQueue) take(now int64) (deferredMsg, bool) {
	if q.n.Load() == 0 || now < q.retryAt.Load() {
		return deferredMsg{}, false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.heap) == 0 {
		return deferredMsg{}, false
	}
	return q.pop(), true
}

// takeExpired returns a message whose deadline is not after now.
func (q *deferredQueue) takeExpired(now int64) (deferredMsg, bool) {
	if q.n.Load() == 0 {
		return deferredMsg{}, false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.heap) == 0 || q.heap[0].due > now {
		return deferredMsg{}, false
	}
	return q.pop(), true
}

// takeAny returns any message, for Close.
func (q *deferredQueue) takeAny() (deferredMsg, bool) {
	return q.takeExpired(1<<63 - 1)
}

// next returns when the workers must look again: the earliest deadline,
// or the end of the backoff if retry is set and that comes first (or if
// only spooled records, which have no deadline, wait). It returns 0 when
// there is nothing to wait for.
func (q *deferredQueue) next(now int64, retry bool) int64 {
	if q.len() == 0 {
		return 0
	}
	at := int64(0)
	if q.n.Load() > 0 {
		q.mu.Lock()
		if len(q.heap) > 0 {
			at = q.heap[0].due
		}
		q.mu.Unlock()
	}
	if r := q.retryAt.Load(); retry && r > now && (at == 0 && q.ns.Load() > 0 || at != 0 && r < at) {
		at = r
	}
	return at
}

// failed starts a round of backoff after a failed publish, unless one is
// running: many publishes fail together (a NACK for every message of a
// window), and they make one round, not a doubling each.
func (q *deferredQueue) failed(now int64) {
	if now < q.retryAt.Load() {
		return
	}
	q.mu.Lock()
	if now >= q.retryAt.Load() {
		// Jitter in [backoff/2, backoff): nodes that lost the same broker
		// do not come back in lock step.
		d := q.backoff/2 + time.Duration(rand.Int64N(int64(q.backoff/2)+1))
		q.retryAt.Store(now + int64(d))
		q.backoff = min(2*q.backoff, max(retryBackoffMax, q.min))
		q.raised.Store(true)
	}
	q.mu.Unlock()
}

// acked shortens the next round of backoff to its minimum: RabbitMQ takes
// messages again. The round running goes on, so that a queue that takes
// one message in a hundred (reject-publish while a consumer drains it)
// gets one round per ReconnectMin at most, not a republish per ack.
func (q *deferredQueue) acked() {
	if !q.raised.Load() {
		return
	}
	q.mu.Lock()
	q.backoff = q.min
	q.raised.Store(false)
	q.mu.Unlock()
}

// reset ends the backoff: a new connection is up, and what waits for it
// goes at once.
func (q *deferredQueue) reset() {
	q.mu.Lock()
	q.backoff = q.min
	q.retryAt.Store(0)
	q.raised.Store(false)
	q.mu.Unlock()
}

func (q *deferredQueue) less(i, j int) bool {
	a, b := &q.heap[i], &q.heap[j]
	return a.due < b.due || a.due == b.due && a.seq < b.seq
}

func (q *deferredQueue) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !q.less(i, p) {
			return
		}
		q.heap[i], q.heap[p] = q.heap[p], q.heap[i]
		i = p
	}
}

func (q *deferredQueue) pop() deferredMsg {
	h := q.heap
	e := h[0]
	last := len(h) - 1
	h[0] = h[last]
	h[last] = deferredMsg{} // drop the message pointer for the GC
	q.heap = h[:last]
	for i := 0; ; {
		l, s := 2*i+1, i
		if l < last && q.less(l, s) {
			s = l
		}
		if r := l + 1; r < last && q.less(r, s) {
			s = r
		}
		if s == i {
			break
		}
		q.heap[i], q.heap[s] = q.heap[s], q.heap[i]
		i = s
	}
	q.n.Store(int64(len(q.heap)))
	return e
}
