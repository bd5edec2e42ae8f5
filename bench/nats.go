package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/lsmtp/lsmtp/broker"
)

// NATSConfig configures the JetStream section: lsmtp --sink nats beside
// a raw nats.go publisher (the ceiling) and beside lsmtp --sink amqp,
// under the same SMTP load.
type NATSConfig struct {
	Quick   bool   // one pair and shorter windows
	Lsmtp   string // lsmtp binary
	NATSURL string // NATS server with JetStream, on this machine
	AMQPURL string // RabbitMQ, on this machine
	Pairs   int    // alternations of ceiling, lsmtp → JetStream, lsmtp → RabbitMQ

	Sessions int           // the load generator's sessions (pipelined)
	PerConn  int           // messages per connection
	Window   time.Duration // measurement window of every run

	// Pending is the ceiling's bound on published messages not yet
	// acknowledged by JetStream.
	Pending int

	ListenNATS, AdminNATS string // lsmtp --sink nats
	ListenAMQP, AdminAMQP string // lsmtp --sink amqp
	LogDir                string // server logs; "" makes a temporary directory
	Progress              io.Writer
}

func (c *NATSConfig) setDefaults() {
	if c.Lsmtp == "" {
		c.Lsmtp = "bin/lsmtp"
	}
	if c.NATSURL == "" {
		c.NATSURL = nats.DefaultURL
	}
	if c.AMQPURL == "" {
		c.AMQPURL = broker.DefaultURL
	}
	if c.Pairs <= 0 {
		c.Pairs = 3
		if c.Quick {
			c.Pairs = 1
		}
	}
	// The loopback rows' load through RabbitMQ (loop-amqp-k100): many
	// messages in flight, since both brokers acknowledge in batches that
	// grow with what is outstanding.
	if c.Sessions <= 0 {
		c.Sessions = 1000
	}
	if c.PerConn <= 0 {
		c.PerConn = 100
	}
	if c.Window <= 0 {
		c.Window = 10 * time.Second
		if c.Quick {
			c.Window = 4 * time.Second
		}
	}
	if c.Pending <= 0 {
		c.Pending = 512
	}
	if c.ListenNATS == "" {
		c.ListenNATS = "127.0.0.1:2543"
	}
	if c.AdminNATS == "" {
		c.AdminNATS = "127.0.0.1:9043"
	}
	if c.ListenAMQP == "" {
		c.ListenAMQP = "127.0.0.1:2544"
	}
	if c.AdminAMQP == "" {
		c.AdminAMQP = "127.0.0.1:9044"
	}
}

// Runs of the JetStream section, in the order of each pair.
const (
	NATSCeiling = "ceiling"
	NATSLsmtp   = "lsmtp-nats"
	NATSAMQP    = "lsmtp-amqp"
)

// NATSRun is one run of the ceiling or of one lsmtp.
type NATSRun struct {
	Rate        float64 // messages/s confirmed (ceiling) or answered 250 and in the broker (lsmtp)
	Messages    int64   // messages the per-message figures count
	LsmtpCPUms  float64 // per message; 0 for the ceiling
	BrokerCPUms float64 // nats-server or RabbitMQ
	BrokerSys   float64 // its read and write system calls per message; -1 unknown
	ClientCPUms float64 // the load generator, or the ceiling's publisher
	BusyCores   float64 // the whole machine's busy CPU over the window, in cores
	Check       string  // the broker check, "" when it passed
	Err         string
}

// NATSReport is what the JetStream section measured.
type NATSReport struct {
	Config     NATSConfig
	Runs       map[string][]NATSRun // NATSCeiling, ... → runs in pair order
	BodySize   int                  // octets of a message lsmtp published to JetStream (the ceiling's body)
	Headers    []string             // its header names
	NATSServer string
	RabbitMQ   string
	Stream     string
	LsmtpNATS  string // command lines
	LsmtpAMQP  string
	Started    time.Time
	Took       time.Duration
	Load       [2]float64
	Notes      []string
}

// StreamCheck purges a JetStream stream before a run and counts it after,
// as QueueCheck does for a RabbitMQ queue.
type StreamCheck struct {
	JS     jetstream.JetStream
	Stream string
}

// Purge empties the stream.
func (s *StreamCheck) Purge(ctx context.Context) error {
	st, err := s.JS.Stream(ctx, s.Stream)
	if err == nil {
		err = st.Purge(ctx)
	}
	if err != nil {
		return fmt.Errorf("stream check: purge %q: %w", s.Stream, err)
	}
	return nil
}

