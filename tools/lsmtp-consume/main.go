// Command lsmtp-consume reads the messages lsmtp published to RabbitMQ or
// to a NATS JetStream stream, to watch a pipeline or to keep what arrives: it prints each message's
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
//	lsmtp-consume --source nats --nats-stream LSMTP --mode eml --dir ./mail
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

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

// Sources lsmtp-consume reads from.
const (
	sourceAMQP = "amqp"
	sourceNATS = "nats"
)

// options are the command line.
type options struct {
	source   string
	mode     string
	dir      string
	count    int
	prefetch int

	url      string
	username string
	password string
	queue    string

	natsURLs     []string
	natsUser     string
	natsPassword string
	natsToken    string
	natsCreds    string
	natsStream   string
	natsSubject  string
	natsDurable  string
	natsAckWait  time.Duration
}

// listFlag is a repeatable flag; a value may also list several, separated
// by commas.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

func parseFlags(args []string, getenv func(string) string) (options, error) {
	fs := flag.NewFlagSet("lsmtp-consume", flag.ContinueOnError)
	var o options
	fs.StringVar(&o.source, "source", sourceAMQP, "amqp (a RabbitMQ queue) or nats (a JetStream stream)")
	fs.StringVar(&o.mode, "mode", "print", "print (envelope of each message), eml (one file per message) or maildir")
	fs.StringVar(&o.dir, "dir", "", "directory for --mode eml or maildir")
	fs.IntVar(&o.count, "count", 0, "stop after this many messages (0: run until interrupted)")
	fs.IntVar(&o.prefetch, "prefetch", 100, "unacknowledged messages the broker may send ahead (JetStream: the consumer's max ack pending and the largest fetch)")
	fs.StringVar(&o.url, "amqp-url", broker.DefaultURL, "AMQP URL of RabbitMQ (credentials also from $LSMTP_AMQP_USERNAME/$LSMTP_AMQP_PASSWORD, as for lsmtp)")
	fs.StringVar(&o.queue, "queue", "lsmtp.inbound", "queue to consume")
	var urls listFlag
	fs.Var(&urls, "nats-url", "NATS server URL, repeatable (default "+defaultNATSURL+")")
	fs.StringVar(&o.natsUser, "nats-user", "", "NATS user (also $LSMTP_NATS_USER), with --nats-password (better $LSMTP_NATS_PASSWORD)")
	fs.StringVar(&o.natsPassword, "nats-password", "", "NATS password")
	fs.StringVar(&o.natsToken, "nats-token", "", "NATS token (better $LSMTP_NATS_TOKEN)")
	fs.StringVar(&o.natsCreds, "nats-creds", "", "NATS credentials file (JWT and NKey seed; also $LSMTP_NATS_CREDS)")
	fs.StringVar(&o.natsStream, "nats-stream", "LSMTP", "JetStream stream to consume")
	fs.StringVar(&o.natsSubject, "nats-subject", "", "only messages on this subject (wildcards allowed, e.g. lsmtp.inbound.>); default: all of the stream")
	fs.StringVar(&o.natsDurable, "nats-durable", "lsmtp-consume", "durable consumer (created if need be): it keeps what was acknowledged across runs")
	fs.DurationVar(&o.natsAckWait, "nats-ack-wait", 30*time.Second, "how long JetStream waits for an ack before delivering a message again (the consumer's ack wait)")
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
	// A flag of the other source is a mistake: it would be ignored.
	var misplaced string
	fs.Visit(func(f *flag.Flag) {
		isNATS := strings.HasPrefix(f.Name, "nats-")
		isAMQP := f.Name == "amqp-url" || f.Name == "queue"
		if misplaced == "" && (isNATS && o.source != sourceNATS || isAMQP && o.source == sourceNATS) {
			misplaced = f.Name
		}
	})
	switch o.source {
	case sourceAMQP:
		if misplaced != "" {
			return o, fmt.Errorf("--%s needs --source nats", misplaced)
		}
		if v := getenv("LSMTP_AMQP_USERNAME"); v != "" {
			o.username, o.password = v, getenv("LSMTP_AMQP_PASSWORD")
		}
	case sourceNATS:
		if misplaced != "" {
			return o, fmt.Errorf("--%s is for --source amqp", misplaced)
		}
		return o, natsCredentials(&o, urls, getenv)
	default:
		return o, fmt.Errorf("--source %q: want amqp or nats", o.source)
	}
	return o, nil
}

// defaultNATSURL is the NATS server lsmtp publishes to by default.
const defaultNATSURL = "nats://127.0.0.1:4222"

// natsCredentials completes o's NATS options from the variables lsmtp
// reads too, for what the flags did not give, and checks that they
// name one way to authenticate.
func natsCredentials(o *options, urls []string, getenv func(string) string) error {
	o.natsURLs = urls
	if len(o.natsURLs) == 0 {
		o.natsURLs = []string{defaultNATSURL}
	}
	for _, v := range []struct {
		dst *string
		env string
	}{{&o.natsUser, "LSMTP_NATS_USER"}, {&o.natsPassword, "LSMTP_NATS_PASSWORD"}, {&o.natsToken, "LSMTP_NATS_TOKEN"}, {&o.natsCreds, "LSMTP_NATS_CREDS"}} {
		if *v.dst == "" {
			*v.dst = getenv(v.env)
		}
	}
	kinds := 0
	for _, set := range []bool{o.natsUser != "", o.natsToken != "", o.natsCreds != ""} {
		if set {
			kinds++
		}
	}
	switch {
	case o.natsPassword != "" && o.natsUser == "":
		return errors.New("--nats-password needs --nats-user")
	case kinds > 1:
		// nats.go would use one and drop the others without a word.
		return errors.New("--nats-user, --nats-token and --nats-creds: give one")
	case o.natsStream == "" || o.natsDurable == "":
		return errors.New("--nats-stream and --nats-durable must not be empty")
	case o.natsAckWait < time.Second:
		return errors.New("--nats-ack-wait must be at least 1s")
	}
	return nil
}
