package main

import (
	"context"
	"flag"
	"os"

	"github.com/nats-io/nats.go"

	"github.com/lsmtp/lsmtp/bench"
	"github.com/lsmtp/lsmtp/broker"
)

func runNATS(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("nats", flag.ContinueOnError)
	var cfg bench.NATSConfig
	fs.BoolVar(&cfg.Quick, "quick", false, "one pair with 4 s windows (about a minute)")
	fs.StringVar(&cfg.Lsmtp, "lsmtp", "bin/lsmtp", "lsmtp binary")
	fs.StringVar(&cfg.NATSURL, "nats-url", nats.DefaultURL, "NATS server with JetStream, on this machine (its CPU is read from /proc)")
	fs.StringVar(&cfg.AMQPURL, "amqp-url", broker.DefaultURL, "RabbitMQ, on this machine")
	fs.IntVar(&cfg.Pairs, "pairs", 0, "alternations of ceiling, lsmtp → JetStream, lsmtp → RabbitMQ (default 3, 1 with -quick)")
	fs.IntVar(&cfg.Sessions, "sessions", 1000, "pipelined sessions of the load generator")
	fs.IntVar(&cfg.PerConn, "per-conn", 100, "messages per connection of the load generator")
	fs.DurationVar(&cfg.Window, "window", 0, "measurement window of every run (default 10s, 4s with -quick)")
	fs.IntVar(&cfg.Pending, "pending", 512, "the ceiling's unacknowledged publishes at most")
	fs.StringVar(&cfg.ListenNATS, "listen-nats", "127.0.0.1:2543", "listen address of lsmtp --sink nats")
	fs.StringVar(&cfg.AdminNATS, "admin-nats", "127.0.0.1:9043", "its admin address")
	fs.StringVar(&cfg.ListenAMQP, "listen-amqp", "127.0.0.1:2544", "listen address of lsmtp --sink amqp")
	fs.StringVar(&cfg.AdminAMQP, "admin-amqp", "127.0.0.1:9044", "its admin address")
	fs.StringVar(&cfg.LogDir, "logs", "", "directory for server logs (default: a new temporary directory)")
	out := fs.String("out", "bench/nats.md", "file the section is written into (its earlier version replaced, the rest kept); - for standard output")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg.Progress = os.Stderr
	rep, err := bench.RunNATS(ctx, cfg)
	if rep != nil {
		if werr := bench.WriteSection(*out, "nats", rep); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}
