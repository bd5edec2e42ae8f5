package engine

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/sink"
)

// Benchmarks of the engine alone: the sink stores nothing (sink.Null).
//
//	go test -run '^$' -bench . -benchtime 20000x ./engine
//
// BenchmarkNullSink goes over real TCP on loopback; its clients share the
// process (and the 2 cores) with the server. msgs/s is messages per
// second of wall time over all clients. allocs/msg and B/msg come from
// runtime.MemStats deltas over the run divided by messages: they count
// the whole process, since b.ReportAllocs cannot tell the server's
// allocations from the clients'. The clients are written not to allocate
// once connected (fixed buffers, prebuilt commands), so the figure is the
// server's (gnet and the session) plus one dial and its buffers per
// benchPerConn messages.

const (
	benchClients = 50  // concurrent client connections
	benchPerConn = 100 // messages per connection before QUIT and a new one
	benchBody    = 2048
)

var (
	benchEHLO     = []byte("EHLO bench.client.test\r\n")
	benchEnvelope = []byte("MAIL FROM:<sender@bench.test>\r\nRCPT TO:<rcpt@bench.test>\r\nDATA\r\n")
	benchMail     = []byte("MAIL FROM:<sender@bench.test>\r\n")
	benchRcpt     = []byte("RCPT TO:<rcpt@bench.test>\r\n")
	benchData     = []byte("DATA\r\n")
	benchQuit     = []byte("QUIT\r\n")
)

// benchMessage is a 2 KB message with its final dot, in wire form.
func benchMessage() []byte {
	return append(allocBody(benchBody), "\r\n.\r\n"...)
}

// benchConn is an SMTP client connection that does not allocate once
// connected: it reads replies into a fixed buffer and checks codes in place.
type benchConn struct {
	conn net.Conn
	buf  [16 << 10]byte
	r, w int // unread replies are buf[r:w]
}

