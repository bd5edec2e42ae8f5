package chaos

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// phases tells which fault the time of an event belongs to: the fault in
// progress, or the one that ended less than settle ago, or none.
type phases struct {
	current atomic.Int32 // Fault+1; 0 for none
	until   atomic.Int64 // Unix ns the current phase lasts at least until
}

const settle = 2 * time.Second

func (p *phases) begin(f Fault) {
	p.current.Store(int32(f) + 1)
	p.until.Store(time.Now().Add(24 * time.Hour).UnixNano())
}

func (p *phases) end() { p.until.Store(time.Now().Add(settle).UnixNano()) }

// at returns the fault index (numFaults for none) for an event now.
func (p *phases) at(now time.Time) int {
	c := p.current.Load()
	if c == 0 || now.UnixNano() > p.until.Load() {
		return int(numFaults)
	}
	return int(c - 1)
}

// tally counts what happened to the generator's attempts in one phase.
type tally struct {
	Acked     int            // 250
	Tempfails map[string]int // final 4xx, by code and enhanced code
	Permfails map[string]int // final 5xx: lsmtp must never give one for its own trouble
	NoReply   int            // the body went out, the connection broke before the reply
	ConnErrs  map[string]int // connect, greeting and session failures, by kind
}

func newTally() tally {
	return tally{Tempfails: map[string]int{}, Permfails: map[string]int{}, ConnErrs: map[string]int{}}
}

// ledger is the generator's record: the queue ID of every 250 and what
// went wrong, per phase.
type ledger struct {
	mu      sync.Mutex
	acked   map[string]ackInfo // queue ID -> the message acknowledged under it
	byPhase [numFaults + 1]tally
	sent    atomic.Int64 // attempts, for the progress line
}

type ackInfo struct {
	token string
	at    time.Time
}

func newLedger() *ledger {
	l := &ledger{acked: make(map[string]ackInfo, 1<<16)}
	for i := range l.byPhase {
		l.byPhase[i] = newTally()
	}
	return l
}

func (l *ledger) ack(phase int, id, token string, at time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if prev, dup := l.acked[id]; dup {
		return fmt.Errorf("queue ID %s acknowledged twice (tokens %s and %s)", id, prev.token, token)
	}
	l.acked[id] = ackInfo{token: token, at: at}
	l.byPhase[phase].Acked++
	return nil
}

func (l *ledger) note(phase int, f func(*tally)) {
	l.mu.Lock()
	f(&l.byPhase[phase])
	l.mu.Unlock()
}

// generator runs the SMTP sessions.
type generator struct {
	cfg    *Config
	addr   func() string // where lsmtp listens now
	ledger *ledger
	phases *phases
	// problems are impossible events seen by the sessions (a queue ID
	// acknowledged twice, a 250 without an ID).
	problems chan string
}

// run starts cfg.Sessions sessions and returns when all ended (deadline
// or ctx).
func (g *generator) run(ctx context.Context, deadline time.Time) {
	var wg sync.WaitGroup
	for i := 0; i < g.cfg.Sessions; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.session(ctx, i, deadline)
		}()
	}
	wg.Wait()
}

// session sends messages, PerConn per connection, until the deadline. A
// message answered 4xx or left without a reply is sent again with the
// same token on the next attempt, as an MTA would; every 250 moves on to
// a new token.
func (g *generator) session(ctx context.Context, id int, deadline time.Time) {
	const ioTimeout = 30 * time.Second
	var interval time.Duration
	if g.cfg.Rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(g.cfg.Sessions) / g.cfg.Rate)
	}
	next := time.Now()
	seq := 0
	var c *smtptest.Conn
	pipe := false // the server offered PIPELINING (RFC 2920)
	onConn := 0
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	connErr := func(kind string) {
		g.ledger.note(g.phases.at(time.Now()), func(t *tally) { t.ConnErrs[kind]++ })
		if c != nil {
			c.Close()
			c = nil
		}
		sleepCtx(ctx, 20*time.Millisecond)
	}
	for ctx.Err() == nil && time.Now().Before(deadline) {
		if c == nil {
			conn, greet, err := smtptest.Dial(g.addr(), ioTimeout)
			switch {
			case err != nil:
				connErr(connErrKind("connect", err))
				continue
			case greet.Code != 220:
				conn.Close()
				connErr("greeting " + greet.Class())
				continue
			}
			c = conn
			r, err := c.Cmd(fmt.Sprintf("EHLO gen%d.chaos.invalid", id))
			if err != nil || r.Code != 250 {
				connErr(connErrKind("EHLO", err))
				continue
			}
			pipe = r.HasExtension("PIPELINING")
			onConn = 0
		}
		if interval > 0 {
			next = next.Add(interval)
			if d := time.Until(next); d > 0 {
				sleepCtx(ctx, d)
			} else if d < -time.Second {
				next = time.Now() // do not make up for a long stall in a burst
			}
		}
		token := fmt.Sprintf("s%03d-%07d", id, seq)
		o := c.Transact("chaos@generator.invalid", []string{fmt.Sprintf("rcpt%d@lsmtp.invalid", id)}, messageBody(token, g.cfg.Size), g.cfg.Pipelining && pipe)
		g.ledger.sent.Add(1)
		now := time.Now()
		phase := g.phases.at(now)
		switch {
		case o.Err != nil && o.BodySent:
			g.ledger.note(phase, func(t *tally) { t.NoReply++ })
			c.Close()
			c = nil
			continue
		case o.Err != nil:
			connErr(connErrKind("session", o.Err))
			continue
		case o.Final.Code == 250:
			qid, ok := o.Final.QueueID()
			if !ok {
				g.problem(fmt.Sprintf("250 without a queue ID: %q", o.Final.Last()))
				break
			}
			if err := g.ledger.ack(phase, qid, token, now); err != nil {
				g.problem(err.Error())
			}
			seq++
		case o.Final.Code >= 400 && o.Final.Code < 500:
			g.ledger.note(phase, func(t *tally) { t.Tempfails[o.Final.Class()]++ })
			if o.Final.Code == 421 {
				c.Close() // the server closes after 421 (RFC 5321 §3.8)
				c = nil
				continue
			}
			sleepCtx(ctx, 10*time.Millisecond)
		default:
			g.ledger.note(phase, func(t *tally) { t.Permfails[o.Final.Last()]++ })
			sleepCtx(ctx, 10*time.Millisecond)
		}
		onConn++
		if onConn >= g.cfg.PerConn {
			c.Cmd("QUIT")
			c.Close()
			c = nil
		}
	}
	if c != nil {
		c.Cmd("QUIT")
	}
}

func (g *generator) problem(s string) {
	select {
	case g.problems <- s:
	default: // enough already reported
	}
}

// connErrKind names a failure briefly for the summary.
func connErrKind(stage string, err error) string {
	switch {
	case err == nil:
		return stage + " refused"
	case errors.Is(err, smtptest.ErrNoReply):
		return stage + ": closed without a reply"
	case isRefused(err):
		return stage + ": connection refused"
	case isReset(err):
		return stage + ": connection reset"
	case isTimeout(err):
		return stage + ": timeout"
	}
	return stage + ": other error"
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
