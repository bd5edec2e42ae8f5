package e2e

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/engine"
	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/sink"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// TestRestartOnSamePort: a server that stopped after serving clients can
// be started again on the same port at once, as a restart by systemd or
// a SIGTERM-and-start does. The server closes a connection first (after
// 221 to QUIT), which leaves the server's side of it in TIME_WAIT for a
// minute; a listener without SO_REUSEADDR cannot bind the port then.
// engine.Serve asks gnet for SO_REUSEADDR for this.
func TestRestartOnSamePort(t *testing.T) {
	serve := func(listen string) (*engine.Server, chan error) {
		srv, err := engine.New(engine.Config{
			Listen: []string{listen}, Hostname: serverName, EventLoops: 1,
			Sink: &sink.Null{}, Logger: rabbittest.Logger(t, slog.LevelWarn),
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
	c, _, err := smtptest.Dial(addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Expect("QUIT", 221); err != nil {
		t.Fatal(err)
	}
	// Wait for the server's close, so that its side is in TIME_WAIT.
	if _, err := c.Read(); err == nil {
		t.Fatal("connection still open after 221")
	}
	c.Close()
	stop(first, served)

	second, served := serve(addr)
	if len(second.Addrs()) == 0 {
		t.Fatalf("restart on %s: %v", addr, <-served)
	}
	defer stop(second, served)
	c, greet, err := smtptest.Dial(addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if greet.Code != 220 {
		t.Fatalf("greeting after restart: %q", greet.String())
	}
}

// TestNoConnectionLeftHangingAtStop: a client that connects while the
// server stops gets a greeting (421 while draining), or its connection
// is closed or refused; none is accepted and then left without a byte.
//
// gnet closes its listeners only after its event loops exited
// (engine_unix.go, engine.stop), so a connection accepted in those
// ~500 ms is never served nor closed: the client waits for its own
// timeout (RFC 5321 §4.5.3.2.1: 5 minutes for the greeting) or for the
// process to exit, and an embedding program leaks the descriptor. The
// engine therefore stops the listening sockets itself before gnet's Stop
// (shutdown(2) with SHUT_RD on a DupListener descriptor acts on the
// shared socket).
func TestNoConnectionLeftHangingAtStop(t *testing.T) {
	s := startStack(t, brokerConfig(t, rabbittest.URL), true)
	stopDialing := make(chan struct{})
	var hung, greeted atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 10000; n++ {
				select {
				case <-stopDialing:
					return
				default:
				}
				c, err := net.DialTimeout("tcp", s.addr, time.Second)
				if err != nil {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				var b [1]byte
				_, err = c.Read(b[:])
				var ne net.Error
				switch {
				case err == nil:
					greeted.Add(1)
				case errors.As(err, &ne) && ne.Timeout():
					hung.Add(1)
				}
				c.Close()
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	if err := s.stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond) // every hanging read times out
	close(stopDialing)
	wg.Wait()
	if greeted.Load() == 0 {
		t.Fatal("no client was greeted before the stop: the test proves nothing")
	}
	if n := hung.Load(); n > 0 {
		t.Errorf("%d connections made while the server stopped got neither a byte nor a close within 2 s", n)
	}
}
