package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/lsmtp/lsmtp/bench"
)

func runSuite(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("suite", flag.ContinueOnError)
	var cfg bench.SuiteConfig
	listen := fs.String("listen", "127.0.0.1:2526,127.0.0.1:2527", "lsmtp listen addresses, one per server process the largest rows need")
	admin := fs.String("admin", "127.0.0.1:9026,127.0.0.1:9027", "lsmtp admin (pprof) addresses, one per listen address")
	fs.BoolVar(&cfg.Quick, "quick", false, "a small subset that runs in under 2 minutes")
	fs.StringVar(&cfg.Lsmtp, "lsmtp", "bin/lsmtp", "lsmtp binary")
	fs.StringVar(&cfg.SinkListen, "smtp-sink-listen", "127.0.0.1:2528", "address for Postfix smtp-sink")
	fs.StringVar(&cfg.SmtpSink, "smtp-sink", "", "smtp-sink binary (default: found on PATH or in Postfix's directories; none to skip)")
	fs.StringVar(&cfg.AMQPURL, "amqp-url", "amqp://guest:guest@127.0.0.1:5672/", "RabbitMQ for the server and the count check")
	fs.StringVar(&cfg.Exchange, "exchange", "lsmtp.bench", "exchange the bench server publishes to")
	fs.StringVar(&cfg.Queue, "queue", "lsmtp.bench", "queue the bench server declares; purged before and counted after every row")
	fs.StringVar(&cfg.RoutingKey, "routing-key", "bench", "routing key of the bench server")
	fs.IntVar(&cfg.MaxConnsPerIP, "max-conns-per-ip", 0, "lsmtp --max-conns-per-ip for the run (0: no limit); the generator then puts that many sessions on each 127.0.0.x")
	fs.StringVar(&cfg.Out, "out", "BENCHMARKS.md", "report to write")
	fs.StringVar(&cfg.PlotDir, "plots", "bench", "directory for throughput.png and latency.png")
	fs.StringVar(&cfg.ProfileDir, "profile", "", "capture the server's CPU and allocation profiles of every lsmtp row into this directory")
	fs.StringVar(&cfg.Rows, "rows", "", "run only rows whose ID matches this regexp (e.g. 'loop|pipe-300')")
	fs.DurationVar(&cfg.Window, "window", 0, "measurement window per row (default 10s, 4s with -quick)")
	fs.StringVar(&cfg.LogDir, "logs", "", "directory for server logs (default: a new temporary directory)")
	fs.StringVar(&cfg.Notes, "notes", "bench/notes.md", "hand-written sections appended to the report as they are (none: empty)")
	sections := fs.String("sections", "factors,peers,nats,tls", "sections measured after the rows: factors (lsmtp-bench factors), peers (lsmtp-bench peers), nats (lsmtp-bench nats), tls (lsmtp-bench tls); none with -quick unless given")
	if err := fs.Parse(args); err != nil {
		return err
	}
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "sections" })
	if cfg.Quick && !given {
		*sections = ""
	}
	for _, name := range strings.Split(*sections, ",") {
		switch name {
		case "factors":
			cfg.Factors = &bench.FactorConfig{}
		case "peers":
			cfg.Peers = &bench.PeersConfig{}
		case "nats":
			cfg.NATS = &bench.NATSConfig{Quick: cfg.Quick}
		case "tls":
			cfg.TLS = &bench.TLSConfig{}
		case "", "none":
		default:
			return fmt.Errorf("suite: unknown section %q (want factors, peers, nats, tls)", name)
		}
	}
	cfg.Listen = strings.Split(*listen, ",")
	cfg.Admin = strings.Split(*admin, ",")
	cfg.Command = "lsmtp-bench suite " + strings.Join(args, " ")
	cfg.Progress = os.Stderr
	return bench.RunSuite(ctx, cfg)
}
