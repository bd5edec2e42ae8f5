package e2e

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/engine"
	"github.com/lsmtp/lsmtp/sink"
)

// TestRestartOnSamePort: a server that stopped after serving clients can
// be started again on the same port at once, as a restart by systemd or
// a SIGTERM-and-start does. The server closes a connection first (after
// 221 to QUIT), which leaves the server's side of it in TIME_WAIT for a
// minute; a listener without SO_REUSEADDR cannot bind the port then.
//
// It fails as long as engine.Serve does not ask gnet for SO_REUSEADDR
// (gnet.WithReuseAddr(true)), so it runs only with
// LSMTP_E2E_KNOWN_BUGS=1 until that is fixed.
func TestRestartOnSamePort(t *testing.T) {
	if os.Getenv("LSMTP_E2E_KNOWN_BUGS") != "1" {
		t.Skip("known bug: engine listeners lack SO_REUSEADDR, a restart cannot bind while connections are in TIME_WAIT; LSMTP_E2E_KNOWN_BUGS=1 runs this test")
	}
	serve := func(listen string) (*engine.Server, chan error) {
		srv, err := engine.New(engine.Config{
			Listen: []string{listen}, Hostname: serverName, EventLoops: 1,
			Sink: &sink.Null{}, Logger: newLogger(t, slog.LevelWarn),
		})
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- srv.Serve() }()
		return srv, served
	}
	stop := func(srv *engine.Server, served chan error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		<-served
	}

	first, served := serve("127.0.0.1:0")
	addrs := first.Addrs()
	if len(addrs) == 0 {
		t.Fatalf("first server did not listen: %v", <-served)
	}
	addr := addrs[0].String()
	c, _, err := dialSMTP(addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.expect("QUIT", 221); err != nil {
		t.Fatal(err)
	}
	// Wait for the server's close, so that its side is in TIME_WAIT.
	if _, err := c.read(); err == nil {
		t.Fatal("connection still open after 221")
	}
	c.Close()
	stop(first, served)

	second, served := serve(addr)
	if len(second.Addrs()) == 0 {
		t.Fatalf("restart on %s: %v", addr, <-served)
	}
	defer stop(second, served)
	c, greet, err := dialSMTP(addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if greet.Code != 220 {
		t.Fatalf("greeting after restart: %q", greet.String())
	}
}
