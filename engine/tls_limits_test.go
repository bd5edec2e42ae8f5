package engine

import (
	"crypto/tls"
	"errors"
	"fmt"
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

// TestHandshakeFloodFromOneClient: one client opens more stalling TLS
// connections than the server has handshake slots. It holds
// MaxHandshakesPerIP of them; the rest wait for a slot of their client's
// (holding none of the server's) and are closed (per_ip), and a canary
// from another client gets its handshake at once and its 250. Over IPv6
// the client is its /64 (IPv6Prefix), named here by PROXY headers.
func TestHandshakeFloodFromOneClient(t *testing.T) {
	const flood, perIP = 12, 2
	for _, tc := range []struct {
		name          string
		flood, canary func(i int) (source, header string) // header: a PROXY header to send first
	}{
		{"ipv4",
			func(int) (string, string) { return "127.0.0.1", "" },
			func(int) (string, string) { return "127.0.0.5", "" }},
		{"ipv6-prefix",
			func(i int) (string, string) {
				return "", fmt.Sprintf("PROXY TCP6 2001:db8:1:2::%x 2001:db8::25 4000 465\r\n", i+1)
			},
			func(int) (string, string) { return "", "PROXY TCP6 2001:db8:1:3::1 2001:db8::25 4000 465\r\n" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{MaxHandshakes: 4, MaxHandshakesPerIP: perIP, HandshakeTimeout: 5 * time.Second, MaxConnsPerIP: 100}
			if _, header := tc.canary(0); header != "" {
				cfg.TrustedProxies = loopbackProxies()
			}
			ts := startTLSServer(t, cfg)
			var conns []net.Conn
			for i := range flood {
				source, header := tc.flood(i)
				c := dialFrom(t, source, ts.implicit)
				if header != "" {
					c.send(header)
				}
				conns = append(conns, c.conn)
			}
			st := &ts.srv.Stats().TLS
			waitFor(t, func() bool { return len(ts.srv.tls.handshakes) == perIP })
			// The flood holds its slots for HandshakeTimeout; the canary
			// comes while it does.
			source, header := tc.canary(0)
			c := dialFrom(t, source, ts.implicit)
			if header != "" {
				c.send(header)
			}
			c.startTLS(ts.clientTLS())
			c.expect("220 mx.test ESMTP")
			c.do("EHLO canary.test", "250 ")
			c.do("MAIL FROM:<a@canary.test>", "250 2.1.0")
			c.do("RCPT TO:<b@mx.test>", "250 2.1.5")
			c.do("DATA", "354 ")
			c.send("canary\r\n.\r\n")
			c.expect("250 2.0.0")
			c.do("QUIT", "221 ")
			waitFor(t, func() bool { return st.HandshakeFailed[HandshakePerIP].Load() == flood-perIP })
			if got := len(ts.srv.tls.handshakes); got != perIP {
				t.Errorf("%d server slots held, want the flood's %d", got, perIP)
			}
			if got := st.HandshakeFailed[HandshakeBusy].Load(); got != 0 {
				t.Errorf("%d handshakes found no server slot, want 0", got)
			}
			m := waitMessages(t, ts.rec, 1)[0]
			if m.TLSVersion != "TLS 1.3" {
				t.Errorf("canary's message TLS %q, want TLS 1.3", m.TLSVersion)
			}
			for _, conn := range conns {
				conn.Close()
			}
			waitFor(t, func() bool { return ts.srv.Stats().Open.Load() == 0 })
			ts.srv.tls.perIP.mu.Lock()
			left := len(ts.srv.tls.perIP.m)
			ts.srv.tls.perIP.mu.Unlock()
			if left != 0 {
				t.Errorf("%d clients left in the per-IP handshake map, want none", left)
			}
		})
	}
}
