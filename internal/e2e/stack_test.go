package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/broker"
	"github.com/lsmtp/lsmtp/engine"
	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// The RabbitMQ every test talks to, and what the tests configure.
const (
	serverName     = "mx.e2e.test" // engine.Config.Hostname
	nodeName       = "e2e-node"    // broker.Config.Node
	maxMessageSize = 1 << 20       // small enough to test at the bound quickly
	ioTimeout      = 10 * time.Second
)

// deleteAtEnd deletes queues and exchanges when the test ends (a fresh
// channel each: a failed delete closes its channel).
func deleteAtEnd(t testing.TB, queues, exchanges []string) {
	t.Cleanup(func() {
		conn, err := amqp.Dial(rabbittest.URL)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer conn.Close()
		for _, q := range queues {
			if ch, err := conn.Channel(); err == nil {
				if _, err := ch.QueueDelete(q, false, false, false); err != nil {
					t.Logf("cleanup: delete queue %s: %v", q, err)
				}
				ch.Close()
			}
		}
		for _, x := range exchanges {
			if ch, err := conn.Channel(); err == nil {
				if err := ch.ExchangeDelete(x, false, false); err != nil {
					t.Logf("cleanup: delete exchange %s: %v", x, err)
				}
				ch.Close()
			}
		}
	})
}

// brokerConfig is broker.DefaultConfig with the test's own exchange and
// queue (deleted at the end), quick reconnects and a short confirm
// timeout.
func brokerConfig(t testing.TB, url string) broker.Config {
	cfg := quickConfig(t)
	name := rabbittest.UniqueName(t, "lsmtp-e2e")
	cfg.URLs = []string{url}
	cfg.Exchange = name
	cfg.Queue = name
	cfg.RoutingKey = "inbound"
	deleteAtEnd(t, []string{name}, []string{name})
	return cfg
}

// quickConfig is broker.DefaultConfig with quick reconnects, a short
// confirm timeout, the test node's name and the test's logger.
func quickConfig(t testing.TB) broker.Config {
	cfg := broker.DefaultConfig()
	cfg.ReconnectMin = 20 * time.Millisecond
	cfg.ReconnectMax = 300 * time.Millisecond
	cfg.ConfirmTimeout = 5 * time.Second
	cfg.DialTimeout = 2 * time.Second
	cfg.Node = nodeName
	cfg.Logger = rabbittest.Logger(t, slog.LevelInfo)
	return cfg
}

// stack is an in-process lsmtp: engine plus broker sink.
type stack struct {
	t    testing.TB
	srv  *engine.Server
	brk  *broker.Broker
	cfg  broker.Config
	addr string // SMTP listener

	stopOnce sync.Once
	stopErr  error
	served   chan error
}

// startStack starts a broker with bc and an engine in front of it on a
// free loopback port; both are stopped when the test ends. With
// waitReady it returns once the broker is connected.
func startStack(t testing.TB, bc broker.Config, waitReady bool, tweak ...func(*engine.Config)) *stack {
	t.Helper()
	brk, err := broker.New(bc)
	if err != nil {
		t.Fatal(err)
	}
	ec := engine.Config{
		Listen:         []string{"127.0.0.1:0"},
		Hostname:       serverName,
		MaxMessageSize: maxMessageSize,
		EventLoops:     2,
		Sink:           brk,
		Logger:         rabbittest.Logger(t, slog.LevelWarn),
	}
	for _, f := range tweak {
		f(&ec)
	}
	srv, err := engine.New(ec)
	if err != nil {
		brk.Close(context.Background())
		t.Fatal(err)
	}
	s := &stack{t: t, srv: srv, brk: brk, cfg: bc, served: make(chan error, 1)}
	go func() { s.served <- srv.Serve() }()
	addrs := srv.Addrs()
	if len(addrs) == 0 {
		brk.Close(context.Background())
		t.Fatalf("engine did not listen: %v", <-s.served)
	}
	s.addr = addrs[0].String()
	t.Cleanup(func() {
		if err := s.stop(10 * time.Second); err != nil {
			t.Errorf("stopping the stack: %v", err)
		}
	})
	if waitReady {
		s.waitReady(10 * time.Second)
	}
	return s
}

// waitReady waits until the broker is connected.
func (s *stack) waitReady(within time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(within)
	for !s.brk.Ready() {
		if time.Now().After(deadline) {
			s.t.Fatalf("broker not connected within %s", within)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The workers open their channels right after the connection is up.
	time.Sleep(50 * time.Millisecond)
}

// stop shuts down as cmd/lsmtp does: the engine first (transactions in
// flight finish), then the broker drains what it holds. Only the first
// call does anything.
func (s *stack) stop(timeout time.Duration) error {
	s.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		errShutdown := s.srv.Shutdown(ctx)
		if errShutdown != nil {
			errShutdown = fmt.Errorf("engine shutdown: %w", errShutdown)
		}
		errClose := s.brk.Close(ctx)
		if errClose != nil {
			errClose = fmt.Errorf("broker close: %w", errClose)
		}
		var errServe error
		select {
		case err := <-s.served:
			if err != nil {
				errServe = fmt.Errorf("serve: %w", err)
			}
		case <-time.After(5 * time.Second):
			errServe = fmt.Errorf("serve did not return 5 s after shutdown")
		}
		s.stopErr = joinErrs(errShutdown, errClose, errServe)
	})
	return s.stopErr
}

func joinErrs(errs ...error) error {
	var parts []string
	for _, e := range errs {
		if e != nil {
			parts = append(parts, e.Error())
		}
	}
	if len(parts) == 0 {
		return nil
	}
	return fmt.Errorf("%s", strings.Join(parts, "; "))
}

// session opens an SMTP session and says EHLO (or HELO) with helo.
func (s *stack) session(t testing.TB, helo string, ehlo bool) *smtptest.Conn {
	t.Helper()
	c, greet, err := smtptest.Dial(s.addr, ioTimeout)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if want := "220 " + serverName + " ESMTP"; greet.Last() != want {
		t.Fatalf("greeting %q, want %q", greet.String(), want)
	}
	verb := "HELO "
	if ehlo {
		verb = "EHLO "
	}
	if _, err := c.Expect(verb+helo, 250); err != nil {
		t.Fatal(err)
	}
	return c
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// The broker's own suite and this one share these with every test that
// talks to RabbitMQ.
var (
	consume  = rabbittest.Consume
	newProxy = rabbittest.Proxy
	proxyURL = rabbittest.ProxyURL
)
