package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/broker"
)

// PeersConfig configures the side-by-side comparison of lsmtp with the
// go-smtp bridge.
type PeersConfig struct {
	Lsmtp      string   // lsmtp binary
	PeerDir    string   // the bridge's source (a Go main package), built for the run
	Go         string   // go command that builds it
	AMQPURL    string   // RabbitMQ on this machine
	QueueTypes []string // each load runs once per queue type
	Pairs      int      // lsmtp, bridge alternations per load

	Sessions int           // the load generator's sessions (pipelined)
	PerConn  int           // messages per connection
	Window   time.Duration // its measurement window

	SmtpSource     string // Postfix smtp-source; "" finds it, "none" skips those loads
	SourceSessions int    // smtp-source -s
	SourceMessages int    // smtp-source -m

	Listen, Admin string // lsmtp's addresses
	PeerListen    string // the bridge's
	LogDir        string // server logs; "" makes a temporary directory
	Progress      io.Writer

	// OnlyLoads, when not empty, keeps only the loads with these IDs
	// (pipe, source-d, source).
	OnlyLoads []string
	// LsmtpArgs are extra flags for lsmtp, after the ones the run sets
	// (to measure a setting against the defaults).
	LsmtpArgs []string
}

func (c *PeersConfig) setDefaults() {
	if c.Lsmtp == "" {
		c.Lsmtp = "bin/lsmtp"
	}
	if c.PeerDir == "" {
		c.PeerDir = "../shared/peers/gosmtp-amqp"
	}
	if c.Go == "" {
		c.Go = "go"
	}
	if c.AMQPURL == "" {
		c.AMQPURL = broker.DefaultURL
	}
	if len(c.QueueTypes) == 0 {
		c.QueueTypes = []string{broker.QueueClassic, broker.QueueQuorum}
	}
	if c.Pairs <= 0 {
		c.Pairs = 3
	}
	if c.Sessions <= 0 {
		c.Sessions = 200
	}
	if c.PerConn <= 0 {
		c.PerConn = 50
	}
	if c.Window <= 0 {
		c.Window = 8 * time.Second
	}
	if c.SourceSessions <= 0 {
		c.SourceSessions = 50
	}
	if c.SourceMessages <= 0 {
		c.SourceMessages = 10000
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:2541"
	}
	if c.Admin == "" {
		c.Admin = "127.0.0.1:9041"
	}
	if c.PeerListen == "" {
		c.PeerListen = "127.0.0.1:2542"
	}
}

// peerLoad is one load both servers get.
type peerLoad struct {
	ID, Label string
	source    bool // smtp-source instead of the load generator
	keepConn  bool // smtp-source -d
}

func (c *PeersConfig) loads() []peerLoad {
	all := []peerLoad{
		{ID: "pipe", Label: fmt.Sprintf("%d sessions, pipelined, %d msg/conn, %v (lsmtp-bench run)", c.Sessions, c.PerConn, c.Window)},
		{ID: "source-d", Label: fmt.Sprintf("`smtp-source -s %d -m %d -l 2048 -d`", c.SourceSessions, c.SourceMessages), source: true, keepConn: true},
		{ID: "source", Label: fmt.Sprintf("`smtp-source -s %d -m %d -l 2048` (a connection per message)", c.SourceSessions, c.SourceMessages), source: true},
	}
	if len(c.OnlyLoads) == 0 {
		return all
	}
	var keep []peerLoad
	for _, l := range all {
		if slices.Contains(c.OnlyLoads, l.ID) {
			keep = append(keep, l)
		}
	}
	return keep
}

// PeerRun is one run of one server under one load.
type PeerRun struct {
	Rate           float64 // messages/s that reached the queue
	Messages       int64   // messages the rate and the per-message figures count
	ServerCPUms    float64 // per message
	RabbitCPUms    float64
	RabbitSyscalls float64 // -1 unknown
	ClientCPUms    float64 // the load generator or smtp-source
	Check          string  // the broker check, "" when it passed
	Err            string
}

