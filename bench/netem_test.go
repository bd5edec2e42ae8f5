package bench

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// stampServer accepts connections; for each one it writes a greeting
// stamped with its send time, then for every line it receives writes back
// the line's own stamp, its arrival time and its send time, and, on "burst
// k", k stamped lines 2 ms apart.
type stampServer struct {
	ln   net.Listener
	base time.Time
	wg   sync.WaitGroup
}

func newStampServer(t *testing.T, base time.Time) *stampServer {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &stampServer{ln: ln, base: base}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serve(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); s.wg.Wait() })
	return s
}

func (s *stampServer) now() int64 { return int64(time.Since(s.base)) }

func (s *stampServer) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "greet %d\n", s.now())
	buf := make([]byte, 0, 4096)
	tmp := make([]byte, 4096)
	for {
		n, err := c.Read(tmp)
		if err != nil {
			return
		}
		arrived := s.now()
		buf = append(buf, tmp[:n]...)
		for {
			i := bytes.IndexByte(buf, '\n')
			if i < 0 {
				break
			}
			line := string(buf[:i])
			buf = buf[i+1:]
			var k int
			var sent int64
			if _, err := fmt.Sscanf(line, "burst %d", &k); err == nil {
				for j := 0; j < k; j++ {
					fmt.Fprintf(c, "chunk %d %d\n", j, s.now())
					time.Sleep(2 * time.Millisecond)
				}
				continue
			}
			if _, err := fmt.Sscanf(line, "ping %d", &sent); err == nil {
				fmt.Fprintf(c, "pong %d %d %d\n", sent, arrived, s.now())
			}
			if line == "bye" {
				return
			}
		}
	}
}

// recorder is a Handler that runs a script of steps on each line.
type recorder struct {
	t       *testing.T
	mu      sync.Mutex
	started int64
	lines   []string
	at      []int64
	onLine  func(c *Conn, line string)
	closed  error
	pending []byte
}

func (r *recorder) Start(c *Conn) {
	r.started = c.Now()
	c.Dial()
}

func (r *recorder) Data(c *Conn, b []byte) {
	now := c.Now()
	r.pending = append(r.pending, b...)
	for {
		i := bytes.IndexByte(r.pending, '\n')
		if i < 0 {
			return
		}
		line := string(r.pending[:i])
		r.pending = r.pending[i+1:]
		r.lines = append(r.lines, line)
		r.at = append(r.at, now)
		if r.onLine != nil {
			r.onLine(c, line)
		}
	}
}

func (r *recorder) Closed(c *Conn, err error) {
	r.closed = err
	c.Done()
}

func runLoop(t *testing.T, rtt time.Duration, h Handler, base time.Time, addr net.Addr) {
	t.Helper()
	target := netip.MustParseAddrPort(addr.String())
	l, err := NewLoop(NetConfig{RTT: rtt}, base)
	if err != nil {
		t.Fatal(err)
	}
	l.Add(h, target, 0, 0)
	done := make(chan error, 1)
	go func() { done <- l.Run() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		l.Stop(l.Now())
		<-done
		t.Fatal("loop did not finish within 10s")
	}
}

