// Package engine is the SMTP server: gnet event loops, one session state
// machine per connection, limits and timeouts.
//
// Goroutines: every session belongs to the event loop that accepted its
// connection and is touched only there, except for the fields through
// which the sink hands a message back (session.handoff, sinkErr, and msg
// and held at the moments they say) and those the ticker reads
// (session.deadline, paused, buffered); each says who may touch it where it is
// declared. The ticker goroutine (gnet's OnTick) never changes a session;
// it only wakes the connection (gnet Conn.Wake), and the loop does the
// rest. A session that starts TLS leaves its loop for a goroutine of its
// own (tls.go, tlsconn.go), which then owns it by the same rules.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	gerrors "github.com/panjf2000/gnet/v2/pkg/errors"
	"golang.org/x/sys/unix"

	"github.com/lsmtp/lsmtp/internal/policy"
	"github.com/lsmtp/lsmtp/internal/queueid"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// Server is an SMTP server. Create it with New, run it with Serve, stop it
// with Shutdown.
type Server struct {
	ids *queueid.Generator
	// cur is the configuration in force: replaced whole by Reload,
	// read by each session at the start of every pass.
	cur atomic.Pointer[settings]

	// Written once in OnBoot, read after ready is closed.
	eng    gnet.Engine
	addrs  []net.Addr
	ready  chan struct{}
	served chan struct{} // closed when Serve returns

	// listeners are our own duplicates of gnet's listening sockets, made
	// in OnBoot, so that stop can shut them without asking gnet for its
	// descriptors while gnet closes them (Engine.DupListener reads what
	// gnet's shutdown writes).
	listenMu  sync.Mutex
	listeners []int // guarded by listenMu

	perIPMu  sync.Mutex
	perIP    map[netip.Addr]int // by clientKey, guarded by perIPMu
	sessions registry

	// draining is set by Shutdown: new connections are refused, idle
	// sessions are closed, transactions in flight may finish.
	draining atomic.Bool
	// force is set when the shutdown deadline passed: everyone gets 421.
	force atomic.Bool

	tls tlsServer // certificates, auth file, handshake bounds (tls.go)

	stats *Stats
}

// New checks cfg and returns a server ready to Serve.
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = capConnsToFileLimit(cfg.MaxConns, cfg.Logger)
	srv := &Server{
		stats:  newStats(),
		ids:    queueid.NewGenerator(),
		perIP:  make(map[netip.Addr]int),
		ready:  make(chan struct{}),
		served: make(chan struct{}),
	}
	if err := srv.setupTLS(&cfg); err != nil {
		return nil, err
	}
	srv.cur.Store(newSettings(cfg))
	return srv, nil
}

// settings is a configuration with what is derived from it.
type settings struct {
	Config
	replies    serverReplies
	tlsReplies tlsReplies
	limits     sink.Limits // what the sink can carry (sink.Limiter), asked once per configuration
	// sizer is the sink's size bound (sink.SizeLimiter), nil for none;
	// ehlo the EHLO replies for the SIZE last advertised (ehloFor).
	sizer sink.SizeLimiter
	ehlo  atomic.Pointer[ehloSet]
}

func newSettings(cfg Config) *settings {
	r := makeReplies(cfg)
	s := &settings{Config: cfg, replies: r, tlsReplies: makeTLSReplies(r), limits: sinkLimits(cfg.Sink)}
	s.sizer, _ = cfg.Sink.(sink.SizeLimiter)
	s.ehlo.Store(&ehloSet{size: cfg.MaxMessageSize, plain: r.ehlo,
		startTLS: s.tlsReplies.ehloStartTLS, auth: s.tlsReplies.ehloAuth})
	return s
}

func (s *Server) settings() *settings { return s.cur.Load() }

// Serve listens and serves until Shutdown or a listener error.
func (s *Server) Serve() error {
	cfg := s.settings()
	var addrs []string
	for _, l := range cfg.listeners() {
		addrs = append(addrs, "tcp://"+l.addr)
	}
	opts := []gnet.Option{
		gnet.WithMulticore(true),
		gnet.WithTicker(true),
		gnet.WithReusePort(false),
		// A restarted server must bind its port while the old process's
		// connections sit in TIME_WAIT.
		gnet.WithReuseAddr(true),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		// SMTP replies are small; a fixed send buffer (no autotuning to
		// 4 MiB) bounds what a client that does not read can pin in the
		// kernel, next to outputHighMark in user space.
		gnet.WithSocketSendBuffer(128 << 10),
		gnet.WithLogger(gnetLogger{log: cfg.Logger, draining: &s.draining}),
	}
	if cfg.EventLoops > 0 {
		opts = append(opts, gnet.WithNumEventLoop(cfg.EventLoops))
	}
	err := gnet.Rotate(&handler{srv: s}, addrs, opts...)
	select {
	case <-s.ready:
	default:
		close(s.ready) // boot failed: release Addrs waiters
	}
	s.closeListeners()
	if s.draining.Load() {
		// Shutdown asked for this. gnet reports the listening socket we
		// shut under it (accept: EINVAL) as an error; it is not one here.
		err = nil
	}
	close(s.served)
	return err
}

