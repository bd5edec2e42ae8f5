package engine

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// TestHostile throws hostile and malformed input at a real server over
// TCP. Every case asserts its exact reply sequence (code and enhanced
// code of every reply, and that no other reply came: a case either ends
// with a NOOP/QUIT sentinel answered 250/221 or with the server closing),
// and how many messages its connection got into the sink. After every
// case a canary client on a fresh connection to the same server must
// complete a whole transaction: one client's attack never stops the
// server from serving the others.
//
// After the suite every server's in-flight byte and session buffer
// counts are back to 0 and the process heap is within hostileHeapBound
// (and hostileHeapPerServer for every server of a case's own) of what it
// was before.
//
// The cases are in hostile_cases_test.go.
func TestHostile(t *testing.T) {
	if testing.Short() {
		t.Skip("hostile suite moves some tens of MB over loopback")
	}
	// The table holds some MB of payloads: built before the first heap
	// figure and kept alive until the last, so that it is not counted.
	cases := hostileCases(hostileClientHello(t))
	if len(cases) < 60 {
		t.Fatalf("only %d cases", len(cases))
	}
	env := &hostileEnv{}
	for p := range hostileNumProfiles {
		env.shared[p] = env.start(t, hostileConfig(p))
		// Warm each server up so that its fixed costs (event loop
		// buffers, pools) are in the heap figure taken before.
		hostileCanary(t, env.shared[p], fmt.Sprintf("warmup%d", p))
	}
	// gnet keeps the engine started last in a package-level map keyed
	// by listen address ("tcp://127.0.0.1:0" for every server here), so
	// one stopped server's event loops stay reachable after the suite.
	// Have one there before too, so that it is not counted as growth.
	hostileStartStop(t)
	before := hostileHeap()

	// Registered after the shared servers, so it runs before their
	// shutdown (cleanups run last-in first-out), once every case is done.
	t.Cleanup(func() {
		env.finalChecks(t, before)
		runtime.KeepAlive(cases)
	})

	names := make(map[string]bool)
	for i, tc := range cases {
		if names[tc.name] {
			t.Fatalf("duplicate case name %q", tc.name)
		}
		names[tc.name] = true
		id := fmt.Sprintf("c%03d.hostile.test", i)
		t.Run(tc.name, func(t *testing.T) {
			if !tc.serial {
				// Timing-sensitive cases run first, one at a time, while
				// the parallel ones wait for the parent to return.
				t.Parallel()
			}
			if tc.skip != "" {
				t.Skip(tc.skip)
			}
			h := env.shared[tc.prof]
			if tc.cfg != nil {
				h = env.start(t, *tc.cfg)
			}
			if tc.run != nil {
				tc.run(t, h, id)
			} else {
				hostileDialog(t, h, id, tc)
			}
			if got := h.sink.ByHelo(id); len(got) != tc.msgs {
				t.Fatalf("sink got %d messages from the attacking connection, want %d", len(got), tc.msgs)
			} else if tc.check != nil {
				tc.check(t, got)
			}
			hostileCanary(t, h, id)
		})
	}
}

// hostileHeapBound, plus hostileHeapPerServer for every server of a
// case's own, is how much HeapAlloc may grow over the whole suite,
// measured after two GCs before and after, with the sinks' recordings
// dropped and the case table kept alive throughout. HeapAlloc counts
// live objects only; HeapInuse adds the free space of partly used spans,
// which moves by hundreds of KiB with how the parallel cases happened to
// interleave (+2.3-2.7 MiB against +1.9-2.0 MiB of HeapAlloc, same runs).
// The suite pushes about 15 MB through the servers (1 MiB messages, a
// 2 MB line, 100,000- and 200,000-command floods, 2.8 MB of replies
// nobody reads); none of it may stay reachable once the connections are
// gone. Measured growth is 1.9-2.0 MiB with 12 servers of their own, none
// of it input: the testing package's bookkeeping for some 150 subtests
// (about 0.5 MiB) and the event loop buffers of stopped servers that
// stay reachable (about 120 KiB a server, bounded by the number of
// servers, not by what clients send). Retaining the 2 MB line measured
// +3.9 MiB against the 2.5 MiB bound; the unread replies or two 1 MiB
// messages would break it as surely.
const (
	hostileHeapBound     = 1 << 20
	hostileHeapPerServer = 128 << 10
)

// Shared server profiles; a case picks one, or brings its own Config.
type hostileProfile uint8

const (
	hostileStd       hostileProfile = iota // 1 MiB messages, bare CR/LF in DATA refused
	hostileNormalize                       // Config.NormalizeBareEOL
	hostileShort                           // IdleTimeout and DataTimeout of hostileTimeout
	hostileGreet                           // GreetDelay hostileGreetDelay
	hostileLimits                          // a sink with envelope limits, a policy, 64 KiB lines (hostileLimitsConfig)
	hostileNumProfiles
)

