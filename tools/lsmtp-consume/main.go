// Command lsmtp-consume reads the messages lsmtp published to RabbitMQ, to
// watch a pipeline or to keep what arrives: it prints each message's
// envelope (properties, smtp-* headers, trace fields), or writes each as
// an .eml file or into a Maildir without lsmtp's trace fields above its
// Received: (Return-Path, X-Original-To, X-Lsmtp-Envelope), which would
// show every recipient, Bcc ones included, to whoever reads the file. A
// message is acknowledged only after it was written and fsynced, so a
// crash or a full disk never loses one.
//
//	lsmtp-consume --queue lsmtp.inbound --mode print
//	lsmtp-consume --mode eml --dir ./mail --count 100
//	lsmtp-consume --mode maildir --dir ~/Maildir
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/lsmtp/lsmtp/broker"
)

func main() {
	opts, err := parseFlags(os.Args[1:], os.Getenv)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "lsmtp-consume:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	n, err := run(ctx, opts, os.Stdout)
	fmt.Fprintf(os.Stderr, "lsmtp-consume: %d messages\n", n)
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "lsmtp-consume:", err)
		os.Exit(1)
	}
}

// options are the command line.
type options struct {
	url      string
	username string
	password string
	queue    string
	mode     string
	dir      string
	count    int
	prefetch int
}

func parseFlags(args []string, getenv func(string) string) (options, error) {
	fs := flag.NewFlagSet("lsmtp-consume", flag.ContinueOnError)
	var o options
	fs.StringVar(&o.url, "amqp-url", broker.DefaultURL, "AMQP URL of RabbitMQ (credentials also from $LSMTP_AMQP_USERNAME/$LSMTP_AMQP_PASSWORD, as for lsmtp)")
	fs.StringVar(&o.queue, "queue", "lsmtp.inbound", "queue to consume")
	fs.StringVar(&o.mode, "mode", "print", "print (envelope of each message), eml (one file per message) or maildir")
	fs.StringVar(&o.dir, "dir", "", "directory for --mode eml or maildir")
	fs.IntVar(&o.count, "count", 0, "stop after this many messages (0: run until interrupted)")
	fs.IntVar(&o.prefetch, "prefetch", 100, "unacknowledged messages RabbitMQ may send ahead")
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		fs.SetOutput(os.Stderr)
		if errors.Is(err, flag.ErrHelp) {
			fs.PrintDefaults()
		}
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch o.mode {
	case "print":
	case "eml", "maildir":
		if o.dir == "" {
			return o, fmt.Errorf("--mode %s needs --dir", o.mode)
		}
	default:
		return o, fmt.Errorf("--mode %q: want print, eml or maildir", o.mode)
	}
	if o.count < 0 || o.prefetch < 1 || o.prefetch > 65535 {
		return o, errors.New("--count must be >= 0 and --prefetch 1..65535")
	}
	if v := getenv("LSMTP_AMQP_USERNAME"); v != "" {
		o.username, o.password = v, getenv("LSMTP_AMQP_PASSWORD")
	}
	return o, nil
}
