package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/lsmtp/lsmtp/broker"
)

// PaperRow is one row of Table I of the LSMTP paper (section V): the
// paper's "clients × concurrency" sessions over a path of about 315 ms.
type PaperRow struct {
	Clients, Concurrency int
	Total                int
	Throughput           float64 // emails/s
	Latency              float64 // seconds
}

// Sessions is the paper's concurrent sessions.
func (p PaperRow) Sessions() int { return p.Clients * p.Concurrency }

// RoundTrips is the message cycle the paper's figures imply by Little's
// law, in round trips: sessions ÷ (msg/s × RTT).
func (p PaperRow) RoundTrips() float64 {
	return float64(p.Sessions()) / (p.Throughput * PaperRTT.Seconds())
}

// PaperTable is Table I.
var PaperTable = []PaperRow{
	{100, 10, 14074, 505, 2.03},
	{200, 20, 23276, 1880, 2.08},
	{300, 30, 54350, 4385, 2.03},
	{400, 4, 15445, 918, 1.76},
	{400, 10, 44178, 1740, 2.19},
	{800, 5, 20513, 1697, 2.14},
}

// PaperRTT is the network latency of the paper's tests.
const PaperRTT = 315 * time.Millisecond

// Server kinds a row runs against.
const (
	KindAMQP     = "lsmtp-amqp"
	KindNull     = "lsmtp-null"
	KindSmtpSink = "smtp-sink"
	KindCeiling  = "ceiling"
)

// Row is one line of the benchmark.
type Row struct {
	ID        string // short and unique, for -rows and file names
	Group     string
	Label     string
	Kind      string // KindAMQP, ...
	Instances int    // server processes the sessions are spread over
	Paper     *PaperRow
	Load      LoadConfig
}

// RowResult is what a row measured.
type RowResult struct {
	Row
	Res     *LoadResult
	Ceiling float64 // messages/s, for the ceiling row

	Checked     bool // counted in RabbitMQ
	Purged      int
	Counted     int
	CheckPassed bool
	CheckNote   string

	// CPU in cores over the window: the server processes, RabbitMQ, the
	// generator, and everything else on the machine.
	ServerCPU, RabbitCPU, GenCPU, OtherCPU, BusyCPU float64
	Load1                                           float64 // load average when the row started
	OpenConns                                       int     // connections open at the lsmtp server(s) when the window closed
	// The most message octets and messages the lsmtp server(s) held at
	// once during the window (lsmtp_in_flight_bytes and
	// lsmtp_broker_pending_messages, summed, sampled every 250 ms), and
	// the in-flight byte budget (lsmtp_in_flight_bytes_limit, summed).
	PeakInFlight, InFlightLimit, PeakPending float64

	Profiles   *Profiles
	GenProfile string // the generator's own CPU profile, if taken
	Command    string // the equivalent lsmtp-bench run command
	Err        string
}

// SuiteConfig configures a suite run.
type SuiteConfig struct {
	Quick      bool
	Lsmtp      string   // lsmtp binary
	Listen     []string // lsmtp listen addresses, one per instance (2 needed for rows past one process's file limit)
	Admin      []string // lsmtp admin addresses, one per instance
	SinkListen string   // smtp-sink's address
	AMQPURL    string
	Exchange   string
	Queue      string
	RoutingKey string
	// MaxConnsPerIP is lsmtp's --max-conns-per-ip for the run (0: none);
	// when set, the generator puts that many sessions on each client
	// address.
	MaxConnsPerIP int
	SmtpSink      string        // smtp-sink binary; "" finds it, "none" skips those rows
	Out           string        // the report, BENCHMARKS.md
	PlotDir       string        // where the PNG plots go
	ProfileDir    string        // if set, profiles of every lsmtp row go here
	Rows          string        // regexp on row IDs; "" runs all
	Window        time.Duration // measurement window per row; 0: 10 s (4 s with Quick)
	LogDir        string        // server logs; "" makes a temporary directory
	Command       string        // how the suite was started, for the report
	// Notes is a file of sections measured apart from the suite, by
	// hand, appended to the report as written ("" or absent: none).
	Notes    string
	Progress io.Writer // progress lines; nil for none
	// Factors and Peers, when set, add the factor table and the
	// side-by-side comparison, run after the rows (their Progress is
	// the suite's).
	Factors *FactorConfig
	Peers   *PeersConfig
	NATS    *NATSConfig // lsmtp → JetStream beside its ceiling and lsmtp → RabbitMQ
	TLS     *TLSConfig  // the TLS section, lsmtp beside go-smtp's TLS
}

