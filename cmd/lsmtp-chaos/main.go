// Command lsmtp-chaos puts lsmtp under sustained SMTP load while breaking
// what it depends on — its broker connection, RabbitMQ itself, its own
// process — and then checks that every message answered 250 is in the
// queue (see package chaos). It exits 1 when a message was lost (or the
// run could not show anything), 2 on a usage or set-up error.
//
//	lsmtp-chaos [--duration 3m] [--sessions 20] [--fault-interval 10s] [--faults cut,rabbit-restart,lsmtp-restart] ...
//
// It stops the local RabbitMQ application (rabbitmqctl stop_app) during
// the run and always starts it again, also on SIGINT or SIGTERM; other
// users of that RabbitMQ see the outages.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/lsmtp/lsmtp/internal/chaos"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	cfg := chaos.Defaults()
	fs := flag.NewFlagSet("lsmtp-chaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "how long the load runs; faults are injected within it")
	fs.IntVar(&cfg.Sessions, "sessions", cfg.Sessions, "concurrent SMTP sessions")
	fs.IntVar(&cfg.PerConn, "per-conn", cfg.PerConn, "messages per connection before QUIT and a new connection")
	fs.BoolVar(&cfg.Pipelining, "pipelining", cfg.Pipelining, "send MAIL, RCPT and DATA in one write (RFC 2920)")
	fs.IntVar(&cfg.Size, "size", cfg.Size, "message size in octets")
	fs.Float64Var(&cfg.Rate, "rate", cfg.Rate, "messages per second over all sessions at most; 0 for as fast as lsmtp answers")
	faults := fs.String("faults", "cut,rabbit-restart,lsmtp-restart", "faults injected in turn: cut (broker connection through the fault proxy), rabbit-restart (rabbitmqctl stop_app/start_app), lsmtp-restart (SIGTERM and start again); empty for none")
	fs.DurationVar(&cfg.FaultInterval, "fault-interval", cfg.FaultInterval, "time from the start of one fault to the start of the next")
	fs.DurationVar(&cfg.CutOutage, "cut-outage", cfg.CutOutage, "how long the fault proxy refuses new broker connections after a cut; 0 cuts only")
	fs.DurationVar(&cfg.RabbitOutage, "rabbit-outage", cfg.RabbitOutage, "how long the RabbitMQ application stays stopped")
	fs.StringVar(&cfg.LSMTP, "lsmtp", "", "lsmtp binary to run (default: go build ./cmd/lsmtp into a temporary directory)")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "lsmtp's --shutdown-timeout")
	fs.DurationVar(&cfg.ConfirmTimeout, "confirm-timeout", cfg.ConfirmTimeout, "lsmtp's --confirm-timeout")
	fs.StringVar(&cfg.RabbitAddr, "rabbit-addr", cfg.RabbitAddr, "RabbitMQ's AMQP address (guest/guest); the fault proxy sits in front of it")
	fs.StringVar(&cfg.Name, "name", "", "exchange and queue name (default lsmtp-chaos.<random>)")
	fs.BoolVar(&cfg.KeepQueue, "keep-queue", false, "leave the exchange and queue (emptied by the check) in RabbitMQ")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "lsmtp-chaos: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	var err error
	if cfg.Faults, err = chaos.ParseFaults(*faults); err != nil {
		fmt.Fprintln(stderr, "lsmtp-chaos:", err)
		return 2
	}
	cfg.Log = stderr

	// The first SIGINT or SIGTERM ends the load early; the run still
	// restores RabbitMQ, stops lsmtp and checks the queue. Later signals
	// are caught too, so that RabbitMQ is never left stopped.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sig)
	go func() {
		n := 0
		for s := range sig {
			n++
			if n == 1 {
				fmt.Fprintf(stderr, "lsmtp-chaos: %s: ending the load; restoring RabbitMQ and checking the queue\n", s)
				cancel()
				continue
			}
			fmt.Fprintf(stderr, "lsmtp-chaos: %s: still restoring RabbitMQ and cleaning up, please wait\n", s)
		}
	}()

	sum, err := chaos.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "lsmtp-chaos:", strings.TrimSpace(err.Error()))
		return 2
	}
	sum.WriteTo(stdout)
	if sum.Failed() {
		return 1
	}
	return 0
}