// The greeting reaches the client two round trips after Dial; every ping
// reaches the server at least RTT/2 after Send and its pong the client at
// least RTT/2 after the server wrote it.
func TestDelayEachWay(t *testing.T) {
	const rtt = 40 * time.Millisecond
	half := int64(rtt / 2)
	base := time.Now()
	srv := newStampServer(t, base)
	pings := 0
	var sentAt []int64
	r := &recorder{t: t}
	r.onLine = func(c *Conn, line string) {
		if pings == 5 {
			c.Write([]byte("bye\n"))
			c.Send()
			return
		}
		now := c.Now()
		sentAt = append(sentAt, now)
		c.Write(fmt.Appendf(nil, "ping %d\n", now))
		c.Send()
		pings++
	}
	runLoop(t, rtt, r, base, srv.ln.Addr())

	if len(r.lines) != 6 {
		t.Fatalf("got %d lines %q, want greeting and 5 pongs", len(r.lines), r.lines)
	}
	var greetSent int64
	if _, err := fmt.Sscanf(r.lines[0], "greet %d", &greetSent); err != nil {
		t.Fatalf("first line %q", r.lines[0])
	}
	if d := r.at[0] - r.started; d < 2*int64(rtt) {
		t.Errorf("greeting after %v, want at least 2 RTT (%v)", time.Duration(d), 2*rtt)
	}
	if d := r.at[0] - greetSent; d < half {
		t.Errorf("greeting delayed %v, want at least %v", time.Duration(d), rtt/2)
	}
	for i, line := range r.lines[1:] {
		var sent, arrived, replied int64
		if _, err := fmt.Sscanf(line, "pong %d %d %d", &sent, &arrived, &replied); err != nil {
			t.Fatalf("line %q", line)
		}
		if sent != sentAt[i] {
			t.Errorf("pong %d answers ping sent at %d, want %d (order)", i, sent, sentAt[i])
		}
		if d := arrived - sent; d < half {
			t.Errorf("ping %d reached the server after %v, want at least %v", i, time.Duration(d), rtt/2)
		}
		if d := r.at[i+1] - replied; d < half {
			t.Errorf("pong %d reached the client after %v, want at least %v", i, time.Duration(d), rtt/2)
		}
		// Only a sanity bound above: a busy machine adds delay, never
		// removes it.
		if d := r.at[i+1] - sent; d > int64(rtt)+int64(time.Second) {
			t.Errorf("round trip %d took %v, want about %v", i, time.Duration(d), rtt)
		}
	}
}

// Chunks the server writes 2 ms apart reach the client in order, each
// RTT/2 after it was written, not serialised behind each other's delay:
// the whole burst takes about RTT/2 plus its own length, not k × RTT/2.
func TestBurstIsNotSerialised(t *testing.T) {
	const rtt = 100 * time.Millisecond
	const k = 20
	half := int64(rtt / 2)
	base := time.Now()
	srv := newStampServer(t, base)
	r := &recorder{t: t}
	r.onLine = func(c *Conn, line string) {
		if len(r.lines) == 1 {
			c.Write(fmt.Appendf(nil, "burst %d\n", k))
			c.Send()
		}
		if len(r.lines) == k+1 {
			c.Write([]byte("bye\n"))
			c.Send()
		}
	}
	runLoop(t, rtt, r, base, srv.ln.Addr())

	if len(r.lines) != k+1 {
		t.Fatalf("got %d lines, want %d", len(r.lines), k+1)
	}
	var first, last int64
	for i, line := range r.lines[1:] {
		var j int
		var written int64
		if _, err := fmt.Sscanf(line, "chunk %d %d", &j, &written); err != nil {
			t.Fatalf("line %q", line)
		}
		if j != i {
			t.Errorf("chunk %d arrived as number %d (order)", j, i)
		}
		if d := r.at[i+1] - written; d < half {
			t.Errorf("chunk %d delayed %v, want at least %v", j, time.Duration(d), rtt/2)
		}
		if i == 0 {
			first = written
		}
		last = r.at[i+1]
	}
	// k chunks written over about 2k ms; serialised delays would take k × RTT/2 = 1 s.
	if span := time.Duration(last - first); span > rtt/2+time.Duration(k)*2*time.Millisecond+250*time.Millisecond {
		t.Errorf("burst took %v from first write to last delivery: chunks wait behind each other", span)
	}
}

// Without latency the loop passes bytes straight through.
func TestNoDelay(t *testing.T) {
	base := time.Now()
	srv := newStampServer(t, base)
	r := &recorder{t: t}
	n := 0
	r.onLine = func(c *Conn, line string) {
		n++
		if n > 100 {
			c.Write([]byte("bye\n"))
		} else {
			c.Write(fmt.Appendf(nil, "ping %d\n", c.Now()))
		}
		c.Send()
	}
	runLoop(t, 0, r, base, srv.ln.Addr())
	if len(r.lines) != 101 {
		t.Fatalf("got %d lines, want 101", len(r.lines))
	}
	if r.closed != ErrServerClosed {
		t.Errorf("closed with %v, want %v", r.closed, ErrServerClosed)
	}
}

// A refused connection is reported to the handler, not retried by the loop.
func TestConnectRefused(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr()
	ln.Close()
	r := &recorder{t: t}
	runLoop(t, 10*time.Millisecond, r, time.Now(), addr)
	if r.closed == nil || r.closed == ErrServerClosed {
		t.Fatalf("closed with %v, want a connection refused error", r.closed)
	}
	_ = io.EOF
}
