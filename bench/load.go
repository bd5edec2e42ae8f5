// Package bench is lsmtp's load generator and benchmark suite: many SMTP
// sessions over an emulated network path (netem.go), checked against what
// reached RabbitMQ, written up as BENCHMARKS.md.
package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"runtime"
	"sort"
	"sync"
	"syscall"
	"time"
)

// LoadConfig is one load run.
type LoadConfig struct {
	Targets    []string      // server addresses, IPv4 host:port; sessions are spread over them
	Sessions   int           // concurrent SMTP sessions
	RTT        time.Duration // emulated round-trip time, 0 for none
	PerConn    int           // messages per connection (1: connect, EHLO, MAIL, RCPT, DATA, QUIT each time)
	Pipelining bool          // RFC 2920, when the server advertises it
	Chunking   bool          // RFC 3030 BDAT with pipelining, when advertised
	Size       int           // message size in octets
	Recipients int           // RCPT TO per message

	Duration time.Duration // measurement window
	Count    int64         // if > 0: stop after this many messages instead
	Ramp     time.Duration // session starts are spread over this; default one message cycle
	Warmup   time.Duration // from the end of the ramp to the window; default one message cycle
	Drain    time.Duration // how long sessions may take to finish after the window

	Loops        int           // epoll loops per process; default GOMAXPROCS
	PerSource    int           // sessions per client address; default 60% of the ephemeral port range
	ReplyTimeout time.Duration // a reply later than this ends the connection
	// Processes splits the sessions over this many generator processes;
	// 0 picks as few as the open file limit allows (every connection is
	// a descriptor, and the hard limit may be out of reach).
	Processes int
	// WorkerCommand runs one generator process (reading its share on
	// stdin, see WorkerMain); default: this executable with "worker".
	WorkerCommand []string `json:"-"`

	// Progress, if set, is called about once a second.
	Progress func(Progress) `json:"-"`
	// WindowStart and WindowEnd, if set, are called when the measurement
	// window opens and closes (to sample the server, capture profiles).
	WindowStart func() `json:"-"`
	WindowEnd   func() `json:"-"`
}

// Progress is a snapshot for the progress line.
type Progress struct {
	Elapsed   time.Duration
	Phase     string // "ramp", "warmup", "measure", "drain"
	OK        int64
	Failed    int64
	Errors    int64
	Connected int64 // connections opened so far
}

// LoadResult is what a run measured.
type LoadResult struct {
	Config LoadConfig `json:"-"`

	OK       int64 // final 2xx over the whole run
	Tempfail int64 // final 4xx
	Permfail int64 // final 5xx
	Lost     int64 // connection lost after the message was sent: outcome unknown
	Errors   int64 // connection and protocol errors (Lost included)
	ErrKinds map[string]int64
	Conns    int64 // connections opened
	Flights  int64 // client writes: all but the last of a connection wait a round trip for a reply
	NoPipe   int64 // connections where PIPELINING was asked for and not offered
	NoChunk  int64 // same for CHUNKING

	WindowOK int64
	Window   time.Duration
	Rate     float64 // messages/s in the window

	// RoundTrips is the round trips per message the protocol needs, with
	// connect, greeting and the wait for 221 counted; Bound is the
	// throughput they allow: Sessions / (RoundTrips * RTT).
	RoundTrips float64
	Bound      float64

	Latency   Percentiles
	GenCPU    float64 // cores used by the generator during the window
	Processes int     // generator processes
}

// RoundTrips is the round trips per message of cfg's dialogue over a whole
// connection, divided by its messages (see LoadResult.RoundTrips):
//   - plain: connect, greeting, EHLO, then MAIL, each RCPT, DATA and the
//     body per message, then QUIT;
//   - pipelining: connect, greeting, EHLO, MAIL+RCPT+DATA, then one per
//     body, which carries the next MAIL+RCPT+DATA or the QUIT;
//   - chunking: connect, greeting, EHLO, then one per MAIL+RCPT+BDAT
//     LAST, the last one with QUIT.
func RoundTrips(cfg LoadConfig) float64 {
	k := float64(max(cfg.PerConn, 1))
	r := float64(max(cfg.Recipients, 1))
	switch {
	case cfg.Pipelining && cfg.Chunking:
		return (3 + k) / k
	case cfg.Pipelining:
		return (4 + k) / k
	default:
		return (4 + k*(3+r)) / k
	}
}

