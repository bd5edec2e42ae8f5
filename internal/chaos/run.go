package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/internal/faultproxy"
)

// FaultEvent is one fault injected.
type FaultEvent struct {
	Kind   Fault
	Start  time.Time
	Took   time.Duration // from the start of the fault to full recovery of the component
	Detail string
	Err    error
	// Recovered is how long after the fault ended the next 250 came; -1
	// when none came before the load ended.
	Recovered time.Duration
}

// Summary is the outcome of a run.
type Summary struct {
	Config      Config
	Name        string // exchange and queue
	Elapsed     time.Duration
	Attempts    int64
	Phases      [numFaults + 1]tally // by the fault an event fell in; the last is "none"
	Faults      []FaultEvent
	Match       Match
	LSMTPStarts int
	LogPath     string // lsmtp's log, kept when the run failed
	Problems    []string
	Interrupted bool
}

// Failed reports whether the run broke lsmtp's promise or could not
// show it kept it.
func (s *Summary) Failed() bool {
	t := s.total()
	return s.Match.Lost > 0 || t.permfails() > 0 || len(s.Problems) > 0 || s.Match.Acknowledged == 0
}

// run is the state of one run.
type run struct {
	cfg    Config
	log    io.Writer
	proxy  *faultproxy.Proxy
	rabbit *RabbitApp
	runner *lsmtpRunner
	proc   *process
	ledger *ledger
	phases phases

	mu  sync.Mutex // guards sum's Faults and Problems, written by the schedule and read by progress
	sum *Summary
}

func (r *run) logf(format string, args ...any) {
	fmt.Fprintf(r.log, "lsmtp-chaos: "+format+"\n", args...)
}

func (r *run) problem(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.mu.Lock()
	r.sum.Problems = append(r.sum.Problems, msg)
	r.mu.Unlock()
	r.logf("PROBLEM: %s", msg)
}

func (r *run) faultCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sum.Faults)
}

// Run performs a chaos run (see the package comment). It returns an
// error when the run could not be set up; otherwise the Summary says
// what happened, and Summary.Failed whether lsmtp broke its promise.
// RabbitMQ's application is running again when Run returns, whether the
// run succeeded, failed or was cancelled through ctx.
func Run(ctx context.Context, cfg Config) (*Summary, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	r := &run{cfg: cfg, log: cfg.Log, ledger: newLedger()}
	if r.log == nil {
		r.log = io.Discard
	}
	name := cfg.Name
	if name == "" {
		name = fmt.Sprintf("lsmtp-chaos.%08x", rand.Uint32())
	}
	r.sum = &Summary{Config: cfg, Name: name}
	directURL := cfg.amqpURL(cfg.RabbitAddr)
	r.rabbit = NewRabbitApp(directURL)
	// Whatever happens from here on, RabbitMQ runs again at the end.
	defer func() {
		if err := r.rabbit.Restore(2 * time.Minute); err != nil {
			r.problem("restoring RabbitMQ: %v", err)
		}
	}()

	if err := WaitAMQP(directURL, 10*time.Second); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "lsmtp-chaos-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if r.sum.Failed() && r.runner != nil {
			r.sum.LogPath = r.runner.logPath
			return
		}
		os.RemoveAll(work)
	}()
	bin := cfg.LSMTP
	if bin == "" {
		r.logf("building lsmtp")
		if bin, err = buildLSMTP(ctx, cfg.ModuleDir, work); err != nil {
			return nil, err
		}
	}
	if r.proxy, err = faultproxy.New(cfg.RabbitAddr); err != nil {
		return nil, err
	}
	defer r.proxy.Close()
	smtpAddr, err := freePort()
	if err != nil {
		return nil, err
	}
	r.runner = &lsmtpRunner{bin: bin, logPath: work + "/lsmtp.log", args: append([]string{
		"--hostname", "chaos.lsmtp.invalid",
		"--node", "chaos",
		"--sink", "amqp",
		"--amqp-url", cfg.amqpURL(r.proxy.Addr()),
		"--exchange", name,
		"--queue", name,
		"--routing-key", "inbound",
		"--admin-listen=",
		"--shutdown-timeout", cfg.ShutdownTimeout.String(),
		"--confirm-timeout", cfg.ConfirmTimeout.String(),
		"--amqp-reconnect-min", "50ms",
		"--amqp-reconnect-max", "1s",
		"--max-conns-per-ip", "0",
		"--log-level", "warn",
	}, cfg.ExtraArgs...)}
	if !cfg.KeepQueue {
		defer func() {
			if err := deleteTopology(directURL, name); err != nil {
				r.problem("cleanup: %v", err)
			}
		}()
	}
	// Deferred calls run last first: RabbitMQ must be back before the
	// topology can be deleted. restore does nothing when it runs already.
	defer func() {
		if err := r.rabbit.Restore(2 * time.Minute); err != nil {
			r.problem("restoring RabbitMQ: %v", err)
		}
	}()

	if r.proc, err = r.runner.start(smtpAddr, 30*time.Second); err != nil {
		return nil, err
	}
	defer func() {
		if r.proc != nil && r.proc.alive() {
			r.proc.kill()
		}
		r.sum.LSMTPStarts = r.runner.starts
	}()
	// lsmtp declares the queue once it is connected.
	for start := time.Now(); ; time.Sleep(50 * time.Millisecond) {
		if ok, _ := queueExists(directURL, name); ok {
			break
		}
		if time.Since(start) > 30*time.Second {
			return nil, fmt.Errorf("lsmtp did not declare queue %s within 30 s; see %s", name, r.runner.logPath)
		}
	}
	r.logf("lsmtp on %s, broker through %s, queue %s; %s of load, %d sessions, faults %v every %s",
		smtpAddr, r.proxy.Addr(), name, cfg.Duration, cfg.Sessions, cfg.Faults, cfg.FaultInterval)

	r.load(ctx)
	r.wrapUp()
	r.sum.Interrupted = ctx.Err() != nil
	return r.sum, nil
}

