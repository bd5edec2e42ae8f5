package bench

// fifo is a growable ring buffer. The event loop keeps one per kind of
// delay; because every entry of a queue is delayed by the same constant
// from a monotonic clock, entries are appended in the order they fall due,
// so a ring does the work of a timer heap at O(1) per entry.
type fifo[T any] struct {
	buf  []T
	head int
	n    int
}

func (q *fifo[T]) len() int { return q.n }

func (q *fifo[T]) push(v T) {
	if q.n == len(q.buf) {
		q.grow()
	}
	q.buf[(q.head+q.n)&(len(q.buf)-1)] = v
	q.n++
}

// peek returns a pointer to the oldest entry; the queue must not be empty.
func (q *fifo[T]) peek() *T { return &q.buf[q.head] }

func (q *fifo[T]) pop() T {
	var zero T
	v := q.buf[q.head]
	q.buf[q.head] = zero
	q.head = (q.head + 1) & (len(q.buf) - 1)
	q.n--
	return v
}

// grow doubles the ring, keeping a power-of-two size so that indexing is a
// mask.
func (q *fifo[T]) grow() {
	size := 2 * len(q.buf)
	if size == 0 {
		size = 64
	}
	buf := make([]T, size)
	for i := 0; i < q.n; i++ {
		buf[i] = q.buf[(q.head+i)&(len(q.buf)-1)]
	}
	q.buf, q.head = buf, 0
}