// Count is the messages the stream holds.
func (s *StreamCheck) Count(ctx context.Context) (int, error) {
	st, err := s.JS.Stream(ctx, s.Stream)
	if err != nil {
		return 0, fmt.Errorf("stream check: %q: %w", s.Stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("stream check: %q: %w", s.Stream, err)
	}
	return int(info.State.Msgs), nil
}

// RunNATS starts lsmtp with each sink, then runs each pair: the raw
// nats.go ceiling, lsmtp → JetStream and lsmtp → RabbitMQ under the same
// SMTP load, each into a stream or queue purged before it. The stream and
// the queue are deleted at the end.
func RunNATS(ctx context.Context, cfg NATSConfig) (rep *NATSReport, err error) {
	cfg.setDefaults()
	rep = &NATSReport{Config: cfg, Runs: map[string][]NATSRun{}, Started: time.Now()}
	rep.Load[0] = loadAvg()
	defer func() { rep.Took, rep.Load[1] = time.Since(rep.Started), loadAvg() }()
	if cfg.LogDir == "" {
		if cfg.LogDir, err = os.MkdirTemp("", "lsmtp-nats-"); err != nil {
			return nil, err
		}
		rep.Config.LogDir = cfg.LogDir
	}
	natsPid, rabbit := FindProcess("nats-server"), FindProcess("beam.smp")
	if natsPid == 0 || rabbit == 0 {
		return nil, errors.New("nats: nats-server and RabbitMQ (beam.smp) must run on this machine")
	}
	nc, err := nats.Connect(cfg.NATSURL, nats.Name("lsmtp-bench"))
	if err != nil {
		return nil, fmt.Errorf("nats: connect: %w", err)
	}
	defer nc.Close()
	rep.NATSServer = nc.ConnectedServerVersion()
	// An acknowledgement that never comes fails its publish instead of
	// holding the ceiling's window.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(10*time.Second), jetstream.WithPublishAsyncMaxPending(2*cfg.Pending))
	if err != nil {
		return nil, err
	}

	tag := fmt.Sprintf("%08x", rand.Uint32())
	rep.Stream = "LSMTP_BENCH_" + strings.ToUpper(tag)
	subject := "lsmtp.bench." + tag
	queue := "lsmtp.bench.nats." + tag
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if derr := js.DeleteStream(dctx, rep.Stream); derr != nil && !errors.Is(derr, jetstream.ErrStreamNotFound) {
			rep.Notes = append(rep.Notes, "cleanup: delete stream: "+derr.Error())
		}
		if derr := deleteTopology(cfg.AMQPURL, []string{queue}, []string{queue}); derr != nil {
			rep.Notes = append(rep.Notes, "cleanup: "+derr.Error())
		}
	}()
	ln, err := StartLsmtp(ctx, LsmtpOptions{
		Binary: cfg.Lsmtp, Listen: cfg.ListenNATS, Admin: cfg.AdminNATS, Sink: "nats", LogDir: cfg.LogDir,
		ExtraArgs: []string{"--nats-url", cfg.NATSURL, "--nats-stream", rep.Stream, "--nats-subject", subject},
	})
	if err != nil {
		return rep, fmt.Errorf("nats: %w", err)
	}
	defer ln.Stop()
	rep.LsmtpNATS = strings.Join(ln.Args, " ")
	la, err := StartLsmtp(ctx, LsmtpOptions{
		Binary: cfg.Lsmtp, Listen: cfg.ListenAMQP, Admin: cfg.AdminAMQP, Sink: "amqp", LogDir: cfg.LogDir,
		AMQPURL: cfg.AMQPURL, Exchange: queue, Queue: queue, RoutingKey: "inbound",
	})
	if err != nil {
		return rep, fmt.Errorf("nats: %w", err)
	}
	defer la.Stop()
	rep.LsmtpAMQP = strings.Join(la.Args, " ")
	streamCheck := &StreamCheck{JS: js, Stream: rep.Stream}
	queueCheck := &QueueCheck{URL: cfg.AMQPURL, Queue: queue}
	defer queueCheck.Close()
	rep.RabbitMQ = queueCheck.Version()

	// A short unmeasured run each: connections, goroutines and the
	// stream's and queue's first files exist before the first measured
	// run. lsmtp's last message to JetStream is then the ceiling's.
	for _, srv := range []*Server{ln, la} {
		warm := LoadConfig{Targets: []string{srv.Addr}, Sessions: 50, PerConn: 20, Pipelining: true, Duration: 2 * time.Second}
		if _, err := Run(ctx, warm); err != nil {
			return rep, fmt.Errorf("nats: warm-up of %s: %w", srv.Name, err)
		}
	}
	sample, err := lastMessage(ctx, js, rep.Stream, subject)
	if err != nil {
		return rep, fmt.Errorf("nats: lsmtp's message for the ceiling: %w", err)
	}
	rep.BodySize = len(sample.Data)
	for k := range sample.Header {
		rep.Headers = append(rep.Headers, k)
	}

	for pair := 0; pair < cfg.Pairs; pair++ {
		for _, name := range []string{NATSCeiling, NATSLsmtp, NATSAMQP} {
			if ctx.Err() != nil {
				return rep, ctx.Err()
			}
			if cfg.Progress != nil {
				fmt.Fprintf(cfg.Progress, "\rnats pair %d/%d %-10s ", pair+1, cfg.Pairs, name)
			}
			var nr NATSRun
			switch name {
			case NATSCeiling:
				if err := streamCheck.Purge(ctx); err != nil {
					return rep, err
				}
				waitProcQuiet(natsPid, 0.2, 5*time.Second)
				nr = natsCeilingRun(ctx, js, natsPid, subject, sample, cfg.Pending, cfg.Window)
			case NATSLsmtp:
				nr = natsLoadRun(ctx, &cfg, ln, natsPid, streamCheck.Purge, streamCheck.Count)
			case NATSAMQP:
				purge := func(context.Context) error { _, err := queueCheck.Purge(); return err }
				count := func(context.Context) (int, error) { return queueCheck.Count() }
				nr = natsLoadRun(ctx, &cfg, la, rabbit, purge, count)
			}
			if cfg.Progress != nil {
				fmt.Fprintf(cfg.Progress, "%7.0f msg/s broker %.3f ms/msg lsmtp %.3f ms/msg %s%s   ", nr.Rate, nr.BrokerCPUms, nr.LsmtpCPUms, nr.Check, nr.Err)
			}
			if nr.Err != "" || nr.Check != "" {
				rep.Notes = append(rep.Notes, fmt.Sprintf("%s, pair %d: %s", name, pair+1, strings.TrimSpace(nr.Check+" "+nr.Err)))
			}
			rep.Runs[name] = append(rep.Runs[name], nr)
			for _, srv := range []*Server{ln, la} {
				if !srv.Alive() {
					return rep, fmt.Errorf("nats: %s exited; see %s", srv.Name, srv.LogPath)
				}
			}
		}
	}
	if cfg.Progress != nil {
		fmt.Fprintln(cfg.Progress)
	}
	// The last run's messages go before the stream is deleted.
	_ = streamCheck.Purge(ctx)
	return rep, nil
}