// load runs the generator and the fault schedule side by side.
func (r *run) load(ctx context.Context) {
	start := time.Now()
	deadline := start.Add(r.cfg.Duration)
	loadCtx, cancelLoad := context.WithCancel(ctx)
	defer cancelLoad()
	gen := &generator{cfg: &r.cfg, addr: r.runner.addr, ledger: r.ledger, phases: &r.phases, problems: make(chan string, 100)}
	genDone := make(chan struct{})
	go func() {
		gen.run(loadCtx, deadline)
		close(genDone)
	}()
	faultsDone := make(chan struct{})
	go func() {
		defer close(faultsDone)
		if !r.schedule(loadCtx, start, deadline) {
			cancelLoad() // a component did not come back: nothing left to learn
		}
	}()
	progress := time.NewTicker(10 * time.Second)
	defer progress.Stop()
loop:
	for {
		select {
		case <-genDone:
			break loop
		case <-progress.C:
			r.ledger.mu.Lock()
			acked := len(r.ledger.acked)
			t := r.ledger.totalLocked()
			r.ledger.mu.Unlock()
			r.logf("%4.0fs: %d attempts, %d acknowledged, %d tempfails, %d without reply, %d connection errors, %d faults",
				time.Since(start).Seconds(), r.ledger.sent.Load(), acked, sum(t.Tempfails), t.NoReply, sum(t.ConnErrs), r.faultCount())
		}
	}
	cancelLoad()
	<-faultsDone
	r.sum.Elapsed = time.Since(start)
	r.sum.Attempts = r.ledger.sent.Load()
	close(gen.problems)
	for p := range gen.problems {
		r.problem("%s", p)
	}
}

// schedule injects the faults in turn, FaultInterval apart, none in the
// last interval before deadline. It returns false when a component could
// not be brought back.
func (r *run) schedule(ctx context.Context, start, deadline time.Time) bool {
	if len(r.cfg.Faults) == 0 {
		return true
	}
	next := start.Add(r.cfg.FaultInterval)
	for i := 0; ; i++ {
		sleepCtx(ctx, time.Until(next))
		if ctx.Err() != nil || !time.Now().Before(deadline.Add(-r.cfg.FaultInterval)) {
			return true
		}
		ev := r.inject(ctx, r.cfg.Faults[i%len(r.cfg.Faults)])
		r.mu.Lock()
		r.sum.Faults = append(r.sum.Faults, ev)
		r.mu.Unlock()
		if ev.Err != nil {
			r.problem("%s fault at %s: %v", ev.Kind, ev.Start.Sub(start).Round(time.Millisecond), ev.Err)
			if ev.Kind != FaultCut {
				return false
			}
		}
		r.logf("fault %s done in %s%s", ev.Kind, ev.Took.Round(time.Millisecond), detail(ev.Detail))
		// The next fault comes FaultInterval after this one began, but
		// never before the load had a moment to recover.
		next = ev.Start.Add(r.cfg.FaultInterval)
		if min := time.Now().Add(settle); next.Before(min) {
			next = min
		}
	}
}

