package bench

import (
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file is the client side of the benchmark: many TCP connections
// driven by a few epoll loops, with network latency emulated in user space.
//
// Why not a goroutine per connection: at 30,000 sessions with every chunk
// held back for half a round trip, a goroutine per connection (plus one to
// read, plus a timer per chunk) costs more CPU than the server under test,
// on a machine whose two cores the server and RabbitMQ need. Here a chunk
// costs one ring-buffer entry and the syscall that moves it.
//
// The emulated path has a fixed round-trip time RTT and no loss:
//   - connect: the SYN and SYN-ACK take a round trip; the server learns of
//     the connection from the client's ACK half a round trip later, so the
//     real connect(2) is issued RTT + RTT/2 after Dial. The greeting the
//     server sends on accept then reaches the client RTT/2 after that: two
//     round trips from Dial to greeting, as on a real network.
//   - client to server: bytes passed to Send reach the server's socket
//     RTT/2 later (they are written to the socket then).
//   - server to client: bytes are read from the socket as soon as they
//     arrive, stamped, and handed to the client RTT/2 later.
// Each direction is a FIFO per loop: the delay is the same for every chunk,
// so chunks keep their order and a chunk never waits behind another's delay.

// Handler is the client logic of one session. Its methods run on the
// session's loop goroutine and must not block.
type Handler interface {
	// Start is called when the session is due to start; it normally calls
	// Dial.
	Start(c *Conn)
	// Data gets bytes from the server RTT/2 after they arrived. b is valid
	// only during the call.
	Data(c *Conn, b []byte)
	// Closed reports that the connection ended other than by c.Close: the
	// connect failed, the server closed it (seen RTT/2 after the FIN
	// arrived), it was reset, or its deadline passed. The socket is gone;
	// the handler calls Dial, DialLater or Done.
	Closed(c *Conn, err error)
}

// Errors passed to Handler.Closed.
var (
	ErrServerClosed = errors.New("server closed the connection")
	ErrTimeout      = errors.New("no reply before the deadline")
	ErrAborted      = errors.New("aborted at the end of the drain period")
)

// NetConfig describes the emulated network.
type NetConfig struct {
	RTT time.Duration // emulated round-trip time; 0 is plain loopback
	// Sources are client addresses to bind to. Each holds PerSource
	// sessions before the next one is used; an invalid Addr (the zero
	// value) leaves the choice to the kernel.
	Sources   []netip.Addr
	PerSource int
	// RetryDelay is how long DialLater waits.
	RetryDelay time.Duration
}

// eventKind says what a queued event does.
type eventKind uint8

const (
	evStart   eventKind = iota // a session's Start is due
	evConnect                  // issue connect(2)
	evSend                     // n bytes of out may be written
	evRecv                     // n bytes of in reach the handler
	evClosed                   // the connection's end reaches the handler (n = errno, 0 for EOF)
	evRetry                    // DialLater is due
)

type event struct {
	due  int64 // nanoseconds on the loop's clock
	c    *Conn
	gen  uint32
	kind eventKind
	n    int32
}

// Conn is one client session's connection; it is reused across the
// connections the session opens one after the other.
type Conn struct {
	l      *Loop
	h      Handler
	Index  int // session number, for the handler's use
	target netip.AddrPort
	slot   int32
	gen    uint32 // bumped on Dial and Close: stale queued events are dropped
	fd     int
	src    int // index into Sources
	active bool

	pollOut  bool
	deadline int64

	out     []byte
	outHead int // first byte not yet written
	outDue  int // bytes from outHead on that have arrived at the server side
	outNew  int // bytes appended by Write since the last Send

	in     []byte // bytes read and not yet handed to the handler
	inHead int
}

// Loop drives its connections on one goroutine.
type Loop struct {
	cfg   NetConfig
	ep    int
	base  time.Time
	half  int64 // RTT/2 in ns
	dial  int64 // RTT + RTT/2 in ns: from Dial to connect(2)
	retry int64

	starts, connects, sends, recvs, retries fifo[event]

	conns   []*Conn
	active  int
	events  []unix.EpollEvent
	scratch []byte

	flights   int64 // Send calls that sent something
	nextSweep int64
	stopping  atomic.Bool
	hardStop  atomic.Int64 // abort everything at this time (0: not set)
	err       error
}

// NewLoop creates a loop; Close releases its epoll descriptor if Run is
// never called.
func NewLoop(cfg NetConfig, base time.Time) (*Loop, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = 100 * time.Millisecond
	}
	if len(cfg.Sources) == 0 {
		cfg.Sources = []netip.Addr{{}}
	}
	return &Loop{
		cfg:     cfg,
		ep:      ep,
		base:    base,
		half:    int64(cfg.RTT / 2),
		dial:    int64(cfg.RTT + cfg.RTT/2),
		retry:   int64(cfg.RetryDelay),
		events:  make([]unix.EpollEvent, 512),
		scratch: make([]byte, 64<<10),
	}, nil
}

