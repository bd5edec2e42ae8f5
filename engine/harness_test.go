package engine

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// startServer runs a server on 127.0.0.1:0 for one test. Zero fields of
// cfg take test-friendly values (fast ticker, two loops, a recording sink).
func startServer(t testing.TB, cfg Config) (*Server, string) {
	t.Helper()
	if cfg.Listen == nil {
		cfg.Listen = []string{"127.0.0.1:0"}
	}
	if cfg.Hostname == "" {
		cfg.Hostname = "mx.test"
	}
	if cfg.Sink == nil {
		cfg.Sink = &smtptest.Recorder{}
	}
	if cfg.TickInterval == 0 {
		cfg.TickInterval = 20 * time.Millisecond
	}
	if cfg.EventLoops == 0 {
		cfg.EventLoops = 2
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	addrs := srv.Addrs()
	if len(addrs) == 0 {
		t.Fatalf("Serve: %v", <-served)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		select {
		case <-served:
		case <-time.After(5 * time.Second):
			t.Errorf("Serve did not return after Shutdown")
		}
	})
	return srv, addrs[0].String()
}

// client speaks SMTP line by line for dialog tests; any failure ends
// the test.
type client struct {
	t    testing.TB
	conn net.Conn
	smtp *smtptest.Conn // on conn
}

// dial connects and reads the greeting.
func dial(t testing.TB, addr string) *client {
	t.Helper()
	c := dialNoGreeting(t, addr)
	c.expect("220 mx.test ESMTP")
	return c
}

func dialNoGreeting(t testing.TB, addr string) *client {
	t.Helper()
	return dialFrom(t, "", addr)
}

// dialFrom connects from a chosen loopback source address (any of
// 127.0.0.0/8), without reading the greeting.
func dialFrom(t testing.TB, source, addr string) *client {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if source != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(source)}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return &client{t: t, conn: conn, smtp: smtptest.NewConn(conn, 20*time.Second)}
}

func (c *client) send(s string) {
	c.t.Helper()
	if err := c.smtp.Write([]byte(s)); err != nil {
		c.t.Fatalf("write %q: %v", trim(s), err)
	}
}

// reply reads one whole reply, multiline included, and returns its lines.
func (c *client) reply() []string {
	c.t.Helper()
	r, err := c.smtp.Read()
	if err != nil {
		c.t.Fatalf("reading reply: %v", err)
	}
	return r.Lines
}

// expect reads one reply and checks that its last line starts with want
// (e.g. "250 2.1.0").
func (c *client) expect(want string) string {
	c.t.Helper()
	lines := c.reply()
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, want) {
		c.t.Fatalf("got reply %q, want %q...", strings.Join(lines, " | "), want)
	}
	return last
}

// do sends one command line and checks its reply.
func (c *client) do(line, want string) string {
	c.t.Helper()
	c.send(line + "\r\n")
	return c.expect(want)
}

// expectClosed checks that the server closed the connection.
func (c *client) expectClosed() {
	c.t.Helper()
	if err := c.smtp.WaitClosed(5 * time.Second); err != nil {
		c.t.Fatal(err)
	}
}

func trim(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}

func mustf(t testing.TB, err error, format string, a ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(format, a...), err)
	}
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