// Addrs waits until the server listens (or failed to) and returns the
// bound addresses, in the order of Config.Listen, then ListenTLS, then
// ListenSubmission. Useful with port 0.
func (s *Server) Addrs() []net.Addr {
	<-s.ready
	return s.addrs
}

// Config returns the effective configuration (defaults filled in).
func (s *Server) Config() Config { return s.settings().Config }

// Stats returns the live counters.
func (s *Server) Stats() *Stats { return s.stats }

// Shutdown stops taking new connections and new transactions, lets
// transactions in flight finish until ctx ends, then answers 421 4.3.2 to
// every remaining session and stops the event loops. It does not close
// the sink: the caller does that afterwards, so that messages the sink
// still holds are drained too.
func (s *Server) Shutdown(ctx context.Context) error {
	<-s.ready
	s.draining.Store(true)
	s.sessions.wakeAll()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for s.stats.Open.Load() > 0 {
		select {
		case <-ctx.Done():
			s.force.Store(true)
			s.sessions.wakeAll()
			// Give the loops a moment to write their 421s.
			deadline := time.Now().Add(time.Second)
			for s.stats.Open.Load() > 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			return errors.Join(ctx.Err(), s.stop())
		case <-tick.C:
		}
	}
	return s.stop()
}

func (s *Server) stop() error {
	// gnet closes its listeners only after the event loops exited; a
	// connection accepted in between would get neither a greeting nor a
	// close. Shutting the (shared) listening sockets for reading makes the
	// kernel refuse new connections from here on.
	s.listenMu.Lock()
	for _, fd := range s.listeners {
		_ = unix.Shutdown(fd, unix.SHUT_RD)
	}
	s.listenMu.Unlock()
	defer s.closeListeners()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.eng.Stop(ctx)
	if errors.Is(err, gerrors.ErrEngineInShutdown) {
		// The shut listener already made gnet stop on its own (its
		// reactor treats the failing accept as fatal): wait for the end.
		select {
		case <-s.served:
			return nil
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if err != nil {
		return fmt.Errorf("engine: stopping event loops: %w", err)
	}
	return nil
}

// closeListeners closes our duplicates of the listening sockets once gnet
// stopped, so that the port is free when Shutdown or Serve returns.
func (s *Server) closeListeners() {
	s.listenMu.Lock()
	for _, fd := range s.listeners {
		_ = unix.Close(fd)
	}
	s.listeners = nil
	s.listenMu.Unlock()
}

// admit counts a new connection from ip against the global and per-IP
// limits. When a limit is reached it counts nothing and says which.
func (s *Server) admit(ip netip.Addr, perIP bool) (RefuseReason, bool) {
	if n := s.stats.Open.Add(1); s.settings().MaxConns > 0 && n > int64(s.settings().MaxConns) {
		s.stats.Open.Add(-1)
		return RefusedMaxConns, false
	}
	if !perIP {
		return 0, true // a load balancer: its client is counted once known
	}
	// Counted even without a limit, so that a reload may set one.
	limit, key := s.settings().MaxConnsPerIP, s.clientKey(ip)
	s.perIPMu.Lock()
	n := s.perIP[key]
	ok := limit == 0 || n < limit
	if ok {
		s.perIP[key] = n + 1
	}
	s.perIPMu.Unlock()
	if !ok {
		s.stats.Open.Add(-1)
		return RefusedPerIP, false
	}
	return 0, true
}

func (s *Server) release(ip netip.Addr, perIP bool) {
	s.stats.Open.Add(-1)
	if perIP {
		s.unbindIP(ip)
	}
}

// handler adapts gnet's callbacks to sessions. Every method runs on an
// event loop, except OnTick (the ticker goroutine) and OnBoot/OnShutdown.
type handler struct {
	gnet.BuiltinEventEngine
	srv *Server
}

func (h *handler) OnBoot(eng gnet.Engine) gnet.Action {
	s := h.srv
	s.eng = eng
	s.listenMu.Lock()
	for _, l := range s.settings().listeners() {
		fallback, _ := net.ResolveTCPAddr("tcp", l.addr)
		l.bound = fallback
		fd, err := eng.DupListener("tcp", l.addr)
		if err == nil {
			s.listeners = append(s.listeners, fd)
			if ta, ok := boundAddr(fd, fallback).(*net.TCPAddr); ok {
				l.bound = ta
			}
		}
		s.addrs = append(s.addrs, l.bound)
		s.tls.kinds = append(s.tls.kinds, l)
	}
	s.listenMu.Unlock()
	close(s.ready)
	return gnet.None
}

// boundAddr asks the kernel which address a listener got (port 0 picks
// one), falling back to the configured address.
func boundAddr(fd int, fallback *net.TCPAddr) net.Addr {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fallback
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(sa.Addr[:]).To16(), Port: sa.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: sa.Port}
	}
	return fallback
}