func (sc *SuiteConfig) setDefaults() {
	if sc.Lsmtp == "" {
		sc.Lsmtp = "bin/lsmtp"
	}
	if len(sc.Listen) == 0 {
		sc.Listen = []string{"127.0.0.1:2526", "127.0.0.1:2527"}
	}
	if len(sc.Admin) == 0 {
		sc.Admin = []string{"127.0.0.1:9026", "127.0.0.1:9027"}
	}
	if sc.SinkListen == "" {
		sc.SinkListen = "127.0.0.1:2528"
	}
	if sc.AMQPURL == "" {
		sc.AMQPURL = broker.DefaultURL
	}
	if sc.Exchange == "" {
		sc.Exchange = "lsmtp.bench"
	}
	if sc.Queue == "" {
		sc.Queue = "lsmtp.bench"
	}
	if sc.RoutingKey == "" {
		sc.RoutingKey = "bench"
	}
	if sc.Out == "" {
		sc.Out = "BENCHMARKS.md"
	}
	if sc.PlotDir == "" {
		sc.PlotDir = "bench"
	}
	if sc.Window <= 0 {
		sc.Window = 10 * time.Second
		if sc.Quick {
			sc.Window = 4 * time.Second
		}
	}
}

// Rows lists the suite's rows.
func (sc *SuiteConfig) RowsToRun() []Row {
	w := sc.Window
	table := func(group, label string, pipe, chunk bool, paper []PaperRow) []Row {
		var rows []Row
		for i := range paper {
			p := paper[i]
			id := fmt.Sprintf("%s-%dx%d", group, p.Clients, p.Concurrency)
			rows = append(rows, Row{
				ID: id, Group: group, Label: fmt.Sprintf("%s %d×%d", label, p.Clients, p.Concurrency),
				Kind: KindAMQP, Instances: 1, Paper: &p,
				Load: LoadConfig{Sessions: p.Sessions(), RTT: PaperRTT, Pipelining: pipe, Chunking: chunk, Duration: w},
			})
		}
		return rows
	}
	loop := func(id, label, kind string, perConn int, chunk bool) Row {
		// The broker path needs more messages in flight than the null
		// sink: RabbitMQ confirms (and its quorum queue writes) in
		// batches, which grow with what is outstanding.
		sessions := 200
		if kind == KindAMQP {
			sessions = 1000
		}
		return Row{ID: id, Group: "loopback", Label: label, Kind: kind, Instances: 1,
			Load: LoadConfig{Sessions: sessions, PerConn: perConn, Pipelining: true, Chunking: chunk, Duration: w, Warmup: 2 * time.Second}}
	}
	scale := func(id, label string, sessions, perConn int, pipe, chunk bool) Row {
		return Row{ID: id, Group: "scale", Label: label, Kind: KindAMQP, Instances: instancesFor(sessions),
			Load: LoadConfig{Sessions: sessions, RTT: PaperRTT, PerConn: perConn, Pipelining: pipe, Chunking: chunk, Duration: w}}
	}
	sink := func(id, label string, sessions, perConn int, rtt time.Duration, pipe bool) Row {
		return Row{ID: id, Group: "postfix", Label: label, Kind: KindSmtpSink, Instances: 1,
			Load: LoadConfig{Sessions: sessions, RTT: rtt, PerConn: perConn, Pipelining: pipe, Duration: w, Warmup: 2 * time.Second}}
	}
	ceiling := Row{ID: "ceiling", Group: "loopback", Label: "raw amqp091-go publish ceiling", Kind: KindCeiling, Load: LoadConfig{Duration: w}}

	scale12k := scale("scale-12k-pipe-k10", "12,000 sessions, pipelining, 10 msg/conn", 12000, 10, true, false)
	scale12k.Load.Processes = 2

	var rows []Row
	// -rows picks from every row, -quick or not: -quick then only
	// shortens the window.
	if sc.Quick && sc.Rows == "" {
		rows = append(rows,
			ceiling,
			loop("loop-null", "lsmtp, null sink, 1 msg/conn", KindNull, 1, false),
			loop("loop-amqp", "lsmtp → RabbitMQ, 1 msg/conn", KindAMQP, 1, false),
			loop("loop-amqp-k100", "lsmtp → RabbitMQ, 100 msg/conn", KindAMQP, 100, false),
		)
		rows = append(rows, table("plain", "Table I", false, false, PaperTable[:1])...)
		rows = append(rows, table("pipe", "pipelining", true, false, PaperTable[:1])...)
		rows = append(rows, sink("sink-loop", "smtp-sink, 1 msg/conn", 200, 1, 0, true))
	} else {
		rows = append(rows,
			ceiling,
			loop("loop-null", "lsmtp, null sink, 1 msg/conn", KindNull, 1, false),
			loop("loop-null-k100", "lsmtp, null sink, 100 msg/conn", KindNull, 100, false),
			loop("loop-amqp", "lsmtp → RabbitMQ, 1 msg/conn", KindAMQP, 1, false),
			loop("loop-amqp-k100", "lsmtp → RabbitMQ, 100 msg/conn", KindAMQP, 100, false),
			loop("loop-amqp-bdat-k100", "lsmtp → RabbitMQ, BDAT, 100 msg/conn", KindAMQP, 100, true),
		)
		rows = append(rows, table("plain", "Table I", false, false, PaperTable)...)
		rows = append(rows, table("pipe", "pipelining", true, false, PaperTable)...)
		rows = append(rows, table("bdat", "pipelining+BDAT", true, true, PaperTable)...)
		rows = append(rows,
			scale("scale-10k", "10,000 sessions", 10000, 1, false, false),
			scale("scale-10k-pipe", "10,000 sessions, pipelining", 10000, 1, true, false),
			scale("scale-30k", "30,000 sessions", 30000, 1, false, false),
			scale("scale-30k-pipe", "30,000 sessions, pipelining", 30000, 1, true, false),
			// The most through RabbitMQ at 315 ms: few connections per
			// message and one round trip each; past the machine's CPU
			// the server answers 451 (hand-off full) to the excess.
			scale("scale-5k-bdat-k10", "5,000 sessions, BDAT, 10 msg/conn", 5000, 10, true, true),
			scale("scale-10k-bdat-k10", "10,000 sessions, BDAT, 10 msg/conn", 10000, 10, true, true),
			// Issue 11's scenario as a new user ran it: two generator
			// processes, pipelining without BDAT, 10 msg/conn. make
			// bench-12k runs it alone (bench-12k-quick with a 4 s window).
			scale12k,
		)
		rows = append(rows,
			sink("sink-loop", "smtp-sink, 1 msg/conn", 200, 1, 0, true),
			sink("sink-loop-k100", "smtp-sink, 100 msg/conn", 200, 100, 0, true),
			sink("sink-300x30", "smtp-sink, 300×30", 9000, 1, PaperRTT, false),
			sink("sink-300x30-pipe", "smtp-sink, 300×30, pipelining", 9000, 1, PaperRTT, true),
		)
	}
	if sc.Rows != "" {
		re, err := regexp.Compile(sc.Rows)
		if err == nil {
			var keep []Row
			for _, r := range rows {
				if re.MatchString(r.ID) {
					keep = append(keep, r)
				}
			}
			rows = keep
		}
	}
	return rows
}

