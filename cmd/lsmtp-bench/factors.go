package main

import (
	"context"
	"encoding/json"
	"flag"
	"os"
	"strings"

	"github.com/lsmtp/lsmtp/bench"
	"github.com/lsmtp/lsmtp/broker"
)

func runFactors(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("factors", flag.ContinueOnError)
	var cfg bench.FactorConfig
	fs.StringVar(&cfg.AMQPURL, "amqp-url", broker.DefaultURL, "RabbitMQ, on this machine (its CPU is read from /proc)")
	qtypes := fs.String("queue-types", "classic,quorum", "queue types, each gets every row")
	fs.IntVar(&cfg.Messages, "messages", 40000, "messages per row and run")
	fs.IntVar(&cfg.Runs, "runs", 3, "runs of every row, alternating rows within a run")
	fs.IntVar(&cfg.Size, "size", 2300, "body octets before trace fields")
	fs.IntVar(&cfg.Window, "window", 512, "unconfirmed publishes in all, split over a row's channels")
	fs.IntVar(&cfg.Rcpts, "rcpts", 1, "envelope recipients")
	fs.StringVar(&cfg.Rows, "rows", "", "run only rows whose ID matches this regexp")
	fs.StringVar(&cfg.Title, "title", "", "the section's heading (default: the factor table's)")
	name := fs.String("section", "factors", "name of the section in -out: a run under another name leaves the factor table in place")
	raw := fs.String("json", "", "also write every run's figures to this file as JSON")
	out := fs.String("out", "bench/factors.md", "file the section is written into (its earlier version replaced, the rest kept); - for standard output")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg.QueueTypes = strings.Split(*qtypes, ",")
	cfg.Progress = os.Stderr
	rep, err := bench.RunFactors(ctx, cfg)
	if rep != nil {
		if werr := bench.WriteSection(*out, *name, rep); werr != nil && err == nil {
			err = werr
		}
		if *raw != "" {
			b, jerr := json.MarshalIndent(rep, "", " ")
			if jerr == nil {
				jerr = os.WriteFile(*raw, b, 0o644)
			}
			if jerr != nil && err == nil {
				err = jerr
			}
		}
	}
	return err
}