// PeersReport is what a comparison measured.
type PeersReport struct {
	Config      PeersConfig
	Loads       []peerLoad
	Runs        map[string]map[string]map[string][]PeerRun // queue type → load → server → runs
	LsmtpArgs   map[string]string                          // queue type → lsmtp's command line
	BridgeArgs  map[string]string
	SourceNote  string // why the smtp-source loads were skipped
	RabbitMQ    string
	Started     time.Time
	Took        time.Duration
	Load        [2]float64 // load average at the start and the end
	Notes       []string
	bridgeBuilt string // where the bridge binary was built
}

// Server names in PeersReport.Runs.
const (
	PeerLsmtp  = "lsmtp"
	PeerBridge = "bridge"
)

// RunPeers builds the bridge from its source, then for every queue type
// runs lsmtp (its defaults, with that queue type) and the bridge under the
// same loads, alternating lsmtp, bridge, lsmtp, bridge, ..., each into a
// queue of its own purged before every run.
func RunPeers(ctx context.Context, cfg PeersConfig) (*PeersReport, error) {
	cfg.setDefaults()
	rep := &PeersReport{Config: cfg, Loads: cfg.loads(), Runs: map[string]map[string]map[string][]PeerRun{},
		LsmtpArgs: map[string]string{}, BridgeArgs: map[string]string{}, Started: time.Now()}
	rep.Load[0] = loadAvg()
	defer func() { rep.Took, rep.Load[1] = time.Since(rep.Started), loadAvg() }()
	if cfg.LogDir == "" {
		dir, err := os.MkdirTemp("", "lsmtp-peers-")
		if err != nil {
			return nil, err
		}
		cfg.LogDir = dir
		rep.Config.LogDir = dir
	}
	if cfg.SmtpSource == "" {
		cfg.SmtpSource = SmtpSourcePath()
	}
	if cfg.SmtpSource == "" || cfg.SmtpSource == "none" {
		rep.SourceNote = "Postfix smtp-source is not installed (Debian/Ubuntu: `apt-get install postfix`): its loads were skipped."
		var keep []peerLoad
		for _, l := range rep.Loads {
			if !l.source {
				keep = append(keep, l)
			}
		}
		rep.Loads = keep
	}
	bin, err := BuildPeer(ctx, cfg.Go, cfg.PeerDir)
	if err != nil {
		return nil, err
	}
	rep.bridgeBuilt = bin
	defer os.RemoveAll(filepath.Dir(bin))
	rabbit := FindProcess("beam.smp")
	if rabbit == 0 {
		return nil, errors.New("peers: no beam.smp process: RabbitMQ must run on this machine")
	}
	for _, qt := range cfg.QueueTypes {
		if err := rep.runQueueType(ctx, &cfg, qt, bin, rabbit); err != nil {
			return rep, err
		}
	}
	if cfg.Progress != nil {
		fmt.Fprintln(cfg.Progress)
	}
	return rep, nil
}

