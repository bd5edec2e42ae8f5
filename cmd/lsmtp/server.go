package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"reflect"
	"runtime/debug"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lsmtp/lsmtp/broker"
	"github.com/lsmtp/lsmtp/engine"
	"github.com/lsmtp/lsmtp/internal/metrics"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// node is a running lsmtp: the SMTP server, its sink, the admin listener.
type node struct {
	args []string  // the command line, read again on reload
	env  lookupEnv // the variables, read again on reload

	// boot is the configuration the process started with: what the
	// restart-only options still are. cur is the one in force; only the
	// goroutine running wait replaces it.
	boot *config
	cur  atomic.Pointer[config]

	log   *slog.Logger
	level *slog.LevelVar

	srv    *engine.Server
	sk     sink.Sink
	brk    *broker.Broker // nil with the null sink
	served chan error     // Serve's result

	admin     *http.Server // nil without --admin-listen
	adminAddr net.Addr

	serving  atomic.Bool // listening: set once Serve bound, cleared when it returns
	stopping atomic.Bool // shutdown began: /readyz fails so balancers drain us
	reloads  atomic.Int64
}

// start loads the configuration and starts serving. It returns once the
// SMTP listeners and the admin listener are bound.
func start(args []string, env lookupEnv, stderr io.Writer) (*node, error) {
	c, err := loadConfig(args, env, stderr)
	if err != nil {
		return nil, err
	}
	if len(c.args) > 0 {
		return nil, fmt.Errorf("unexpected argument %q", c.args[0])
	}
	log, level, err := newLogger(c.o, stderr)
	if err != nil {
		return nil, err
	}
	c.logWarnings(log)
	raiseFileLimit(log)
	setMemoryLimit(c.o.eng.MaxInFlightBytes, env, log)

	n := &node{args: args, env: env, boot: c, log: log, level: level, served: make(chan error, 1)}
	n.cur.Store(c)
	n.sk = &sink.Null{}
	if c.o.sink == broker.SinkAMQP || c.o.sink == broker.SinkNATS {
		// broker.New does not wait for the broker: with it down the
		// server still starts and answers DATA with 451 until it is up.
		bc := c.o.brk
		bc.Sink = c.o.sink
		if bc.Node == "" {
			bc.Node = c.o.eng.Hostname
		}
		bc.Logger = log
		// Every connection may have one message in the sink: room for
		// all of them means a full hand-off ring never refuses mail.
		bc.MaxWaiting = engine.ConnLimit(c.o.eng.MaxConns)
		bc.MaxMessageSize = c.o.eng.MaxMessageSize
		if n.brk, err = broker.New(bc); err != nil {
			return nil, err
		}
		n.sk = n.brk
	}
	closeSink := func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		n.sk.Close(ctx)
	}

	ec := c.o.eng
	ec.Sink, ec.Logger = n.sk, log
	if ec.Policy, err = c.o.newPolicy(); err != nil {
		closeSink()
		return nil, err
	}
	if n.srv, err = engine.New(ec); err != nil {
		closeSink()
		return nil, err
	}
	go func() {
		err := n.srv.Serve()
		n.serving.Store(false)
		n.served <- err
	}()
	addrs := n.srv.Addrs()
	if len(addrs) == 0 {
		closeSink()
		return nil, fmt.Errorf("listening: %w", <-n.served)
	}
	n.serving.Store(true)

	if c.o.adminListen != "" {
		if err := n.startAdmin(c.o.adminListen); err != nil {
			n.stop(time.Second)
			return nil, err
		}
	}
	log.Info("listening", "addrs", addrs, "admin", n.adminAddr, "hostname", c.o.eng.Hostname, "sink", c.o.sink,
		"config", c.o.configFile)
	return n, nil
}

// brokerStats is the broker for the metrics, nil (not a nil *Broker in
// an interface) without one.
func (n *node) brokerStats() metrics.BrokerStats {
	if n.brk == nil {
		return nil
	}
	return n.brk
}

// ready is /readyz: listening, not shutting down, and connected to the
// broker or with a spool that takes mail (a 250 from the spool is as good
// as one from RabbitMQ). The reason is for the operator reading the 503.
func (n *node) ready() (bool, string) {
	switch {
	case n.stopping.Load():
		return false, "shutting down"
	case !n.serving.Load():
		return false, "not listening"
	case n.brk != nil && !n.brk.Ready() && !n.brk.SpoolTaking():
		if n.brk.Stats().Spool {
			return false, "broker not connected, and the spool takes no mail (full or failing)"
		}
		return false, "broker not connected"
	}
	return true, "ok"
}