func dialBench(addr string) (*benchConn, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	c := &benchConn{conn: conn}
	if err := c.expect("220"); err != nil {
		conn.Close()
		return nil, err
	}
	if err := c.send(benchEHLO, "250"); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

func (c *benchConn) write(b []byte) error {
	_, err := c.conn.Write(b)
	return err
}

// send writes b and checks the one reply to it.
func (c *benchConn) send(b []byte, code string) error {
	if err := c.write(b); err != nil {
		return err
	}
	return c.expect(code)
}

// expect reads one reply, multiline included, and checks its code.
func (c *benchConn) expect(code string) error {
	for {
		line, err := c.line()
		if err != nil {
			return err
		}
		if len(line) < 4 {
			return fmt.Errorf("short reply line %q", line)
		}
		if line[3] == '-' {
			continue
		}
		if string(line[:3]) != code {
			return fmt.Errorf("reply %q, want %s", line, code)
		}
		return nil
	}
}

// expectAll checks several replies to one pipelined write.
func (c *benchConn) expectAll(codes ...string) error {
	for _, code := range codes {
		if err := c.expect(code); err != nil {
			return err
		}
	}
	return nil
}

func (c *benchConn) line() ([]byte, error) {
	for {
		if i := bytes.IndexByte(c.buf[c.r:c.w], '\n'); i >= 0 {
			line := c.buf[c.r : c.r+i+1]
			c.r += i + 1
			return line, nil
		}
		if c.r > 0 {
			c.w = copy(c.buf[:], c.buf[c.r:c.w])
			c.r = 0
		}
		if c.w == len(c.buf) {
			return nil, errors.New("reply line too long")
		}
		n, err := c.conn.Read(c.buf[c.w:])
		if n == 0 && err != nil {
			return nil, err
		}
		c.w += n
	}
}

// runNullSinkClient sends messages while take grants them, benchPerConn
// per connection, one command per round trip or pipelined.
func runNullSinkClient(addr string, pipelining bool, take func() bool, msg, msgThenEnvelope, msgThenQuit []byte) error {
	for take() {
		c, err := dialBench(addr)
		if err != nil {
			return err
		}
		if pipelining {
			err = pipelinedConn(c, benchPerConn, take, msgThenEnvelope, msgThenQuit)
		} else {
			err = lockstepConn(c, take, msg)
		}
		c.conn.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// lockstepConn: MAIL, RCPT, DATA, body each wait for their reply.
func lockstepConn(c *benchConn, take func() bool, msg []byte) error {
	for sent := 0; ; {
		for _, step := range [...]struct {
			b    []byte
			code string
		}{{benchMail, "250"}, {benchRcpt, "250"}, {benchData, "354"}, {msg, "250"}} {
			if err := c.send(step.b, step.code); err != nil {
				return err
			}
		}
		if sent++; sent == benchPerConn || !take() {
			return c.send(benchQuit, "221")
		}
	}
}

// pipelinedConn (RFC 2920): MAIL+RCPT+DATA in one write; then each body
// goes out with the next envelope (or QUIT) behind it: one round trip per
// message, perConn messages per connection (the first already taken).
func pipelinedConn(c *benchConn, perConn int, take func() bool, msgThenEnvelope, msgThenQuit []byte) error {
	if err := c.write(benchEnvelope); err != nil {
		return err
	}
	if err := c.expectAll("250", "250", "354"); err != nil {
		return err
	}
	for sent := 1; ; sent++ {
		if sent >= perConn || !take() {
			if err := c.write(msgThenQuit); err != nil {
				return err
			}
			return c.expectAll("250", "221")
		}
		if err := c.write(msgThenEnvelope); err != nil {
			return err
		}
		if err := c.expectAll("250", "250", "250", "354"); err != nil {
			return err
		}
	}
}

func BenchmarkNullSink(b *testing.B) {
	msg := benchMessage()
	msgThenEnvelope := append(append([]byte(nil), msg...), benchEnvelope...)
	msgThenQuit := append(append([]byte(nil), msg...), benchQuit...)
	for _, pipelining := range []bool{false, true} {
		name := "pipelining=off"
		if pipelining {
			name = "pipelining=on"
		}
		b.Run(name, func(b *testing.B) {
			ns := &sink.Null{}
			_, addr := startServer(b, Config{Sink: ns})
			var left atomic.Int64
			left.Store(int64(b.N))
			take := func() bool { return left.Add(-1) >= 0 }

			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for range min(benchClients, b.N) {
				wg.Go(func() {
					if err := runNullSinkClient(addr, pipelining, take, msg, msgThenEnvelope, msgThenQuit); err != nil {
						b.Error(err)
						left.Store(0) // stop the others
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			runtime.ReadMemStats(&after)

			if got := ns.Messages(); got != int64(b.N) && !b.Failed() {
				b.Fatalf("sink got %d messages, sent %d", got, b.N)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
			b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(b.N), "allocs/msg")
			b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/float64(b.N), "B/msg")
		})
	}
}

// BenchmarkSessionMemConn is the session alone: one whole transaction per
// iteration through the memConn harness, no sockets, no gnet. "one read"
// is a pipelining client's transaction arriving in one read; "read per
// command" gives MAIL, RCPT, DATA and the body a callback each.
func BenchmarkSessionMemConn(b *testing.B) {
	msg := benchMessage()
	txn := append(append([]byte(nil), benchEnvelope...), msg...)
	for _, perCommand := range []bool{false, true} {
		name := "one read"
		if perCommand {
			name = "read per command"
		}
		b.Run(name, func(b *testing.B) {
			ns := &sink.Null{}
			h := newMemHarness(b, Config{Sink: ns}, true)
			h.pass(benchEHLO)
			b.ReportAllocs()
			b.SetBytes(int64(len(txn)))
			b.ResetTimer()
			for range b.N {
				if perCommand {
					h.pass(benchMail)
					h.pass(benchRcpt)
					h.pass(benchData)
					h.pass(msg)
				} else {
					h.pass(txn)
				}
			}
			b.StopTimer()
			if got := ns.Messages(); got != int64(b.N) || h.closed {
				b.Fatalf("sink got %d messages of %d (closed: %v)", got, b.N, h.closed)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