func (cfg *LoadConfig) setDefaults() error {
	if cfg.Sessions <= 0 {
		return errors.New("bench: sessions must be positive")
	}
	if cfg.Duration <= 0 && cfg.Count <= 0 {
		return errors.New("bench: need a duration or a count")
	}
	if cfg.Size <= 0 {
		cfg.Size = 2048
	}
	cfg.Recipients = max(cfg.Recipients, 1)
	cfg.PerConn = max(cfg.PerConn, 1)
	cycle := time.Duration(RoundTrips(*cfg) * float64(cfg.PerConn) * float64(cfg.RTT))
	if cfg.Ramp <= 0 {
		// At least one connect per 50 µs: a burst of SYNs overflows the
		// listen backlog and costs a retransmit of a second or more.
		cfg.Ramp = max(cycle, time.Duration(cfg.Sessions)*50*time.Microsecond)
	}
	if cfg.Warmup <= 0 {
		cfg.Warmup = max(cycle, time.Second)
	}
	if cfg.Drain <= 0 {
		cfg.Drain = 2*cycle + 10*time.Second
	}
	if cfg.Loops <= 0 {
		cfg.Loops = runtime.GOMAXPROCS(0)
	}
	cfg.Loops = min(cfg.Loops, cfg.Sessions)
	if cfg.PerSource <= 0 {
		cfg.PerSource = EphemeralPorts() * 6 / 10
	}
	if cfg.ReplyTimeout <= 0 {
		cfg.ReplyTimeout = 60*time.Second + 4*cfg.RTT
	}
	if len(cfg.Targets) == 0 {
		return errors.New("bench: no target")
	}
	if cfg.Processes <= 0 {
		cfg.Processes = (cfg.Sessions + sessionsPerProcess() - 1) / sessionsPerProcess()
	}
	cfg.Processes = min(cfg.Processes, cfg.Sessions)
	return nil
}

// sessionsPerProcess is how many connections one generator process can
// hold under its hard open file limit, with room for everything else.
func sessionsPerProcess() int {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil || l.Max > 1<<30 {
		return 1 << 30
	}
	return max(int(l.Max)-2048, 1000)
}

func parseTargets(list []string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, t := range list {
		ap, err := netip.ParseAddrPort(t)
		if err != nil || !ap.Addr().Is4() {
			return nil, fmt.Errorf("bench: target %q: want IPv4 host:port", t)
		}
		out = append(out, ap)
	}
	return out, nil
}

// Run drives the load described by cfg and reports what it measured. It
// stops early, with what it has, when ctx is cancelled. When one process
// cannot hold all sessions it starts worker processes (see WorkerMain) and
// merges what they measured.
func Run(ctx context.Context, cfg LoadConfig) (*LoadResult, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if _, err := parseTargets(cfg.Targets); err != nil {
		return nil, err
	}
	if cfg.Processes > 1 {
		return runWorkers(ctx, cfg)
	}
	sr, err := runShard(ctx, &cfg, 0, 1, time.Now(), true)
	if sr == nil {
		return nil, err
	}
	return merge(cfg, []*shardResult{sr}), err
}

// shardResult is what one process measured over its share of the
// sessions.
type shardResult struct {
	OK, Tempfail, Permfail, Lost, Errors, Conns, NoPipe, NoChunk int64
	WindowOK, Flights                                            int64
	Window                                                       time.Duration
	ErrKinds                                                     map[string]int64
	Samples                                                      []time.Duration
	CPU                                                          time.Duration // this process's CPU time in the window
	Err                                                          string
}