// Now is the loop's clock: nanoseconds since the run's base time,
// monotonic.
func (l *Loop) Now() int64 { return int64(time.Since(l.base)) }

// tick is the granularity of emulated delays: due times are rounded up to
// it, so that chunks falling due close together are moved in one wakeup
// (at 315 ms RTT that is at most 0.16% more delay per hop, never less).
// Rounding up is monotonic, so the FIFOs stay in due order.
const tick = int64(250 * time.Microsecond)

func (l *Loop) round(t int64) int64 {
	if l.half == 0 {
		return t
	}
	return (t + tick - 1) / tick * tick
}

// Add registers a session that connects to target and starts at time at
// (on the loop's clock). Sessions must be added in the order of their
// start times, before Run. srcIndex picks the session's source address:
// the srcIndex/PerSource-th.
func (l *Loop) Add(h Handler, target netip.AddrPort, srcIndex int, at int64) *Conn {
	c := &Conn{l: l, h: h, Index: srcIndex, target: target, slot: int32(len(l.conns)), fd: -1, active: true}
	if l.cfg.PerSource > 0 {
		c.src = (srcIndex / l.cfg.PerSource) % len(l.cfg.Sources)
	}
	l.conns = append(l.conns, c)
	l.active++
	l.starts.push(event{due: at, c: c, kind: evStart})
	return c
}

// Stop asks sessions to finish (see Conn.Stopping); at hardStop every
// connection still open is aborted.
func (l *Loop) Stop(hardStop int64) {
	l.stopping.Store(true)
	l.hardStop.Store(hardStop)
}

// Run runs the loop until every session called Done (or was aborted).
func (l *Loop) Run() error {
	defer unix.Close(l.ep)
	for l.active > 0 {
		now := l.Now()
		if hs := l.hardStop.Load(); hs > 0 && now >= hs {
			l.abortAll()
			break
		}
		l.runDue(now)
		if l.active == 0 {
			break
		}
		if now >= l.nextSweep {
			l.sweep(now)
			l.nextSweep = now + int64(250*time.Millisecond)
		}
		n, err := l.wait(l.timeout(l.Now()))
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			l.err = fmt.Errorf("epoll_wait: %w", err)
			l.abortAll()
			break
		}
		// Everything read in this batch arrived before this instant, so
		// stamping it with a later time can only lengthen its delay.
		now = l.Now()
		for i := 0; i < n; i++ {
			l.handle(&l.events[i], now)
		}
	}
	return l.err
}

// timeout is how long epoll may sleep: until the earliest queued event,
// and never longer than 20 ms so that Stop is noticed.
func (l *Loop) timeout(now int64) int64 {
	next := now + int64(20*time.Millisecond)
	for _, q := range [...]*fifo[event]{&l.starts, &l.connects, &l.sends, &l.recvs, &l.retries} {
		if q.len() > 0 && q.peek().due < next {
			next = q.peek().due
		}
	}
	if hs := l.hardStop.Load(); hs > 0 && hs < next {
		next = hs
	}
	return max(next-now, 0)
}

// epoll_pwait2 takes a nanosecond timeout; epoll_wait rounds to whole
// milliseconds, which would add up to a millisecond to every hop.
const sysEpollPwait2 = 441

var noPwait2 atomic.Bool

func (l *Loop) wait(timeoutNs int64) (int, error) {
	if !noPwait2.Load() {
		ts := unix.NsecToTimespec(timeoutNs)
		r, _, e := unix.Syscall6(sysEpollPwait2, uintptr(l.ep), uintptr(unsafe.Pointer(&l.events[0])),
			uintptr(len(l.events)), uintptr(unsafe.Pointer(&ts)), 0, 0)
		if e == 0 {
			return int(r), nil
		}
		if e != unix.ENOSYS {
			return 0, e
		}
		noPwait2.Store(true)
	}
	// Round up: an emulated delay may be longer than asked, never shorter.
	return unix.EpollWait(l.ep, l.events, int((timeoutNs+999_999)/1_000_000))
}