const (
	hostileMaxSize    = 1 << 20 // MaxMessageSize: the 25 MB default, scaled down to stay fast
	hostileTimeout    = 300 * time.Millisecond
	hostileGreetDelay = 200 * time.Millisecond
	// hostileLate is how much later than due a timeout reply may come:
	// the ticker runs every 20 ms, the rest is scheduling on a shared
	// 2-core machine. A session kept alive by a slow writer overshoots
	// it: the slow writers below go on for 3 s.
	hostileLate = time.Second
)

func hostileConfig(p hostileProfile) Config {
	cfg := Config{MaxMessageSize: hostileMaxSize, IdleTimeout: 10 * time.Second, DataTimeout: 10 * time.Second}
	switch p {
	case hostileNormalize:
		cfg.NormalizeBareEOL = true
	case hostileShort:
		cfg.IdleTimeout, cfg.DataTimeout = hostileTimeout, hostileTimeout
	case hostileGreet:
		cfg.GreetDelay = hostileGreetDelay
	case hostileLimits:
		cfg = hostileLimitsConfig()
	}
	return cfg
}

// hostileCase is one attack.
type hostileCase struct {
	name string
	prof hostileProfile
	// cfg, when set, runs the case on a server of its own with this
	// configuration (for cases that read server-wide counters).
	cfg *Config
	// serial cases measure time; they run alone.
	serial bool
	// noGreeting: write before reading the greeting (GreetDelay cases).
	noGreeting bool
	steps      []hostileStep
	// closed: the server must close after the last step. Otherwise the
	// case ends with NOOP and QUIT, whose replies must be next: proof
	// that no reply was left over.
	closed bool
	// msgs is how many messages the attacking connection must have put
	// into the sink (matched by its HELO name, "{id}").
	msgs  int
	check func(t *testing.T, msgs []smtptest.Recorded)
	// run replaces the steps for cases that need more than a dialog.
	run func(t *testing.T, h *hostileServer, id string)
	// skip names an engine bug that is not fixed yet.
	skip string
}

// hostileStep is one write and the replies it must get.
type hostileStep struct {
	send string // "{id}" stands for the case's HELO name
	// parts, instead of send, are written one by one, pause apart.
	parts []string
	// chunk splits send into writes of this size, pause apart.
	chunk     int
	pause     time.Duration
	halfClose bool // CloseWrite after the last octet
	// want are the replies, in order: "354" (no enhanced code allowed),
	// "250 2.1.5", or "250 2.0.0 1 octets" (code, enhanced code, start of
	// the text).
	want []string
	// after: the last reply is a timeout's. It must come no sooner than
	// this after the reply before it, and no later than hostileLate
	// after that.
	after time.Duration
}

// hs is a step: what to send and the replies it gets.
func hs(send string, want ...string) hostileStep { return hostileStep{send: send, want: want} }

// hostileRep is n times the same expected reply.
func hostileRep(n int, want string) []string {
	w := make([]string, n)
	for i := range w {
		w[i] = want
	}
	return w
}

// hostileEnv holds the servers of the suite.
type hostileEnv struct {
	shared [hostileNumProfiles]*hostileServer
	mu     sync.Mutex
	// all is every server's counters and sink, for the final checks. Not
	// the servers: a stopped one's event loops are garbage by then.
	all []hostileRecord
}

type hostileRecord struct {
	addr  string
	stats *Stats
	sink  *smtptest.Recorder
}

type hostileServer struct {
	srv  *Server
	addr string
	sink *smtptest.Recorder
}

func (e *hostileEnv) start(t *testing.T, cfg Config) *hostileServer {
	t.Helper()
	hk, ok := cfg.Sink.(*smtptest.Recorder) // a case's own, with Limits
	if !ok {
		hk = &smtptest.Recorder{}
	}
	cfg.Sink = hk
	srv, addr := startServer(t, cfg)
	h := &hostileServer{srv: srv, addr: addr, sink: hk}
	e.mu.Lock()
	e.all = append(e.all, hostileRecord{addr, srv.Stats(), hk})
	e.mu.Unlock()
	return h
}