// instancesFor is how many lsmtp processes hold sessions connections: each
// connection is a descriptor in the server too, and the hard file limit
// may be out of reach.
func instancesFor(sessions int) int {
	return (sessions + sessionsPerProcess() - 1) / sessionsPerProcess()
}

// Suite runs the rows and writes the report.
type Suite struct {
	cfg      SuiteConfig
	results  []*RowResult
	info     MachineInfo
	servers  map[string][]*Server // by kind
	check    *QueueCheck
	start    time.Time
	profiled []*RowResult // profiled re-runs of the busiest loopback rows
	notes    []string

	genProfile string    // while set, runRow profiles the generator itself into this file
	started    []string  // command lines of the servers started
	sections   []Section // measured after the rows
}

// RunSuite runs the suite and writes the report and plots. A broker count
// below the 2xx replies stops it with an error.
func RunSuite(ctx context.Context, cfg SuiteConfig) error {
	cfg.setDefaults()
	s := &Suite{cfg: cfg, servers: map[string][]*Server{}, start: time.Now()}
	if s.cfg.LogDir == "" {
		dir, err := os.MkdirTemp("", "lsmtp-bench-")
		if err != nil {
			return err
		}
		s.cfg.LogDir = dir
	}
	defer s.stopServers()
	for _, dir := range []string{s.cfg.PlotDir, filepath.Dir(s.cfg.Out)} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}

	rows := cfg.RowsToRun()
	maxSessions := 0
	for _, r := range rows {
		maxSessions = max(maxSessions, r.Load.Sessions)
	}
	// Servers started from here inherit the limit.
	if lim, err := RaiseFileLimit(uint64(2*maxSessions) + 4096); err != nil {
		s.notes = append(s.notes, fmt.Sprintf("Open file limit: %d (%v); rows beyond it are spread over several processes.", lim, err))
	}
	s.check = &QueueCheck{URL: cfg.AMQPURL, Queue: cfg.Queue}
	defer s.check.Close()
	s.info = CollectMachineInfo(s.check)
	if cfg.SmtpSink == "" {
		cfg.SmtpSink = SmtpSinkPath()
		s.cfg.SmtpSink = cfg.SmtpSink
	}

	var failure error
	for i, row := range rows {
		if ctx.Err() != nil {
			failure = ctx.Err()
			break
		}
		s.waitQuiet(ctx, row)
		rr := s.runRow(ctx, i, len(rows), row)
		s.results = append(s.results, rr)
		if rr.Checked && !rr.CheckPassed {
			failure = fmt.Errorf("row %s: RabbitMQ holds %s", row.ID, rr.CheckNote)
			break
		}
	}
	// The quick subset skips the profiled re-runs to stay under 2 minutes.
	if failure == nil && ctx.Err() == nil && !cfg.Quick {
		s.profileBusiestLoopback(ctx)
	}
	s.stopServers()
	if failure == nil && ctx.Err() == nil {
		failure = s.runSections(ctx)
	}

	out := cfg.Out
	if failure != nil {
		out = strings.TrimSuffix(out, ".md") + ".failed.md"
	}
	if err := s.writeReport(out, failure); err != nil {
		return errors.Join(failure, err)
	}
	s.progressf("report written to %s\n", out)
	return failure
}

