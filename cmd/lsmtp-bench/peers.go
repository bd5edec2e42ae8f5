package main

import (
	"context"
	"flag"
	"os"
	"strings"

	"github.com/lsmtp/lsmtp/bench"
	"github.com/lsmtp/lsmtp/broker"
)

func runPeers(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("peers", flag.ContinueOnError)
	var cfg bench.PeersConfig
	fs.StringVar(&cfg.Lsmtp, "lsmtp", "bin/lsmtp", "lsmtp binary")
	fs.StringVar(&cfg.PeerDir, "peer", "../shared/peers/gosmtp-amqp", "source of the go-smtp bridge, built into a temporary directory for the run")
	fs.StringVar(&cfg.Go, "go", "go", "go command that builds the bridge")
	fs.StringVar(&cfg.AMQPURL, "amqp-url", broker.DefaultURL, "RabbitMQ, on this machine (its CPU is read from /proc)")
	qtypes := fs.String("queue-types", "classic,quorum", "queue types; every load runs on each")
	fs.IntVar(&cfg.Pairs, "pairs", 3, "lsmtp, bridge alternations per load")
	fs.IntVar(&cfg.Sessions, "sessions", 200, "pipelined sessions of the load generator")
	fs.IntVar(&cfg.PerConn, "per-conn", 50, "messages per connection of the load generator")
	fs.DurationVar(&cfg.Window, "window", 0, "the load generator's measurement window (default 8s)")
	fs.StringVar(&cfg.SmtpSource, "smtp-source", "", "Postfix smtp-source (default: found on PATH or in Postfix's directories; none to skip)")
	fs.IntVar(&cfg.SourceSessions, "source-sessions", 50, "smtp-source -s")
	fs.IntVar(&cfg.SourceMessages, "source-messages", 10000, "smtp-source -m")
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:2541", "lsmtp's listen address")
	fs.StringVar(&cfg.Admin, "admin", "127.0.0.1:9041", "lsmtp's admin address")
	fs.StringVar(&cfg.PeerListen, "peer-listen", "127.0.0.1:2542", "the bridge's listen address")
	fs.StringVar(&cfg.LogDir, "logs", "", "directory for server logs (default: a new temporary directory)")
	loads := fs.String("loads", "", "comma-separated loads to run (pipe, source-d, source; default all)")
	lsmtpArgs := fs.String("lsmtp-args", "", "extra lsmtp flags, space-separated, after the run's own (to measure a setting)")
	out := fs.String("out", "bench/factors.md", "file the section is written into (its earlier version replaced, the rest kept); - for standard output")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg.QueueTypes = strings.Split(*qtypes, ",")
	if *loads != "" {
		cfg.OnlyLoads = strings.Split(*loads, ",")
	}
	cfg.LsmtpArgs = strings.Fields(*lsmtpArgs)
	cfg.Progress = os.Stderr
	rep, err := bench.RunPeers(ctx, cfg)
	if rep != nil {
		if werr := bench.WriteSection(*out, "peers", rep); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}