// runDue fires every queued event that is due at now.
func (l *Loop) runDue(now int64) {
	for l.starts.len() > 0 && l.starts.peek().due <= now {
		e := l.starts.pop()
		e.c.h.Start(e.c)
	}
	for l.retries.len() > 0 && l.retries.peek().due <= now {
		e := l.retries.pop()
		if e.gen == e.c.gen && e.c.active {
			e.c.h.Start(e.c)
		}
	}
	for l.connects.len() > 0 && l.connects.peek().due <= now {
		e := l.connects.pop()
		if e.gen == e.c.gen {
			l.connect(e.c)
		}
	}
	for l.sends.len() > 0 && l.sends.peek().due <= now {
		e := l.sends.pop()
		if e.gen == e.c.gen {
			e.c.outDue += int(e.n)
			l.flush(e.c)
		}
	}
	for l.recvs.len() > 0 && l.recvs.peek().due <= now {
		e := l.recvs.pop()
		if e.gen == e.c.gen {
			l.deliver(e)
		}
	}
}

// deliver hands a received chunk, or the connection's end, to the handler.
func (l *Loop) deliver(e event) {
	c := e.c
	if e.kind == evClosed {
		c.gen++
		c.resetBuffers()
		c.h.Closed(c, closeErr(int(e.n)))
		return
	}
	b := c.in[c.inHead : c.inHead+int(e.n)]
	c.inHead += int(e.n)
	gen := c.gen
	c.h.Data(c, b)
	if gen == c.gen && c.inHead == len(c.in) {
		c.in, c.inHead = c.in[:0], 0
	}
}

func closeErr(errno int) error {
	if errno == 0 {
		return ErrServerClosed
	}
	return unix.Errno(errno)
}

// connect issues the real connect(2).
func (l *Loop) connect(c *Conn) {
	for tries := 0; ; tries++ {
		err := l.connectOnce(c)
		if err == nil {
			return
		}
		// This source address has no ephemeral port left for the
		// server's address: move the session to the next one.
		if err == unix.EADDRNOTAVAIL && tries < len(l.cfg.Sources) {
			c.src = (c.src + 1) % len(l.cfg.Sources)
			continue
		}
		c.gen++
		c.resetBuffers()
		c.h.Closed(c, fmt.Errorf("connect: %w", err))
		return
	}
}

func (l *Loop) connectOnce(c *Conn) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	// Commands are small and the emulated delay already batches nothing:
	// Nagle would only add waits of its own.
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if src := l.cfg.Sources[c.src]; src.IsValid() {
		// Without IP_BIND_ADDRESS_NO_PORT, bind would pick the port
		// alone and every source address would share one port range.
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src.As4()}); err != nil {
			unix.Close(fd)
			return err
		}
	}
	sa := &unix.SockaddrInet4{Port: int(c.target.Port()), Addr: c.target.Addr().As4()}
	if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return err
	}
	// Only EPOLLIN: the client speaks after the greeting, and a failed
	// connect shows as EPOLLERR, which read turns into the error. This
	// saves an epoll_ctl per connection.
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: c.slot, Pad: int32(c.gen)}
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		unix.Close(fd)
		return err
	}
	c.fd, c.pollOut = fd, false
	return nil
}

// handle processes one epoll event.
func (l *Loop) handle(ev *unix.EpollEvent, now int64) {
	if ev.Fd < 0 || int(ev.Fd) >= len(l.conns) {
		return
	}
	c := l.conns[ev.Fd]
	if c.fd < 0 || uint32(ev.Pad) != c.gen {
		return // closed earlier in this batch
	}
	if ev.Events&unix.EPOLLOUT != 0 && c.pollOut {
		l.flush(c)
		if c.fd < 0 {
			return
		}
	}
	if ev.Events&(unix.EPOLLIN|unix.EPOLLERR|unix.EPOLLHUP|unix.EPOLLRDHUP) != 0 {
		l.read(c, now)
	}
}

// read takes what the socket holds and queues it for the handler.
func (l *Loop) read(c *Conn, now int64) {
	n, err := unix.Read(c.fd, l.scratch)
	for err == unix.EINTR {
		n, err = unix.Read(c.fd, l.scratch)
	}
	switch {
	case err == unix.EAGAIN:
		return
	case err != nil || n == 0:
		// Close at once (a level-triggered EOF would fire forever); the
		// handler hears of it after the bytes before it.
		errno := int32(0)
		if en, ok := err.(unix.Errno); ok {
			errno = int32(en)
		}
		l.closeFd(c)
		l.queueRecv(c, evClosed, errno, now)
		return
	}
	c.in = append(c.in, l.scratch[:n]...)
	l.queueRecv(c, evRecv, int32(n), now)
}

func (l *Loop) queueRecv(c *Conn, kind eventKind, n int32, now int64) {
	e := event{due: l.round(now + l.half), c: c, gen: c.gen, kind: kind, n: n}
	if l.half == 0 {
		l.deliver(e)
		return
	}
	l.recvs.push(e)
}