// lastMessage is the newest message on subject in stream.
func lastMessage(ctx context.Context, js jetstream.JetStream, stream, subject string) (*jetstream.RawStreamMsg, error) {
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	return st.GetLastMsgForSubject(ctx, subject)
}

// natsLoadRun purges the server's stream or queue, waits for the broker
// to be quiet, runs the SMTP load against srv, and counts what reached
// the broker.
func natsLoadRun(ctx context.Context, cfg *NATSConfig, srv *Server, brokerPid int,
	purge func(context.Context) error, count func(context.Context) (int, error)) (nr NATSRun) {
	if err := purge(ctx); err != nil {
		nr.Err = err.Error()
		return nr
	}
	waitProcQuiet(brokerPid, 0.2, 5*time.Second)
	var s0, s1, b0, b1 procSample
	lc := LoadConfig{Targets: []string{srv.Addr}, Sessions: cfg.Sessions, PerConn: cfg.PerConn, Pipelining: true,
		Duration: cfg.Window, Warmup: 2 * time.Second}
	var t0 time.Time
	var busy0 time.Duration
	var window time.Duration
	lc.WindowStart = func() { s0, b0, busy0, t0 = sampleProc(srv.Pid()), sampleProc(brokerPid), SystemCPU(), time.Now() }
	lc.WindowEnd = func() {
		s1, b1, window = sampleProc(srv.Pid()), sampleProc(brokerPid), time.Since(t0)
		nr.BusyCores = (SystemCPU() - busy0).Seconds() / window.Seconds()
	}
	res, err := Run(ctx, lc)
	if err != nil {
		nr.Err = err.Error()
	}
	if res == nil {
		return nr
	}
	nr.Messages, nr.Rate = res.WindowOK, res.Rate
	nr.LsmtpCPUms, _ = perMessage(s0, s1, nr.Messages)
	nr.BrokerCPUms, nr.BrokerSys = perMessage(b0, b1, nr.Messages)
	if nr.Messages > 0 {
		nr.ClientCPUms = res.GenCPU * window.Seconds() * 1000 / float64(nr.Messages)
	}
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	counted, err := settle(sctx, func() (int, error) { return count(ctx) }, int(res.OK), time.Second)
	cancel()
	if err != nil {
		nr.Check = err.Error()
	} else if ok, note := Verdict(res.OK, res.Tempfail, res.Lost, counted); !ok || res.Tempfail+res.Lost > 0 {
		nr.Check = fmt.Sprintf("%d 4xx, %d lost; broker %s", res.Tempfail, res.Lost, note)
	}
	return nr
}

