package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lsmtp/lsmtp/internal/metrics"
)

// adminMaxConns bounds the admin listener's connections. Every connection
// is a descriptor, and the engine keeps only max(nofile/50, 64) of them
// in reserve past its connection limit (engine.capConnsToFileLimit) for
// listeners, epoll, RabbitMQ and this listener: 16 connections plus the
// listening socket fit in the smallest reserve with room for the rest.
// Without the cap, keep-alive /healthz clients used up the reserve and
// gnet's accept failed with EMFILE, stopping the SMTP server.
const adminMaxConns = 16

// adminTimeouts bound how long one admin connection may hold its slot.
// The write timeout leaves room for /debug/pprof/profile and trace,
// which run for the seconds asked (30 by default) and fail outright when
// the timeout is shorter.
var adminTimeouts = struct{ header, read, write, idle time.Duration }{
	header: 5 * time.Second, read: 10 * time.Second, write: 90 * time.Second, idle: 30 * time.Second,
}

// adminHandler serves the operator's endpoints:
//
//	/healthz       200 while the process runs (liveness)
//	/readyz        200 while listening and connected to the broker, else 503 (readiness)
//	/metrics       Prometheus metrics
//	/debug/pprof/  Go profiles; cmdline with secrets masked
//
// The listener is meant for 127.0.0.1 or a management network: pprof
// can take CPU time (config check warns about other addresses).
func (n *node) adminHandler(reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := n.ready()
		if !ok {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.Handle("GET /metrics", metrics.Handler(reg))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	// pprof.Cmdline would show an --amqp-password or a URL's password.
	mux.HandleFunc("/debug/pprof/cmdline", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, strings.Join(redactArgs(os.Args), "\x00"))
	})
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// startAdmin binds the admin listener at once, so that a taken port is a
// start-up error rather than a log line.
func (n *node) startAdmin(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	n.adminAddr = ln.Addr()
	col := metrics.NewCollector(metrics.Sources{Engine: n.srv.Stats(), Config: n.srv.Config, Broker: n.brokerStats()})
	t := adminTimeouts
	n.admin = &http.Server{
		Handler:           n.adminHandler(metrics.NewRegistry(col)),
		ReadHeaderTimeout: t.header,
		ReadTimeout:       t.read,
		WriteTimeout:      t.write,
		IdleTimeout:       t.idle,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelWarn),
	}
	go func() {
		if err := n.admin.Serve(newLimitListener(ln, adminMaxConns)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("admin listener failed", "addr", addr, "err", err)
		}
	}()
	return nil
}

// limitListener holds at most cap connections open: the next one is not
// accepted until one closes, and waits in the kernel's backlog, costing
// this process no descriptor.
type limitListener struct {
	net.Listener
	slots     chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func newLimitListener(ln net.Listener, cap int) *limitListener {
	return &limitListener{Listener: ln, slots: make(chan struct{}, cap), done: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: c, release: sync.OnceFunc(func() { <-l.slots })}, nil
}

func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// limitConn gives its slot back when closed, once.
type limitConn struct {
	net.Conn
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}