func (h *handler) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	s := h.srv
	cfg := s.settings()
	ap := addrPort(c.RemoteAddr())
	ip := ap.Addr()
	kind := kindPlain
	if s.tls.special {
		kind = s.tls.kindOf(c.Fd())
	}
	if s.draining.Load() {
		s.stats.Refused[RefusedDraining].Add(1)
		return refusal(kind, cfg.replies.shutdown), gnet.Close
	}
	viaProxy := trusted(cfg.TrustedProxies, ip)
	if reason, ok := s.admit(ip, !viaProxy); !ok {
		s.stats.Refused[reason].Add(1)
		return refusal(kind, cfg.replies.tooMany), gnet.Close
	}
	s.stats.Accepted.Add(1)
	sess := newSession(s, c, ap)
	sess.countedIP = !viaProxy
	sess.setKind(kind)
	c.SetContext(sess) // from here on, OnClose releases what admit counted
	s.sessions.add(sess)
	now := time.Now()
	if viaProxy {
		// The load balancer speaks first: the PROXY header, then the
		// client. We greet once we know who the client is.
		sess.state = stProxy
		sess.setDeadline(now)
		return nil, gnet.None
	}
	if reply, ok := sess.admitClient(now); !ok {
		return refusal(kind, reply), gnet.Close
	}
	greeting := sess.open(now)
	if sess.sec.startTLS {
		return nil, gnet.Close // implicit TLS: OnClose hands the connection off
	}
	return greeting, gnet.None
}