// flush writes the bytes that have arrived at the server side.
func (l *Loop) flush(c *Conn) {
	if c.fd < 0 {
		return
	}
	for c.outDue > 0 {
		n, err := unix.Write(c.fd, c.out[c.outHead:c.outHead+c.outDue])
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			l.setPollOut(c, true)
			return
		}
		if err != nil {
			errno := int32(0)
			if en, ok := err.(unix.Errno); ok {
				errno = int32(en)
			}
			// Queued even without delay: flush runs inside handler
			// calls, which must not be re-entered.
			l.closeFd(c)
			l.recvs.push(event{due: l.round(l.Now() + l.half), c: c, gen: c.gen, kind: evClosed, n: errno})
			return
		}
		c.outHead += n
		c.outDue -= n
	}
	if c.outHead == len(c.out) && c.outNew == 0 {
		c.out, c.outHead = c.out[:0], 0
	}
	l.setPollOut(c, false)
}

func (l *Loop) setPollOut(c *Conn, on bool) {
	if c.pollOut == on {
		return
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: c.slot, Pad: int32(c.gen)}
	if on {
		ev.Events |= unix.EPOLLOUT
	}
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_MOD, c.fd, &ev); err == nil {
		c.pollOut = on
	}
}

func (l *Loop) closeFd(c *Conn) {
	if c.fd >= 0 {
		unix.Close(c.fd) // also leaves the epoll set
		c.fd = -1
	}
	c.pollOut = false
}

// sweep ends connections whose deadline passed.
func (l *Loop) sweep(now int64) {
	for _, c := range l.conns {
		if c.deadline > 0 && now >= c.deadline && c.active {
			c.deadline = 0
			l.closeFd(c)
			c.gen++
			c.resetBuffers()
			c.h.Closed(c, ErrTimeout)
		}
	}
}

// abortAll ends every session still running.
func (l *Loop) abortAll() {
	for _, c := range l.conns {
		if !c.active {
			continue
		}
		l.closeFd(c)
		c.gen++
		c.resetBuffers()
		c.h.Closed(c, ErrAborted)
		if c.active {
			c.Done()
		}
	}
}

func (c *Conn) resetBuffers() {
	c.out, c.outHead, c.outDue, c.outNew = c.out[:0], 0, 0, 0
	c.in, c.inHead = c.in[:0], 0
	c.deadline = 0
}

// Dial opens a new connection; see the top of this file for its timing.
// A connection still open is closed first.
func (c *Conn) Dial() {
	c.Close()
	// Queued even without delay, so that a failing connect does not
	// re-enter the handler that called Dial.
	c.l.connects.push(event{due: c.l.round(c.l.Now() + c.l.dial), c: c, gen: c.gen, kind: evConnect})
}

// DialLater calls the handler's Start again after the retry delay.
func (c *Conn) DialLater() {
	c.Close()
	c.l.retries.push(event{due: c.l.Now() + c.l.retry, c: c, gen: c.gen, kind: evRetry})
}

// Write appends b to what the next Send sends.
func (c *Conn) Write(b []byte) {
	c.out = append(c.out, b...)
	c.outNew += len(b)
}

// Send puts everything written since the last Send on the wire, as one
// chunk that reaches the server RTT/2 from now.
func (c *Conn) Send() {
	n := c.outNew
	if n == 0 {
		return
	}
	c.outNew = 0
	c.l.flights++
	if c.l.half == 0 {
		c.outDue += n
		c.l.flush(c)
		return
	}
	c.l.sends.push(event{due: c.l.round(c.l.Now() + c.l.half), c: c, gen: c.gen, kind: evSend, n: int32(n)})
}

// Close closes the connection from the client side; events still queued
// for it are dropped.
func (c *Conn) Close() {
	c.l.closeFd(c)
	c.gen++
	c.resetBuffers()
}

// SetDeadline ends the connection with ErrTimeout if it is still open d
// from now (checked every 250 ms); 0 clears it.
func (c *Conn) SetDeadline(d time.Duration) {
	if d <= 0 {
		c.deadline = 0
		return
	}
	c.deadline = c.l.Now() + int64(d)
}

// Done ends the session: it opens no more connections.
func (c *Conn) Done() {
	if !c.active {
		return
	}
	c.Close()
	c.active = false
	c.l.active--
}

// Stopping reports whether the run is ending: sessions finish what they
// are doing and call Done.
func (c *Conn) Stopping() bool { return c.l.stopping.Load() }

// Now is the loop's clock.
func (c *Conn) Now() int64 { return c.l.Now() }

// closeEpoll releases the epoll descriptor of a loop that never ran.
func (l *Loop) closeEpoll() { unix.Close(l.ep) }