// SmtpSourcePath finds Postfix's smtp-source, "" if it is not installed.
func SmtpSourcePath() string {
	if p, err := exec.LookPath("smtp-source"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/smtp-source", "/usr/lib/postfix/sbin/smtp-source", "/usr/libexec/postfix/smtp-source"} {
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// BuildPeer builds the Go main package in dir into a new temporary
// directory and returns the binary's path; the caller removes the
// directory. The source is only read.
func BuildPeer(ctx context.Context, goCmd, dir string) (string, error) {
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return "", fmt.Errorf("peers: bridge source: %w", err)
	}
	out, err := os.MkdirTemp("", "lsmtp-peer-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(out, "gosmtp-amqp")
	cmd := exec.CommandContext(ctx, goCmd, "build", "-o", bin, ".")
	cmd.Dir = dir
	if msg, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(out)
		return "", fmt.Errorf("peers: building the bridge in %s: %v: %s", dir, err, bytes.TrimSpace(msg))
	}
	return bin, nil
}

// peerServer is one side of the comparison.
type peerServer struct {
	name  string
	srv   *Server
	check *QueueCheck
}

func (rep *PeersReport) runQueueType(ctx context.Context, cfg *PeersConfig, qt, bridgeBin string, rabbit int) (err error) {
	base := fmt.Sprintf("lsmtp.peers.%08x.%s", rand.Uint32(), qt)
	lq, lx, bq := base+".lsmtp", base+".lsmtp", base+".bridge"
	defer func() {
		if derr := deleteTopology(cfg.AMQPURL, []string{lq, bq}, []string{lx}); derr != nil {
			rep.Notes = append(rep.Notes, "cleanup: "+derr.Error())
		}
	}()
	l, err := StartLsmtp(ctx, LsmtpOptions{
		Binary: cfg.Lsmtp, Listen: cfg.Listen, Admin: cfg.Admin, Sink: "amqp",
		AMQPURL: cfg.AMQPURL, Exchange: lx, Queue: lq, RoutingKey: "inbound", LogDir: cfg.LogDir,
		ExtraArgs: append([]string{"--queue-type", qt}, cfg.LsmtpArgs...),
	})
	if err != nil {
		return fmt.Errorf("peers: %w", err)
	}
	defer l.Stop()
	rep.LsmtpArgs[qt] = strings.Join(l.Args, " ")
	b := &Server{Name: "go-smtp bridge", Addr: cfg.PeerListen,
		Args: []string{bridgeBin, "-addr", cfg.PeerListen, "-amqp", cfg.AMQPURL, "-queue", bq, "-queue-type", qt}}
	if err := b.start(cfg.LogDir, "bridge-"+qt); err != nil {
		return fmt.Errorf("peers: %w", err)
	}
	defer b.Stop()
	if err := b.waitGreeting(ctx, 15*time.Second); err != nil {
		return fmt.Errorf("peers: %w", err)
	}
	rep.BridgeArgs[qt] = "gosmtp-amqp " + strings.Join(b.Args[1:], " ")
	servers := []*peerServer{
		{name: PeerLsmtp, srv: l, check: &QueueCheck{URL: cfg.AMQPURL, Queue: lq}},
		{name: PeerBridge, srv: b, check: &QueueCheck{URL: cfg.AMQPURL, Queue: bq}},
	}
	for _, s := range servers {
		defer s.check.Close()
	}
	if rep.RabbitMQ == "" {
		rep.RabbitMQ = servers[0].check.Version()
	}
	// A short unmeasured run each: connections, goroutines and the
	// queue's first segment exist before the first measured run.
	for _, s := range servers {
		warm := LoadConfig{Targets: []string{s.srv.Addr}, Sessions: 50, PerConn: 20, Pipelining: true, Duration: 2 * time.Second}
		if _, err := Run(ctx, warm); err != nil {
			return fmt.Errorf("peers: warm-up of %s: %w", s.name, err)
		}
	}
	rep.Runs[qt] = map[string]map[string][]PeerRun{}
	for _, load := range rep.Loads {
		rep.Runs[qt][load.ID] = map[string][]PeerRun{}
		for pair := 0; pair < cfg.Pairs; pair++ {
			for _, s := range servers {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if cfg.Progress != nil {
					fmt.Fprintf(cfg.Progress, "\rpeers %-7s %-8s pair %d/%d %-6s ", qt, load.ID, pair+1, cfg.Pairs, s.name)
				}
				pr := rep.runOne(ctx, cfg, load, s, rabbit)
				if cfg.Progress != nil {
					fmt.Fprintf(cfg.Progress, "%7.0f msg/s rabbit %.3f ms/msg server %.3f ms/msg %s%s   ", pr.Rate, pr.RabbitCPUms, pr.ServerCPUms, pr.Check, pr.Err)
				}
				if pr.Err != "" || pr.Check != "" {
					rep.Notes = append(rep.Notes, fmt.Sprintf("%s queue, %s, %s, pair %d: %s", qt, load.ID, s.name, pair+1, strings.TrimSpace(pr.Check+" "+pr.Err)))
				}
				rep.Runs[qt][load.ID][s.name] = append(rep.Runs[qt][load.ID][s.name], pr)
				if !s.srv.Alive() {
					return fmt.Errorf("peers: %s exited; see %s", s.name, s.srv.LogPath)
				}
			}
		}
	}
	return nil
}

// runOne purges the server's queue, waits for RabbitMQ to be quiet, and
// runs the load against the server.
func (rep *PeersReport) runOne(ctx context.Context, cfg *PeersConfig, load peerLoad, s *peerServer, rabbit int) (pr PeerRun) {
	if _, err := s.check.Purge(); err != nil {
		pr.Err = err.Error()
		return pr
	}
	waitProcQuiet(rabbit, 0.2, 5*time.Second)
	var s0, s1, r0, r1 procSample
	var genCPU float64
	var t0 time.Time
	var window time.Duration
	if !load.source {
		lc := LoadConfig{Targets: []string{s.srv.Addr}, Sessions: cfg.Sessions, PerConn: cfg.PerConn, Pipelining: true,
			Duration: cfg.Window, Warmup: 2 * time.Second}
		lc.WindowStart = func() { s0, r0, t0 = sampleProc(s.srv.Pid()), sampleProc(rabbit), time.Now() }
		lc.WindowEnd = func() { s1, r1, window = sampleProc(s.srv.Pid()), sampleProc(rabbit), time.Since(t0) }
		res, err := Run(ctx, lc)
		if err != nil {
			pr.Err = err.Error()
		}
		if res == nil {
			return pr
		}
		pr.Messages, pr.Rate, genCPU = res.WindowOK, res.Rate, res.GenCPU*window.Seconds()
		counted, err := s.check.Settle(ctx, int(res.OK), time.Second)
		if err != nil {
			pr.Check = err.Error()
		} else if ok, note := Verdict(res.OK, res.Tempfail, res.Lost, counted); !ok || res.Tempfail+res.Lost > 0 {
			pr.Check = fmt.Sprintf("%d 4xx, %d lost; broker %s", res.Tempfail, res.Lost, note)
		}
	} else {
		args := []string{"-s", strconv.Itoa(cfg.SourceSessions), "-m", strconv.Itoa(cfg.SourceMessages), "-l", "2048"}
		if load.keepConn {
			args = append(args, "-d")
		}
		args = append(args, "-f", "bench@lsmtp.test", "-t", "rcpt@lsmtp.test", s.srv.Addr)
		cmd := exec.CommandContext(ctx, cfg.SmtpSource, args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		s0, r0, t0 = sampleProc(s.srv.Pid()), sampleProc(rabbit), time.Now()
		err := cmd.Run()
		window = time.Since(t0)
		s1, r1 = sampleProc(s.srv.Pid()), sampleProc(rabbit)
		if cmd.ProcessState != nil {
			genCPU = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
		}
		if err != nil {
			pr.Err = fmt.Sprintf("smtp-source: %v", err)
		}
		if msg := strings.TrimSpace(out.String()); msg != "" {
			lines := strings.Split(msg, "\n")
			pr.Err = strings.TrimSpace(pr.Err + fmt.Sprintf(" smtp-source said (%d lines): %s", len(lines), lines[0]))
		}
		counted, cerr := s.check.Settle(ctx, cfg.SourceMessages, time.Second)
		if cerr != nil {
			pr.Check = cerr.Error()
		} else if counted != cfg.SourceMessages {
			pr.Check = fmt.Sprintf("broker holds %d of %d", counted, cfg.SourceMessages)
		}
		pr.Messages = int64(counted)
		pr.Rate = float64(counted) / window.Seconds()
	}
	pr.ServerCPUms, _ = perMessage(s0, s1, pr.Messages)
	pr.RabbitCPUms, pr.RabbitSyscalls = perMessage(r0, r1, pr.Messages)
	if pr.Messages > 0 {
		pr.ClientCPUms = genCPU * 1000 / float64(pr.Messages)
	}
	return pr
}

// deleteTopology deletes queues and exchanges a run declared.
func deleteTopology(url string, queues, exchanges []string) error {
	conn, err := amqp.Dial(url)
	if err != nil {
		return err
	}
	defer conn.Close()
	var errs []error
	for _, q := range queues {
		ch, err := conn.Channel()
		if err != nil {
			return err
		}
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			errs = append(errs, fmt.Errorf("delete queue %s: %w", q, err))
		} else {
			ch.Close()
		}
	}
	for _, x := range exchanges {
		ch, err := conn.Channel()
		if err != nil {
			return err
		}
		if err := ch.ExchangeDelete(x, false, false); err != nil {
			errs = append(errs, fmt.Errorf("delete exchange %s: %w", x, err))
		} else {
			ch.Close()
		}
	}
	return errors.Join(errs...)
}
