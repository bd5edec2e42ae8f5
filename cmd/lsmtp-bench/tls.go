package main

import (
	"context"
	"flag"
	"os"

	"github.com/lsmtp/lsmtp/bench"
)

func runTLS(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("tls", flag.ContinueOnError)
	var cfg bench.TLSConfig
	fs.StringVar(&cfg.Lsmtp, "lsmtp", "bin/lsmtp", "lsmtp binary")
	fs.StringVar(&cfg.PeerDir, "peer", "../shared/peers/gosmtp-amqp", "source of the go-smtp bridge, built into a temporary directory for the run")
	fs.StringVar(&cfg.Go, "go", "go", "go command that builds the bridge")
	fs.IntVar(&cfg.Pairs, "pairs", 3, "rounds of every load (each runs every server and mode once)")
	fs.DurationVar(&cfg.Window, "window", 0, "measurement window per run (default 4s)")
	fs.IntVar(&cfg.Sessions, "sessions", 50, "sessions of the message loads")
	fs.IntVar(&cfg.Dialers, "dialers", 16, "clients of the handshake loads")
	fs.IntVar(&cfg.Size, "size", 2048, "message size in octets")
	fs.IntVar(&cfg.IdleConns, "idle", 1000, "idle sessions of the memory row")
	fs.IntVar(&cfg.BasePort, "base-port", 2551, "first of the 8 ports on 127.0.0.1 the servers listen on (lsmtp's admin on base+10 and base+11)")
	fs.StringVar(&cfg.LogDir, "logs", "", "directory for server logs (default: a new temporary directory)")
	out := fs.String("out", "bench/tls.md", "file the section is written into (its earlier version replaced, the rest kept); - for standard output")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg.Progress = os.Stderr
	rep, err := bench.RunTLS(ctx, cfg)
	if rep != nil {
		if werr := bench.WriteSection(*out, "tls", rep); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}