// runSections runs the factor table, the comparison with the bridge, the
// JetStream and the TLS sections, when configured, for the report. Each
// takes the suite's binary, broker and log directory unless set.
func (s *Suite) runSections(ctx context.Context) error {
	inherit := func(dst *string, v string) {
		if *dst == "" {
			*dst = v
		}
	}
	if f := s.cfg.Factors; f != nil {
		f.Progress = s.cfg.Progress
		inherit(&f.AMQPURL, s.cfg.AMQPURL)
		rep, err := RunFactors(ctx, *f)
		if err := keepSection(s, "factor table", rep, err); err != nil {
			return err
		}
	}
	if p := s.cfg.Peers; p != nil {
		p.Progress = s.cfg.Progress
		inherit(&p.Lsmtp, s.cfg.Lsmtp)
		inherit(&p.AMQPURL, s.cfg.AMQPURL)
		inherit(&p.LogDir, s.cfg.LogDir)
		rep, err := RunPeers(ctx, *p)
		if err := keepSection(s, "side by side", rep, err); err != nil {
			return err
		}
	}
	if n := s.cfg.NATS; n != nil && FindProcess("nats-server") == 0 {
		s.notes = append(s.notes, "No nats-server runs on this machine: the JetStream section was skipped.")
	} else if n != nil {
		n.Progress = s.cfg.Progress
		inherit(&n.Lsmtp, s.cfg.Lsmtp)
		inherit(&n.AMQPURL, s.cfg.AMQPURL)
		inherit(&n.LogDir, s.cfg.LogDir)
		rep, err := RunNATS(ctx, *n)
		if err := keepSection(s, "JetStream", rep, err); err != nil {
			return err
		}
	}
	if c := s.cfg.TLS; c != nil {
		c.Progress = s.cfg.Progress
		inherit(&c.Lsmtp, s.cfg.Lsmtp)
		inherit(&c.LogDir, s.cfg.LogDir)
		rep, err := RunTLS(ctx, *c)
		if err := keepSection(s, "TLS section", rep, err); err != nil {
			return err
		}
	}
	return nil
}