// natsCeilingRun publishes sample to subject for window, at most pending
// unacknowledged (NATSCeiling), and checks that the stream holds every
// acknowledged message.
func natsCeilingRun(ctx context.Context, js jetstream.JetStream, natsPid int, subject string, sample *jetstream.RawStreamMsg, pending int, window time.Duration) (nr NATSRun) {
	p0, b0, busy0 := sampleProc(0), sampleProc(natsPid), SystemCPU()
	res, err := NATSCeilingPublish(ctx, js, subject, sample.Data, sample.Header, pending, window)
	p1, b1 := sampleProc(0), sampleProc(natsPid)
	if err != nil {
		nr.Err = err.Error()
	}
	if res.Elapsed > 0 {
		nr.BusyCores = (SystemCPU() - busy0).Seconds() / res.Elapsed.Seconds()
	}
	nr.Messages, nr.Rate = res.Acked, res.Rate()
	nr.BrokerCPUms, nr.BrokerSys = perMessage(b0, b1, nr.Messages)
	nr.ClientCPUms, _ = perMessage(p0, p1, nr.Messages)
	if res.Failed > 0 {
		nr.Check = fmt.Sprintf("%d publishes failed", res.Failed)
	}
	return nr
}

// NATSCeilingResult is what a ceiling run got back from JetStream.
type NATSCeilingResult struct {
	Acked, Failed int64
	Elapsed       time.Duration // from the first publish to the last acknowledgement
}

// Rate is acknowledged messages per second.
func (r NATSCeilingResult) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Acked) / r.Elapsed.Seconds()
}

// NATSCeilingPublish is what JetStream takes from a plain nats.go publisher:
// asynchronous publishes (PublishMsgAsync) of body with header on one
// connection, at most pending of them unacknowledged, each with a
// Nats-Msg-Id of its own (JetStream checks it against its duplicate
// window, as for lsmtp's messages), for duration. lsmtp cannot publish
// faster than this.
func NATSCeilingPublish(ctx context.Context, js jetstream.JetStream, subject string, body []byte, header nats.Header, pending int, duration time.Duration) (NATSCeilingResult, error) {
	if pending < 1 {
		return NATSCeilingResult{}, errors.New("nats ceiling: pending must be at least 1")
	}
	// The window is ours: a slot is taken before a publish and given
	// back when its acknowledgement (or error) arrived, so that
	// PublishMsgAsync never stalls on a limit of its own.
	slots := make(chan struct{}, pending)
	futures := make(chan jetstream.PubAckFuture, pending)
	var acked, failed atomic.Int64
	collected := make(chan error, 1)
	go func() {
		var first error
		for f := range futures {
			select {
			case <-f.Ok():
				acked.Add(1)
			case err := <-f.Err():
				failed.Add(1)
				if first == nil {
					first = err
				}
			}
			<-slots
		}
		collected <- first
	}()
	prefix := fmt.Sprintf("ceiling-%08x-", rand.Uint32())
	start := time.Now()
	stopAt := start.Add(duration)
	var err error
	for n := 0; time.Now().Before(stopAt) && ctx.Err() == nil; n++ {
		h := make(nats.Header, len(header))
		for k, v := range header {
			h[k] = v
		}
		h.Set(jetstream.MsgIDHeader, prefix+fmt.Sprint(n))
		slots <- struct{}{} // waits while pending are unacknowledged
		var f jetstream.PubAckFuture
		f, err = js.PublishMsgAsync(&nats.Msg{Subject: subject, Header: h, Data: body})
		if err != nil {
			<-slots
			break
		}
		futures <- f
	}
	close(futures)
	cerr := <-collected
	res := NATSCeilingResult{Acked: acked.Load(), Failed: failed.Load(), Elapsed: time.Since(start)}
	return res, errors.Join(err, cerr)
}