// wait serves until SIGINT/SIGTERM (then shuts down gracefully) or until
// the server fails; SIGHUP reloads.
func (n *node) wait(sig chan os.Signal) error {
	for {
		select {
		case err := <-n.served:
			n.stop(time.Second)
			if err == nil {
				return errors.New("server stopped unexpectedly")
			}
			return fmt.Errorf("server stopped: %w", err)
		case s := <-sig:
			if s == syscall.SIGHUP {
				n.reload()
				continue
			}
			n.log.Info("shutting down", "signal", s.String(), "timeout", n.cur.Load().o.shutdownTimeout)
			signal.Stop(sig) // a second signal kills at once
			n.stop(n.cur.Load().o.shutdownTimeout)
			return nil
		}
	}
}

// reload reads the configuration file again and puts the result in force
// without dropping connections; the command line and the variables are
// layered over it as at start. On any problem nothing changes.
func (n *node) reload() error {
	c, err := loadConfig(n.args, n.env, io.Discard)
	if err == nil && len(c.args) > 0 {
		err = fmt.Errorf("unexpected argument %q", c.args[0])
	}
	if err != nil {
		n.log.Error("reload failed; configuration unchanged", "err", err)
		return err
	}
	c.logWarnings(n.log)
	ec := c.o.eng
	ec.Sink = n.sk
	// A new policy starts every client with full rate buckets: keep the
	// running one unless its settings changed.
	prev := n.cur.Load()
	if reflect.DeepEqual(prev.o.pol, c.o.pol) {
		ec.Policy = n.srv.Config().Policy
	} else if ec.Policy, err = c.o.newPolicy(); err != nil {
		n.log.Error("reload failed; configuration unchanged", "err", err)
		return err
	}
	engineRestart, err := n.srv.Reload(ec)
	if err != nil {
		n.log.Error("reload failed; configuration unchanged", "err", err)
		return err
	}
	changed := changedKeys(prev, c, false)
	// Restart-only options are compared with what the process started
	// with: a change stays reported on every reload until the restart.
	restart := changedKeys(n.boot, c, true)
	for _, k := range engineRestart {
		if !slices.Contains(restart, k) {
			restart = append(restart, k)
		}
	}
	slices.Sort(restart)
	n.cur.Store(c)
	n.reloads.Add(1)
	n.log.Info("configuration reloaded", "changed", changed, "config", c.o.configFile)
	if len(restart) > 0 {
		n.log.Warn("options changed that only a restart applies; running values kept", "options", restart)
	}
	// The level changes last, so that the lines above get out at the
	// level they were asked for under.
	var level slog.Level
	if level.UnmarshalText([]byte(c.o.logLevel)) == nil {
		n.level.Set(level)
	}
	return nil
}

// stop shuts down: no new connections or transactions, transactions in
// flight finish within timeout, then the sink drains what it holds, then
// the admin listener closes.
func (n *node) stop(timeout time.Duration) {
	n.stopping.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := n.srv.Shutdown(ctx); err != nil {
		n.log.Warn("shutdown deadline passed; remaining sessions got 421", "err", err)
	}
	// The sink drains after the sessions: whatever it still holds is
	// confirmed or failed before we exit.
	sctx, scancel := context.WithTimeout(context.Background(), timeout)
	defer scancel()
	if err := n.sk.Close(sctx); err != nil {
		n.log.Warn("sink did not drain", "err", err)
	}
	if n.admin != nil {
		actx, acancel := context.WithTimeout(context.Background(), time.Second)
		defer acancel()
		n.admin.Shutdown(actx)
	}
	st := n.srv.Stats()
	attrs := []any{"accepted_conns", st.Accepted.Load()}
	for _, o := range engine.Outcomes() {
		attrs = append(attrs, "messages_"+o.String(), st.MessagesBy(o))
	}
	n.log.Info("stopped", attrs...)
}

// memoryHeadroom is what the soft memory limit allows above the in-flight
// budget: the runtime, gnet's buffers, sessions and pooled buffers.
const memoryHeadroom = 128 << 20

// setMemoryLimit makes the garbage collector keep the heap near the bytes
// really held (GOMEMLIMIT semantics, runtime/debug.SetMemoryLimit), unless
// GOMEMLIMIT is set. Without it the heap may grow to twice the in-flight
// budget before a collection runs; with it, 100 clients sending 4 MiB at
// once against a 64 MiB budget peaked at 107 MiB RSS instead of 253 MiB
// (stress.TestMemoryBudget). It is soft: past it the collector works
// harder (capped at half the CPU by the runtime), nothing fails.
func setMemoryLimit(inFlight int64, env lookupEnv, log *slog.Logger) {
	if _, set := env("GOMEMLIMIT"); set {
		return
	}
	limit := inFlight + memoryHeadroom
	debug.SetMemoryLimit(limit)
	log.Debug("soft memory limit set", "bytes", limit)
}