func detail(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

// inject performs one fault and brings the component back.
func (r *run) inject(ctx context.Context, f Fault) FaultEvent {
	ev := FaultEvent{Kind: f, Start: time.Now(), Recovered: -1}
	r.phases.begin(f)
	defer r.phases.end()
	switch f {
	case FaultCut:
		n := r.proxy.Conns()
		if r.cfg.CutOutage > 0 {
			r.proxy.Down()
			sleepCtx(ctx, r.cfg.CutOutage)
			ev.Err = r.proxy.Up()
		} else {
			n = r.proxy.Cut()
		}
		ev.Detail = strconv.Itoa(n) + " broker connections cut"
	case FaultRabbitRestart:
		if err := r.rabbit.StopApp(); err != nil {
			ev.Err = err
		}
		sleepCtx(ctx, r.cfg.RabbitOutage)
		if err := r.rabbit.Restore(2 * time.Minute); err != nil {
			ev.Err = errors.Join(ev.Err, err)
		}
	case FaultLSMTPRestart:
		stopErr := r.proc.stop(r.cfg.ShutdownTimeout + 10*time.Second)
		down := time.Now()
		listen := r.runner.addr()
		if !r.cfg.SamePort {
			listen, _ = freePort()
		}
		var startErr error
		r.proc, startErr = r.runner.start(listen, 30*time.Second)
		if errors.Is(startErr, errAddrInUse) {
			// A restart on the same port must work (SO_REUSEADDR): the
			// old process's connections linger in TIME_WAIT. Report it,
			// and go on elsewhere so that the run still checks for loss.
			r.problem("%v: lsmtp cannot be restarted on its port while its old connections are in TIME_WAIT", startErr)
			if listen, startErr = freePort(); startErr == nil {
				r.proc, startErr = r.runner.start(listen, 30*time.Second)
			}
		}
		ev.Err = errors.Join(stopErr, startErr)
		ev.Detail = fmt.Sprintf("drained in %s, new process greeting on %s after %s", down.Sub(ev.Start).Round(time.Millisecond), listen, time.Since(down).Round(time.Millisecond))
	}
	ev.Took = time.Since(ev.Start)
	return ev
}

// wrapUp restores everything, stops lsmtp gracefully, consumes the queue
// and matches it.
func (r *run) wrapUp() {
	if err := r.proxy.Up(); err != nil {
		r.problem("proxy: %v", err)
	}
	r.proxy.Resume()
	if err := r.rabbit.Restore(2 * time.Minute); err != nil {
		r.problem("restoring RabbitMQ: %v", err)
	}
	if r.proc != nil {
		if !r.proc.alive() {
			r.problem("lsmtp exited on its own: %v", r.proc.err)
		} else if err := r.proc.stop(r.cfg.ShutdownTimeout + 10*time.Second); err != nil {
			r.problem("final shutdown: %v", err)
		}
	}

	r.ledger.mu.Lock()
	acked := r.ledger.acked
	r.sum.Phases = r.ledger.byPhase
	r.ledger.mu.Unlock()
	r.recoveries(acked)

	col := newCollector()
	within := 2*time.Minute + time.Duration(len(acked))*time.Millisecond
	n, err := drainQueue(r.rabbit.url, r.sum.Name, 2*time.Second, within, func(d amqp.Delivery) { col.add(d.MessageId, d.Body) })
	if err != nil {
		r.problem("consuming the queue: %v", err)
	}
	r.logf("consumed %d messages", n)
	r.sum.Match = col.match(acked)
	if r.sum.Match.Lost > 0 {
		r.problem("%d acknowledged messages are not in the queue, e.g. %v", r.sum.Match.Lost, r.sum.Match.LostIDs)
	}
	if t := r.sum.total(); t.permfails() > 0 {
		p := t.permfails()
		r.problem("%d messages answered 5xx", p)
	}
	if r.sum.Match.Acknowledged == 0 {
		r.problem("no message was acknowledged: the run shows nothing")
	}
}

// recoveries fills FaultEvent.Recovered: the wait from the end of each
// fault to the next 250.
func (r *run) recoveries(acked map[string]ackInfo) {
	for i := range r.sum.Faults {
		ev := &r.sum.Faults[i]
		end := ev.Start.Add(ev.Took)
		for _, a := range acked {
			if d := a.at.Sub(end); d >= 0 && (ev.Recovered < 0 || d < ev.Recovered) {
				ev.Recovered = d
			}
		}
	}
}

// freePort returns a loopback address free at the moment.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