func trusted(proxies []netip.Prefix, ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range proxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// bindIP counts a proxied session against its client's per-IP limit,
// once the PROXY header named the client (the load balancer, for a
// header that names none). On refusal nothing changes.
func (s *Server) bindIP(ip netip.Addr) bool {
	limit, key := s.settings().MaxConnsPerIP, s.clientKey(ip)
	s.perIPMu.Lock()
	defer s.perIPMu.Unlock()
	n := s.perIP[key]
	if limit > 0 && n >= limit {
		return false
	}
	s.perIP[key] = n + 1
	return true
}

// clientKey names ip's client in perIP: an IPv6 address by its
// Config.IPv6Prefix, which Reload does not change, so that release finds
// what admit and bindIP counted.
func (s *Server) clientKey(ip netip.Addr) netip.Addr {
	return policy.ClientKey(ip, s.settings().IPv6Prefix)
}

func (h *handler) OnClose(c gnet.Conn, err error) gnet.Action {
	sess, ok := c.Context().(*session)
	if !ok {
		return gnet.None // refused in OnOpen: nothing was counted
	}
	if sess.sec.startTLS && h.srv.handOff(sess, c, err) {
		return gnet.None // the session goes on, on its TLS goroutine
	}
	h.srv.endSession(sess)
	return gnet.None
}

// endSession releases what OnOpen counted for a session: on its loop in
// OnClose, or on its TLS goroutine when that ends.
func (s *Server) endSession(sess *session) {
	s.sessions.remove(sess)
	// Bytes first, then the connection count: whoever sees no open
	// connection must also see no octets this session still counted.
	sess.closed()
	s.release(sess.remote.Addr(), sess.countedIP)
}

func (h *handler) OnTraffic(c gnet.Conn) gnet.Action {
	sess, ok := c.Context().(*session)
	if !ok {
		return gnet.Close
	}
	return sess.onTraffic(c, time.Now())
}

// OnTick runs on the ticker goroutine: it only wakes sessions whose
// deadline passed; their own loop decides what that means.
func (h *handler) OnTick() (time.Duration, gnet.Action) {
	h.srv.sessions.wakeExpired(time.Now().UnixNano())
	return h.srv.settings().TickInterval, gnet.None
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// registry lists the open sessions for the ticker. It is sharded so that
// loops opening and closing connections rarely meet on one lock; no lock
// is held across I/O.
type registry struct {
	shards [32]struct {
		mu sync.Mutex
		m  map[*session]struct{}
	}
}

func (r *registry) shard(s *session) int { return int(s.id % uint64(len(r.shards))) }

func (r *registry) add(s *session) {
	sh := &r.shards[r.shard(s)]
	sh.mu.Lock()
	if sh.m == nil {
		sh.m = make(map[*session]struct{})
	}
	sh.m[s] = struct{}{}
	sh.mu.Unlock()
}

func (r *registry) remove(s *session) {
	sh := &r.shards[r.shard(s)]
	sh.mu.Lock()
	delete(sh.m, s)
	sh.mu.Unlock()
}

func (r *registry) each(f func(*session)) {
	var batch []*session
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		for s := range sh.m {
			batch = append(batch, s)
		}
		sh.mu.Unlock()
		// Wake outside the lock: Wake queues a task on the session's loop.
		for _, s := range batch {
			f(s)
		}
		batch = batch[:0]
	}
}

func (r *registry) wakeExpired(now int64) {
	r.each(func(s *session) {
		if d := s.deadline.Load(); (d != 0 && now >= d) || s.paused.Load() || s.buffered.Load() > bufferShare {
			s.wake()
		}
	})
}

func (r *registry) wakeAll() {
	r.each(func(s *session) { s.wake() })
}

// gnetLogger sends gnet's own messages to our slog logger; its start-up
// chatter goes to debug, and so do its errors while we shut down: the
// listener we shut under it makes its accept loop report one.
type gnetLogger struct {
	log      *slog.Logger
	draining *atomic.Bool
}

func (l gnetLogger) Debugf(format string, args ...any) { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l gnetLogger) Infof(format string, args ...any)  { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l gnetLogger) Warnf(format string, args ...any)  { l.log.Warn(fmt.Sprintf(format, args...)) }
func (l gnetLogger) Fatalf(format string, args ...any) { l.log.Error(fmt.Sprintf(format, args...)) }

func (l gnetLogger) Errorf(format string, args ...any) {
	if l.draining.Load() {
		l.log.Debug(fmt.Sprintf(format, args...))
		return
	}
	l.log.Error(fmt.Sprintf(format, args...))
}

// Reload puts a new configuration in force without dropping connections:
// limits, timeouts and the hostname apply to every session from its next
// read on. Listen addresses, event loops, sink and logger cannot change
// on a running server; Reload keeps the running values and names each
// such option that differs in restartNeeded.
func (s *Server) Reload(cfg Config) (restartNeeded []string, err error) {
	cur := s.settings()
	if cfg.Sink == nil {
		cfg.Sink = cur.Sink
	}
	if cfg.Logger == nil {
		cfg.Logger = cur.Logger
	}
	// The TLS and submission listeners stay until a restart: validate
	// with them, so that their certificate and auth file cannot go.
	keptTLS := cfg.keepTLSListeners(&cur.Config)
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = capConnsToFileLimit(cfg.MaxConns, cfg.Logger)
	if !slices.Equal(cfg.Listen, cur.Listen) {
		restartNeeded = append(restartNeeded, "listen")
		cfg.Listen = cur.Listen
	}
	if cfg.IPv6Prefix != cur.IPv6Prefix {
		restartNeeded = append(restartNeeded, "ipv6-prefix")
		cfg.IPv6Prefix = cur.IPv6Prefix
	}
	if cfg.EventLoops != cur.EventLoops {
		restartNeeded = append(restartNeeded, "event-loops")
		cfg.EventLoops = cur.EventLoops
	}
	if cfg.Sink != cur.Sink {
		restartNeeded = append(restartNeeded, "sink")
		cfg.Sink = cur.Sink
	}
	restartNeeded = append(restartNeeded, keptTLS...)
	s.reloadTLS(&cfg)
	cfg.Logger = cur.Logger
	s.cur.Store(newSettings(cfg))
	return restartNeeded, nil
}

// capConnsToFileLimit keeps the connection limit under RLIMIT_NOFILE. A
// connection past the limit is refused only after accept(2) gave it a
// descriptor; if accept itself fails with EMFILE, gnet's accept loop stops
// the whole server. So "no limit" (0) and any limit above what the
// process may open become the file limit minus a reserve for listeners,
// epoll, AMQP connections, the admin listener and logs.
func capConnsToFileLimit(maxConns int, log *slog.Logger) int {
	capped := ConnLimit(maxConns)
	if capped != maxConns {
		var l unix.Rlimit
		_ = unix.Getrlimit(unix.RLIMIT_NOFILE, &l)
		log.Warn("connection limit lowered to fit the open file limit", "max_conns", capped,
			"asked", maxConns, "nofile", l.Cur, "reserve", int(l.Cur)-capped)
	}
	return capped
}

// ConnLimit is the connection limit a server started now would use for
// maxConns: at most the open file limit minus its reserve. The sink sizes
// what it may hold from it (each connection has at most one message in
// the sink at a time).
func ConnLimit(maxConns int) int {
	var l unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &l); err != nil || l.Cur > 1<<31 {
		return maxConns
	}
	reserve := max(int(l.Cur)/50, 64)
	ceiling := max(int(l.Cur)-reserve, 1)
	if maxConns == 0 || maxConns > ceiling {
		return ceiling
	}
	return maxConns
}
