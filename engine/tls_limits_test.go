package engine

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// readRecorder keeps every octet read through it.
type readRecorder struct {
	net.Conn
	mu  sync.Mutex
	got []byte
}

func (r *readRecorder) Read(b []byte) (int, error) {
	n, err := r.Conn.Read(b)
	r.mu.Lock()
	r.got = append(r.got, b[:n]...)
	r.mu.Unlock()
	return n, err
}

// expectSilentClose sends a ClientHello on conn, as a client of an
// implicit-TLS port does, and checks that the server closes without a
// byte: a reply in the clear is what such a client cannot read (it takes
// it for a broken record).
func expectSilentClose(t *testing.T, conn net.Conn, conf *tls.Config, what string) {
	t.Helper()
	rr := &readRecorder{Conn: conn}
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	err := tls.Client(rr, conf).Handshake()
	if err == nil {
		t.Fatalf("%s: handshake completed, want the connection closed", what)
	}
	if len(rr.got) > 0 {
		t.Fatalf("%s: server sent %q before closing, want nothing", what, rr.got)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: %v: the server did not close", what, err)
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("%s: handshake ended with %v, want EOF or a reset", what, err)
	}
}

// TestImplicitTLSRefusedSilently: a connection refused at accept on
// --listen-tls (max-conns, per-IP, denied, rate, behind a PROXY header,
// shutting down) is closed without a word, while the same refusal on
// --listen is the 421 or 554 in the clear that a plaintext client reads.
func TestImplicitTLSRefusedSilently(t *testing.T) {
	t.Run("max-conns", func(t *testing.T) {
		ts := startTLSServer(t, Config{MaxConns: 1})
		c := dialTLS(t, ts.implicit, ts.clientTLS())
		expectSilentClose(t, rawDial(t, ts.implicit), ts.clientTLS(), "past max-conns")
		dialNoGreeting(t, ts.plain).expect("421 4.7.0")
		c.do("QUIT", "221 ")
		waitFor(t, func() bool { return ts.srv.Stats().Refusals(RefusedMaxConns) == 2 })
	})
	t.Run("per-ip", func(t *testing.T) {
		ts := startTLSServer(t, Config{MaxConnsPerIP: 1})
		c := dialTLS(t, ts.implicit, ts.clientTLS())
		expectSilentClose(t, rawDial(t, ts.implicit), ts.clientTLS(), "past max-conns-per-ip")
		dialNoGreeting(t, ts.plain).expect("421 4.7.0")
		c.do("QUIT", "221 ")
		waitFor(t, func() bool { return ts.srv.Stats().Open.Load() == 0 })
		dialTLS(t, ts.implicit, ts.clientTLS()).do("QUIT", "221 ") // the slot came back
		if got := ts.srv.Stats().Refusals(RefusedPerIP); got != 2 {
			t.Errorf("per-IP refusals %d, want 2", got)
		}
	})
	t.Run("denied", func(t *testing.T) {
		ts := startTLSServer(t, Config{Policy: &countingPolicy{deny: mustAddr("127.0.0.9"), maxConns: 100}})
		expectSilentClose(t, dialFrom(t, "127.0.0.9", ts.implicit).conn, ts.clientTLS(), "denied client")
		dialFrom(t, "127.0.0.9", ts.plain).expect("554 5.7.1")
		dialTLS(t, ts.implicit, ts.clientTLS()).do("QUIT", "221 ")
		if got := ts.srv.Stats().Refusals(RefusedDenied); got != 2 {
			t.Errorf("denied refusals %d, want 2", got)
		}
	})
	t.Run("rate", func(t *testing.T) {
		ts := startTLSServer(t, Config{Policy: &countingPolicy{maxConns: 0}})
		expectSilentClose(t, rawDial(t, ts.implicit), ts.clientTLS(), "past the connection rate")
		dialNoGreeting(t, ts.plain).expect("421 4.7.0")
		if got := ts.srv.Stats().Refusals(RefusedRate); got != 2 {
			t.Errorf("rate refusals %d, want 2", got)
		}
	})
	t.Run("proxy-per-ip", func(t *testing.T) {
		ts := startTLSServer(t, Config{TrustedProxies: loopbackProxies(), MaxConnsPerIP: 1})
		first := dialNoGreeting(t, ts.implicit)
		first.send("PROXY TCP4 192.0.2.1 127.0.0.2 1000 465\r\n")
		first.startTLS(ts.clientTLS())
		first.expect("220 mx.test ESMTP")
		second := rawDial(t, ts.implicit)
		_, err := second.Write([]byte("PROXY TCP4 192.0.2.1 127.0.0.2 1001 465\r\n"))
		mustf(t, err, "PROXY header")
		expectSilentClose(t, second, ts.clientTLS(), "past max-conns-per-ip behind PROXY")
		plain := dialNoGreeting(t, ts.plain)
		plain.send("PROXY TCP4 192.0.2.1 127.0.0.1 1002 25\r\n")
		plain.expect("421 4.7.0")
		waitFor(t, func() bool { return ts.srv.Stats().Refusals(RefusedPerIP) == 2 })
	})
	t.Run("draining", func(t *testing.T) {
		ts := startTLSServer(t, Config{})
		// A transaction in flight keeps the server draining, not stopped.
		c := dial(t, ts.plain)
		c.do("EHLO client.test", "250 ")
		c.do("MAIL FROM:<a@client.test>", "250 2.1.0")
		done := make(chan error, 1)
		go func() {
			ctx, cancel := contextWithTimeout(5 * time.Second)
			defer cancel()
			done <- ts.srv.Shutdown(ctx)
		}()
		waitFor(t, func() bool { return ts.srv.draining.Load() })
		expectSilentClose(t, rawDial(t, ts.implicit), ts.clientTLS(), "while draining")
		dialNoGreeting(t, ts.plain).expect("421 4.3.2")
		c.do("RSET", "250 ")
		c.expect("421 4.3.2")
		mustf(t, <-done, "Shutdown")
		if got := ts.srv.Stats().Refusals(RefusedDraining); got != 2 {
			t.Errorf("draining refusals %d, want 2", got)
		}
	})
}