// finalChecks runs once every case is done: no server holds message
// bytes, and the heap did not keep what the attacks sent.
func (e *hostileEnv) finalChecks(t *testing.T, before runtime.MemStats) {
	deadline := time.Now().Add(5 * time.Second)
	var recv int64
	for _, h := range e.all {
		for h.stats.Open.Load() != 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := h.stats.Open.Load(); n != 0 {
			t.Errorf("server %s: %d connections still open after the suite", h.addr, n)
		}
		if n := h.stats.InFlightBytes.Load(); n != 0 {
			t.Errorf("server %s: InFlightBytes %d after the suite, want 0", h.addr, n)
		}
		if n := h.stats.SessionBuffers.Load(); n != 0 {
			t.Errorf("server %s: SessionBuffers %d after the suite, want 0", h.addr, n)
		}
		recv += h.stats.BytesRecv.Load()
	}
	for _, h := range e.all {
		h.sink.Forget() // test bookkeeping, not server memory
	}
	after := hostileHeap()
	growth := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	bound := int64(hostileHeapBound + hostileHeapPerServer*(len(e.all)-int(hostileNumProfiles)))
	if raceEnabled {
		// Under -race sync.Pool drops a share of what is put back and
		// the detector keeps state of its own: the figure doubles
		// without any input being kept. The plain run is the check.
		bound *= 2
	}
	t.Logf("HeapAlloc %d KiB before, %d KiB after: %+d KiB (bound %d KiB for %d servers of their own); HeapInuse %+d KiB; servers read %.1f MB from clients",
		before.HeapAlloc>>10, after.HeapAlloc>>10, growth>>10, bound>>10, len(e.all)-int(hostileNumProfiles),
		(int64(after.HeapInuse)-int64(before.HeapInuse))>>10, float64(recv)/1e6)
	if growth > bound {
		t.Errorf("heap grew by %d bytes over the suite, bound %d", growth, bound)
	}
}