// runShard runs sessions shard, shard+shards, shard+2*shards, ... of cfg
// in this process, with base as time zero. hooks says whether to call
// cfg's Progress, WindowStart and WindowEnd.
func runShard(ctx context.Context, cfg *LoadConfig, shard, shards int, base time.Time, hooks bool) (*shardResult, error) {
	targets, err := parseTargets(cfg.Targets)
	if err != nil {
		return nil, err
	}
	mine := (cfg.Sessions - shard + shards - 1) / shards
	if _, err := RaiseFileLimit(uint64(mine) + 1024); err != nil && mine > sessionsPerProcess() {
		return nil, err
	}
	netCfg := NetConfig{RTT: cfg.RTT}
	if targets[0].Addr().IsLoopback() {
		perTarget := (cfg.Sessions + len(targets) - 1) / len(targets)
		netCfg.Sources = loopbackSources(perTarget, cfg.PerSource)
		netCfg.PerSource = cfg.PerSource
	}

	sc := newScript(cfg)
	win := &window{}
	win.start.Store(int64(cfg.Ramp + cfg.Warmup))
	win.end.Store(math.MaxInt64)
	if cfg.Count <= 0 {
		win.end.Store(int64(cfg.Ramp + cfg.Warmup + cfg.Duration))
	}
	count := (cfg.Count + int64(shards) - 1) / int64(shards)

	nloops := min(cfg.Loops, mine)
	loops := make([]*Loop, nloops)
	stats := make([]*loopStats, nloops)
	for i := range loops {
		if loops[i], err = NewLoop(netCfg, base); err != nil {
			for _, l := range loops[:i] {
				l.closeEpoll()
			}
			return nil, err
		}
		stats[i] = &loopStats{}
	}
	// Session i starts at Ramp*i/Sessions whichever process runs it, so
	// the shards' starts interleave into one even ramp.
	for i := shard; i < cfg.Sessions; i += shards {
		li := (i / shards) % nloops
		at := int64(cfg.Ramp) * int64(i) / int64(cfg.Sessions)
		loops[li].Add(&session{sc: sc, st: stats[li], win: win}, targets[i%len(targets)], i/len(targets), at)
	}

	var wg sync.WaitGroup
	errs := make([]error, len(loops))
	for i, l := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = l.Run()
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	totals := func() (p Progress) {
		for _, st := range stats {
			p.OK += st.ok.Load()
			p.Failed += st.tempfail.Load() + st.permfail.Load()
			p.Errors += st.errors.Load()
			p.Connected += st.conns.Load()
		}
		return p
	}
	stop := func(now int64) {
		for _, l := range loops {
			l.Stop(now + int64(cfg.Drain))
		}
	}

	res := &shardResult{}
	var cpuStart time.Duration
	var windowStarted, stopped bool
	var lastProgress time.Duration
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
loop:
	for {
		select {
		case <-done:
			break loop
		case <-ctx.Done():
			if !stopped {
				now := int64(time.Since(base))
				win.end.Store(min(win.end.Load(), now))
			}
		case <-tick.C:
		}
		now := time.Since(base)
		if !windowStarted && int64(now) >= win.start.Load() {
			windowStarted = true
			cpuStart = cpuTime()
			if hooks && cfg.WindowStart != nil {
				cfg.WindowStart()
			}
		}
		if !stopped && count > 0 && windowStarted && totals().OK >= count {
			win.end.Store(int64(now))
		}
		if !stopped && int64(now) >= win.end.Load() {
			stopped = true
			if windowStarted {
				res.CPU = cpuTime() - cpuStart
				if hooks && cfg.WindowEnd != nil {
					cfg.WindowEnd()
				}
			}
			stop(int64(time.Since(base)))
		}
		if hooks && cfg.Progress != nil && now-lastProgress >= time.Second {
			lastProgress = now
			p := totals()
			p.Elapsed, p.Phase = now, phase(cfg, now, windowStarted, stopped)
			cfg.Progress(p)
		}
	}

	for _, l := range loops {
		res.Flights += l.flights
	}
	for _, st := range stats {
		res.OK += st.ok.Load()
		res.Tempfail += st.tempfail.Load()
		res.Permfail += st.permfail.Load()
		res.Lost += st.lost.Load()
		res.Errors += st.errors.Load()
		res.Conns += st.conns.Load()
		res.WindowOK += st.windowOK
		res.NoPipe += st.noPipe
		res.NoChunk += st.noChunk
		res.Samples = append(res.Samples, st.latencies...)
		for k, v := range st.errKinds {
			if res.ErrKinds == nil {
				res.ErrKinds = map[string]int64{}
			}
			res.ErrKinds[k] += v
		}
	}
	if windowStarted {
		res.Window = time.Duration(min(win.end.Load(), int64(time.Since(base))) - win.start.Load())
	}
	err = errors.Join(errs...)
	if err != nil {
		res.Err = err.Error()
	}
	return res, err
}

func phase(cfg *LoadConfig, now time.Duration, windowStarted, stopped bool) string {
	switch {
	case stopped:
		return "drain"
	case now < cfg.Ramp:
		return "ramp"
	case !windowStarted:
		return "warmup"
	}
	return "measure"
}

// merge adds up what the shards measured.
func merge(cfg LoadConfig, shards []*shardResult) *LoadResult {
	res := &LoadResult{Config: cfg, RoundTrips: RoundTrips(cfg)}
	if cfg.RTT > 0 {
		res.Bound = float64(cfg.Sessions) / (res.RoundTrips * cfg.RTT.Seconds())
	}
	var sample []time.Duration
	var cpu time.Duration
	for _, sr := range shards {
		res.OK += sr.OK
		res.Tempfail += sr.Tempfail
		res.Permfail += sr.Permfail
		res.Lost += sr.Lost
		res.Errors += sr.Errors
		res.Conns += sr.Conns
		res.NoPipe += sr.NoPipe
		res.NoChunk += sr.NoChunk
		res.WindowOK += sr.WindowOK
		res.Flights += sr.Flights
		res.Window = max(res.Window, sr.Window)
		cpu += sr.CPU
		sample = append(sample, sr.Samples...)
		for k, v := range sr.ErrKinds {
			if res.ErrKinds == nil {
				res.ErrKinds = map[string]int64{}
			}
			res.ErrKinds[k] += v
		}
	}
	if res.Window > 0 {
		res.Rate = float64(res.WindowOK) / res.Window.Seconds()
		res.GenCPU = cpu.Seconds() / res.Window.Seconds()
	}
	res.Latency = Summarize(sample)
	res.Processes = len(shards)
	return res
}

// TopErrors lists the most frequent error kinds, for reports.
func (r *LoadResult) TopErrors(n int) []string {
	type kv struct {
		k string
		v int64
	}
	var all []kv
	for k, v := range r.ErrKinds {
		all = append(all, kv{k, v})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].v > all[j].v })
	var out []string
	for i := 0; i < len(all) && i < n; i++ {
		out = append(out, fmt.Sprintf("%s ×%d", all[i].k, all[i].v))
	}
	return out
}