// keepSection adds what a section measured to the report, a failed one's
// rows too (rep is nil only when nothing ran), and names the section in
// its error.
func keepSection[T any, R interface {
	*T
	Section
}](s *Suite, what string, rep R, err error) error {
	if rep != nil {
		s.sections = append(s.sections, rep)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func (s *Suite) progressf(format string, args ...any) {
	if s.cfg.Progress != nil {
		fmt.Fprintf(s.cfg.Progress, format, args...)
	}
}

// quietCores is how busy the machine may be between rows (RabbitMQ idles
// at around 0.15 cores) for the next row to start at once.
const quietCores = 0.5

// waitQuiet waits, up to a minute, until the machine is quiet between
// rows: other programs on a shared machine would take the cores the row
// is measuring. A row that starts anyway shows their share in the CPU
// table's "other" column.
func (s *Suite) waitQuiet(ctx context.Context, row Row) {
	limit := time.Minute
	if s.cfg.Quick {
		limit = 10 * time.Second
	}
	deadline := time.Now().Add(limit)
	for waited := false; ; waited = true {
		b0, t0 := SystemCPU(), time.Now()
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		busy := (SystemCPU() - b0).Seconds() / time.Since(t0).Seconds()
		if busy < quietCores {
			if waited {
				s.progressf("\n")
			}
			return
		}
		if time.Now().After(deadline) {
			s.progressf("\n")
			s.notes = append(s.notes, fmt.Sprintf("%s: started on a busy machine (%.1f cores busy before it, after waiting %v)", row.ID, busy, limit))
			return
		}
		s.progressf("\r       waiting for the machine to quiet down before %s: %.1f cores busy   ", row.ID, busy)
	}
}

// serversFor starts (once) the servers a row needs.
func (s *Suite) serversFor(ctx context.Context, row Row) ([]*Server, error) {
	have := s.servers[row.Kind]
	for len(have) < row.Instances {
		i := len(have)
		var srv *Server
		var err error
		switch row.Kind {
		case KindAMQP, KindNull:
			if i >= len(s.cfg.Listen) || i >= len(s.cfg.Admin) {
				return nil, fmt.Errorf("row %s needs %d lsmtp instances; only %d listen/admin addresses configured", row.ID, row.Instances, len(s.cfg.Listen))
			}
			srv, err = StartLsmtp(ctx, LsmtpOptions{
				Binary: s.cfg.Lsmtp, Listen: addrFor(row.Kind, s.cfg.Listen[i]), Admin: addrFor(row.Kind, s.cfg.Admin[i]), Sink: strings.TrimPrefix(row.Kind, "lsmtp-"),
				AMQPURL: s.cfg.AMQPURL, Exchange: s.cfg.Exchange, Queue: s.cfg.Queue, RoutingKey: s.cfg.RoutingKey,
				MaxConnsPerIP: s.cfg.MaxConnsPerIP, LogDir: s.cfg.LogDir,
			})
		case KindSmtpSink:
			srv, err = StartSmtpSink(ctx, s.cfg.SmtpSink, s.cfg.SinkListen, 40000, s.cfg.LogDir)
		default:
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		s.started = append(s.started, strings.Join(srv.Args, " "))
		have = append(have, srv)
		s.servers[row.Kind] = have
	}
	return have[:row.Instances], nil
}

// addrFor gives the null-sink servers their own ports (those of the amqp
// servers plus 10): servers stay up for the whole suite, and a listener
// cannot always be reopened at once on a port that just served thousands
// of connections (they linger in TIME_WAIT).
func addrFor(kind, addr string) string {
	if kind != KindNull {
		return addr
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		return addr
	}
	return net.JoinHostPort(host, strconv.Itoa(n+10))
}

func (s *Suite) stopKind(kind string) {
	for _, srv := range s.servers[kind] {
		if err := srv.Stop(); err != nil {
			s.notes = append(s.notes, fmt.Sprintf("stopping %s: %v", srv.Name, err))
		}
	}
	delete(s.servers, kind)
}

func (s *Suite) stopServers() {
	for kind := range s.servers {
		s.stopKind(kind)
	}
}

// runRow runs one row, with its broker check and CPU accounting.
func (s *Suite) runRow(ctx context.Context, i, n int, row Row) *RowResult {
	rr := &RowResult{Row: row, Load1: loadAvg()}
	prefix := fmt.Sprintf("[%2d/%d] %-42s", i+1, n, truncate(row.Label, 42))
	if row.Kind == KindCeiling {
		s.progressf("%s measuring for %v ...", prefix, row.Load.Duration)
		bcfg := broker.DefaultConfig()
		bcfg.URLs = []string{s.cfg.AMQPURL}
		bcfg.Queue = s.cfg.Queue
		rabbit := FindProcess("beam.smp")
		r0, b0, g0, t0 := ProcCPU(rabbit), SystemCPU(), cpuTime(), time.Now()
		rate, err := broker.MeasureCeiling(ctx, bcfg, 2048, row.Load.Duration)
		secs := time.Since(t0).Seconds()
		rr.RabbitCPU = (ProcCPU(rabbit) - r0).Seconds() / secs
		rr.GenCPU = (cpuTime() - g0).Seconds() / secs
		rr.BusyCPU = (SystemCPU() - b0).Seconds() / secs
		rr.OtherCPU = max(rr.BusyCPU-rr.RabbitCPU-rr.GenCPU, 0)
		rr.Ceiling = rate
		rr.Command = fmt.Sprintf("broker.MeasureCeiling: %d channels × %d unconfirmed, 2048-byte persistent messages, mandatory, %s queue, %v",
			bcfg.Workers, bcfg.Window, bcfg.QueueType, row.Load.Duration)
		if err != nil {
			rr.Err = err.Error()
		}
		s.progressf("\r%s %8.0f msg/s\n", prefix, rate)
		return rr
	}
	if row.Kind == KindSmtpSink && (s.cfg.SmtpSink == "" || s.cfg.SmtpSink == "none") {
		rr.Err = "Postfix smtp-sink is not installed"
		s.progressf("%s skipped: %s\n", prefix, rr.Err)
		return rr
	}
	servers, err := s.serversFor(ctx, row)
	if err != nil {
		rr.Err = err.Error()
		s.progressf("%s failed: %v\n", prefix, err)
		return rr
	}
	cfg := row.Load
	for _, srv := range servers {
		cfg.Targets = append(cfg.Targets, srv.Addr)
	}
	if s.cfg.MaxConnsPerIP > 0 && row.Kind != KindSmtpSink {
		cfg.PerSource = s.cfg.MaxConnsPerIP
	}
	rr.Command = RunCommand(cfg)

	if row.Kind == KindAMQP {
		if a := RabbitAlarms(); a != "" {
			s.notes = append(s.notes, fmt.Sprintf("%s: RabbitMQ had a resource alarm before the row (publishers blocked): %s", row.ID, a))
		}
		rr.Checked = true
		if rr.Purged, err = s.check.Purge(); err != nil {
			rr.Err = err.Error()
			rr.Checked = false
		}
		// Whatever still trickles in from an earlier row goes too.
		time.Sleep(300 * time.Millisecond)
		if n, err := s.check.Count(); err == nil && n > 0 {
			_, _ = s.check.Purge()
			s.notes = append(s.notes, fmt.Sprintf("%s: %d messages from an earlier row arrived after its check and were purged before this row", row.ID, n))
		}
	}

	rabbit := FindProcess("beam.smp")
	disconnects := func() (n float64) {
		for _, srv := range servers {
			if v, ok := MetricValue(srv.Admin, "lsmtp_broker_disconnects_total"); ok {
				n += v
			}
		}
		return n
	}
	var disc0 float64
	if row.Kind == KindAMQP {
		disc0 = disconnects()
	}
	var srv0, r0, b0 time.Duration
	var t0 time.Time
	var waitProfiles func() (Profiles, error)
	serverCPU := func() (d time.Duration) {
		for _, srv := range servers {
			d += ProcCPU(srv.Pid())
		}
		return d
	}
	var genProfile *os.File
	var stopHeld func()
	cfg.WindowStart = func() {
		t0, srv0, r0, b0 = time.Now(), serverCPU(), ProcCPU(rabbit), SystemCPU()
		if row.Kind == KindAMQP {
			stopHeld = sampleHeld(servers, rr)
		}
		if s.cfg.ProfileDir != "" && row.Kind != KindSmtpSink {
			waitProfiles = CaptureProfiles(servers[0].Admin, s.cfg.ProfileDir, row.ID, cfg.Duration)
		}
		if s.genProfile != "" && cfg.Processes <= 1 {
			if f, err := os.Create(s.genProfile); err == nil {
				if pprof.StartCPUProfile(f) == nil {
					genProfile = f
				} else {
					f.Close()
				}
			}
		}
	}
	cfg.WindowEnd = func() {
		if stopHeld != nil {
			stopHeld()
		}
		if genProfile != nil {
			pprof.StopCPUProfile()
			genProfile.Close()
		}
		secs := time.Since(t0).Seconds()
		rr.ServerCPU = (serverCPU() - srv0).Seconds() / secs
		rr.RabbitCPU = max(ProcCPU(rabbit)-r0, 0).Seconds() / secs
		rr.BusyCPU = (SystemCPU() - b0).Seconds() / secs
		for _, srv := range servers {
			if v, ok := MetricValue(srv.Admin, "lsmtp_connections_open"); ok {
				rr.OpenConns += int(v)
			}
		}
		if row.Kind == KindAMQP && FindProcess("beam.smp") != rabbit {
			s.notes = append(s.notes, fmt.Sprintf("%s: RabbitMQ was restarted during the row (its CPU figure is incomplete)", row.ID))
		}
	}
	var last Progress
	cfg.Progress = func(p Progress) {
		rate := float64(p.OK-last.OK) / max((p.Elapsed-last.Elapsed).Seconds(), 0.001)
		last = p
		s.progressf("\r%s %5.1fs %-7s ok=%-8d %7.0f/s fail=%d err=%d   ", prefix, p.Elapsed.Seconds(), p.Phase, p.OK, rate, p.Failed, p.Errors)
	}
	res, err := Run(ctx, cfg)
	rr.Res = res
	if err != nil {
		rr.Err = err.Error()
	}
	if res != nil {
		rr.GenCPU = res.GenCPU
		if row.Kind != KindAMQP {
			rr.RabbitCPU = 0 // idle broker: counted under "other" if it did anything
		}
		rr.OtherCPU = max(rr.BusyCPU-rr.ServerCPU-rr.RabbitCPU-rr.GenCPU, 0)
	}
	if waitProfiles != nil {
		p, perr := waitProfiles()
		if perr == nil {
			rr.Profiles = &p
		} else {
			s.notes = append(s.notes, fmt.Sprintf("profiles of %s: %v", row.ID, perr))
		}
	}
	for _, srv := range servers {
		if !srv.Alive() {
			rr.Err = strings.TrimSpace(rr.Err + fmt.Sprintf(" %s exited during the row; see %s", srv.Name, srv.LogPath))
			delete(s.servers, row.Kind)
		}
	}
	if row.Kind == KindAMQP {
		if d := disconnects() - disc0; d > 0 {
			s.notes = append(s.notes, fmt.Sprintf("%s: lsmtp lost its RabbitMQ connection %.0f time(s) during the row (RabbitMQ restarted or unreachable); the 4xx of that row come from it", row.ID, d))
		}
	}
	if rr.Checked && res != nil {
		// Messages with an unknown outcome (4xx, lost connections) may
		// still be on their way: wait longer for the count to settle.
		stable := time.Second
		if res.Tempfail+res.Lost > 0 {
			stable = 5 * time.Second
		}
		sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		rr.Counted, err = s.check.Settle(sctx, int(res.OK), stable)
		cancel()
		if err != nil {
			rr.Err = strings.TrimSpace(rr.Err + " " + err.Error())
			rr.CheckPassed, rr.CheckNote = false, err.Error()
		} else {
			rr.CheckPassed, rr.CheckNote = Verdict(res.OK, res.Tempfail, res.Lost, rr.Counted)
		}
		// Keep RabbitMQ's memory and disk for the next row.
		_, _ = s.check.Purge()
	}
	s.progressf("\r%s %s\n", prefix, rowSummary(rr))
	return rr
}

// profileBusiestLoopback re-runs the busiest loopback row of each lsmtp
// sink with the server's CPU and allocation profiles and the generator's
// CPU profile captured, apart from the measured runs so that profiling
// does not slow them.
func (s *Suite) profileBusiestLoopback(ctx context.Context) {
	for _, kind := range []string{KindAMQP, KindNull} {
		var best *RowResult
		for _, rr := range s.results {
			if rr.Group == "loopback" && rr.Res != nil && rr.Kind == kind && rr.Err == "" {
				if best == nil || rr.Res.Rate > best.Res.Rate {
					best = rr
				}
			}
		}
		if best == nil || ctx.Err() != nil {
			continue
		}
		dir := s.cfg.ProfileDir
		if dir == "" {
			dir = filepath.Join(s.cfg.LogDir, "profiles")
		}
		row := best.Row
		row.ID = best.ID + "-profiled"
		row.Label = best.Label + " (profiled)"
		saved := s.cfg.ProfileDir
		s.cfg.ProfileDir = dir
		s.genProfile = filepath.Join(dir, row.ID+"-generator-cpu.pprof")
		s.waitQuiet(ctx, row)
		rr := s.runRow(ctx, 0, 1, row)
		s.cfg.ProfileDir = saved
		if rr.Res != nil && rr.Res.Processes == 1 {
			rr.GenProfile = s.genProfile
		}
		s.genProfile = ""
		s.profiled = append(s.profiled, rr)
	}
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

func rowSummary(rr *RowResult) string {
	if rr.Res == nil {
		return "failed: " + rr.Err
	}
	r := rr.Res
	out := fmt.Sprintf("%8.0f msg/s", r.Rate)
	if r.Bound > 0 {
		out += fmt.Sprintf(" (%.3f of bound)", r.Rate/r.Bound)
	}
	out += fmt.Sprintf(" p50 %s p99 %s", secs(r.Latency.P50), secs(r.Latency.P99))
	if rr.Checked {
		mark := "ok"
		if !rr.CheckPassed {
			mark = "FAILED"
		}
		out += fmt.Sprintf(" broker %s %s", mark, rr.CheckNote)
	}
	if rr.Err != "" {
		out += " error: " + rr.Err
	}
	return out
}

func secs(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 3, 64) + "s" }

// sampleHeld records in rr the most the servers held at once (message
// octets against the in-flight budget, messages in the broker), polling
// their metrics every 250 ms until the returned function is called.
func sampleHeld(servers []*Server, rr *RowResult) (stop func()) {
	done, exited := make(chan struct{}), make(chan struct{})
	sum := func(name string) (v float64) {
		for _, srv := range servers {
			if x, ok := MetricValue(srv.Admin, name); ok {
				v += x
			}
		}
		return v
	}
	rr.InFlightLimit = sum("lsmtp_in_flight_bytes_limit")
	go func() {
		defer close(exited)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			rr.PeakInFlight = max(rr.PeakInFlight, sum("lsmtp_in_flight_bytes"))
			rr.PeakPending = max(rr.PeakPending, sum("lsmtp_broker_pending_messages"))
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); <-exited }
}

// RunCommand is the lsmtp-bench run command that repeats a row's load.
func RunCommand(c LoadConfig) string {
	args := []string{"lsmtp-bench", "run", "-target", strings.Join(c.Targets, ","), "-sessions", strconv.Itoa(c.Sessions)}
	if c.RTT > 0 {
		args = append(args, "-rtt", c.RTT.String())
	}
	if c.PerConn > 1 {
		args = append(args, "-per-conn", strconv.Itoa(c.PerConn))
	}
	if c.Chunking {
		args = append(args, "-chunking")
	} else if c.Pipelining {
		args = append(args, "-pipelining")
	}
	if c.Size > 0 && c.Size != 2048 {
		args = append(args, "-size", strconv.Itoa(c.Size))
	}
	if c.Recipients > 1 {
		args = append(args, "-rcpts", strconv.Itoa(c.Recipients))
	}
	args = append(args, "-duration", c.Duration.String())
	if c.Warmup > 0 {
		args = append(args, "-warmup", c.Warmup.String())
	}
	if c.PerSource > 0 {
		args = append(args, "-per-source", strconv.Itoa(c.PerSource))
	}
	if c.Processes > 1 {
		args = append(args, "-processes", strconv.Itoa(c.Processes))
	}
	return strings.Join(args, " ")
}