// hostileStartStop runs a server and stops it.
func hostileStartStop(t *testing.T) {
	t.Helper()
	srv, err := New(Config{Listen: []string{"127.0.0.1:0"}, Sink: &smtptest.Recorder{}, EventLoops: 2, TickInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	srv.Addrs()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// hostileHeap is the heap after the garbage of the moment is gone. Two
// cycles: sync.Pool (bytebufferpool, gnet's buffers) keeps a victim
// cache for one.
func hostileHeap() runtime.MemStats {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms
}

// hostileConn is a client connection that reports instead of failing, so
// that the dialog can say which step and reply went wrong.
type hostileConn struct {
	*smtptest.Conn
	conn      net.Conn // the same connection, for writes a step shapes itself
	lastReply time.Time
	// sentAt is when the previous step began writing (the dial, before
	// the first): the server's timeout clock cannot have started before.
	sentAt time.Time
}

func (h *hostileServer) dial(t *testing.T, greeting bool) *hostileConn {
	t.Helper()
	start := time.Now()
	c := dialNoGreeting(t, h.addr)
	hc := &hostileConn{Conn: c.smtp, conn: c.conn, lastReply: time.Now(), sentAt: start}
	hc.Timeout = 10 * time.Second
	if greeting {
		lines, err := hc.reply()
		if err == nil {
			err = hostileMatch(lines, "220")
		}
		if err != nil {
			t.Fatalf("greeting: %v", err)
		}
		if lines[0] != "220 mx.test ESMTP" {
			t.Fatalf("greeting %q", lines[0])
		}
	}
	return hc
}

// reply reads one reply, multiline included.
func (c *hostileConn) reply() ([]string, error) {
	r, err := c.Read()
	if err == nil {
		c.lastReply = time.Now()
	}
	return r.Lines, err
}

// closed checks that the server closed the connection with nothing more
// to say.
func (c *hostileConn) closed() error { return c.WaitClosed(5 * time.Second) }

// enhancedCode matches an RFC 3463 status code.
var enhancedCode = regexp.MustCompile(`^[245]\.[0-9]{1,3}\.[0-9]{1,3}$`)

// hostileMatch checks a reply against "code", "code enhanced" or "code
// enhanced text-prefix". With a bare code, the reply must not carry an
// enhanced code (greeting, HELO/EHLO and 354 have none, RFC 2034 §3).
func hostileMatch(lines []string, want string) error {
	if len(lines) == 0 {
		return errors.New("empty reply")
	}
	bad := func() error { return fmt.Errorf("got %q, want %q", strings.Join(lines, " | "), want) }
	code, rest, _ := strings.Cut(want, " ")
	for i, l := range lines {
		sep := byte('-')
		if i == len(lines)-1 {
			sep = ' '
		}
		if len(l) < 4 || l[:3] != code || l[3] != sep {
			return bad()
		}
	}
	gotEnh, gotText, _ := strings.Cut(lines[len(lines)-1][4:], " ")
	if rest == "" {
		if enhancedCode.MatchString(gotEnh) {
			return bad()
		}
		return nil
	}
	wantEnh, wantText, _ := strings.Cut(rest, " ")
	if gotEnh != wantEnh || !strings.HasPrefix(gotText, wantText) {
		return bad()
	}
	return nil
}

// hostileDialog runs a case's steps on a new connection, then checks
// that the server closed it or that the sentinel's replies come next.
func hostileDialog(t *testing.T, h *hostileServer, id string, tc hostileCase) {
	t.Helper()
	c := h.dial(t, !tc.noGreeting)
	c.steps(t, id, tc.steps, tc.closed)
	if tc.closed {
		if err := c.closed(); err != nil {
			t.Fatalf("after the last step: %v", err)
		}
		return
	}
	c.steps(t, id, []hostileStep{hs("NOOP sentinel\r\n", "250 2.0.0"), hs("QUIT\r\n", "221 2.0.0")}, false)
	if err := c.closed(); err != nil {
		t.Fatalf("after QUIT: %v", err)
	}
}

// steps runs steps: each step's octets are written by a goroutine while
// the replies are read, so that a large write never waits on replies
// nobody reads. Write errors are expected when the server is to close.
func (c *hostileConn) steps(t *testing.T, id string, steps []hostileStep, closes bool) {
	t.Helper()
	for i, st := range steps {
		since := c.sentAt
		c.sentAt = time.Now()
		written := make(chan error, 1)
		go func() { written <- hostileWrite(c.conn, st, id) }()
		for j, want := range st.want {
			prev := c.lastReply
			lines, err := c.reply()
			if err == nil {
				err = hostileMatch(lines, want)
			}
			if err != nil {
				t.Fatalf("step %d (%q), reply %d of %d: %v", i, trim(hostileShow(st)), j+1, len(st.want), err)
			}
			if st.after > 0 && j == len(st.want)-1 {
				// Not early: the clock started after the previous step
				// began writing, or later. Not late: it started before
				// the previous reply was read. (From the previous reply
				// both ways, a client scheduled late reads "early".)
				if el := c.lastReply.Sub(since); el < st.after-20*time.Millisecond {
					t.Fatalf("step %d: %q came %v after the previous step began writing, want %v at least", i, lines, el, st.after)
				}
				if el := c.lastReply.Sub(prev); el > st.after+hostileLate {
					t.Fatalf("step %d: %q came %v after the previous reply, want %v (+%v at most)", i, lines, el, st.after, hostileLate)
				}
			}
		}
		if err := <-written; err != nil && !closes {
			t.Fatalf("step %d: write: %v", i, err)
		}
	}
}

func hostileShow(st hostileStep) string {
	if st.parts != nil {
		return strings.Join(st.parts, "")
	}
	return st.send
}

// hostileWrite writes a step's octets as the step asks.
func hostileWrite(conn net.Conn, st hostileStep, id string) error {
	_ = conn.SetWriteDeadline(time.Now().Add(15 * time.Second))
	parts := st.parts
	if parts == nil {
		parts = []string{st.send}
		if st.chunk > 0 {
			parts = nil
			for s := st.send; len(s) > 0; {
				n := min(st.chunk, len(s))
				parts = append(parts, s[:n])
				s = s[n:]
			}
		}
	}
	for i, p := range parts {
		if i > 0 && st.pause > 0 {
			time.Sleep(st.pause)
		}
		if _, err := conn.Write([]byte(strings.ReplaceAll(p, "{id}", id))); err != nil {
			return err
		}
	}
	if st.halfClose {
		return conn.(*net.TCPConn).CloseWrite()
	}
	return nil
}

// hostileCanary is the client that must keep being served: a whole
// transaction on a fresh connection, its message in the sink.
func hostileCanary(t *testing.T, h *hostileServer, id string) {
	t.Helper()
	cid := "canary." + id
	hostileDialog(t, h, cid, hostileCase{steps: []hostileStep{
		hs("EHLO {id}\r\nMAIL FROM:<canary@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n", "250", "250 2.1.0", "250 2.1.5", "354"),
		hs("canary {id}\r\n.\r\n", "250 2.0.0 OK queued as"),
	}})
	msgs := h.sink.ByHelo(cid)
	if len(msgs) != 1 || msgs[0].Content() != "canary "+cid+"\r\n" {
		t.Fatalf("canary: sink got %+v", msgs)
	}
}

// hostileClientHello is a real TLS ClientHello record, as a client that
// expects implicit TLS (port 465 style) sends it first.
func hostileClientHello(t *testing.T) string {
	t.Helper()
	a, b := net.Pipe()
	defer b.Close()
	go func() {
		_ = tls.Client(a, &tls.Config{ServerName: "mx.test", InsecureSkipVerify: true}).Handshake()
	}()
	defer a.Close()
	_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(b, hdr); err != nil {
		t.Fatalf("ClientHello: %v", err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(b, body); err != nil {
		t.Fatalf("ClientHello: %v", err)
	}
	if hdr[0] != 0x16 {
		t.Fatalf("ClientHello record type %#x", hdr[0])
	}
	return string(hdr) + string(body)
}

// hostileWaitFor polls cond for up to 5 s.
func hostileWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
