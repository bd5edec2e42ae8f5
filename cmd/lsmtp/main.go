// Command lsmtp is the SMTP ingest node: it receives mail and forwards
// every message to RabbitMQ, answering 250 only once the broker confirmed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	_ "net/http/pprof" // served on the admin listener only
	"os"
	"os/signal"
	"syscall"
	"time"

	_ "go.uber.org/automaxprocs" // GOMAXPROCS from the container's CPU quota

	"github.com/lsmtp/lsmtp/engine"
	"github.com/lsmtp/lsmtp/sink"
)

// options are the command line; see README.md for each one.
type options struct {
	listen           listFlag
	hostname         string
	sink             string
	maxMessageSize   sizeFlag
	maxRecipients    int
	maxConns         int
	maxConnsPerIP    int
	maxErrors        int
	idleTimeout      time.Duration
	dataTimeout      time.Duration
	greetDelay       time.Duration
	normalizeBareEOL bool
	eventLoops       int
	shutdownTimeout  time.Duration
	adminListen      string
	logLevel         string
	logFormat        string

	amqp amqpOptions
}

func parseOptions(args []string, stderr io.Writer) (*options, error) {
	d := engine.Defaults
	o := &options{}
	o.listen.values = d.Listen
	o.maxMessageSize.n = d.MaxMessageSize
	host, _ := os.Hostname()
	if host == "" {
		host = "localhost"
	}

	fs := flag.NewFlagSet("lsmtp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Var(&o.listen, "listen", "address to listen on, host:port (repeatable)")
	fs.StringVar(&o.hostname, "hostname", host, "name in the greeting and Received: headers")
	fs.StringVar(&o.sink, "sink", "amqp", "where messages go: amqp (RabbitMQ) or null (accept and discard)")
	fs.Var(&o.maxMessageSize, "max-message-size", "largest message accepted, octets (K, M, G suffixes)")
	fs.IntVar(&o.maxRecipients, "max-recipients", d.MaxRecipients, "recipients per message")
	fs.IntVar(&o.maxConns, "max-conns", d.MaxConns, "open connections at once, 0 for no limit")
	fs.IntVar(&o.maxConnsPerIP, "max-conns-per-ip", d.MaxConnsPerIP, "open connections from one client IP, 0 for no limit")
	fs.IntVar(&o.maxErrors, "max-errors", d.MaxErrors, "protocol errors before the session is closed")
	fs.DurationVar(&o.idleTimeout, "idle-timeout", d.IdleTimeout, "wait for the next command")
	fs.DurationVar(&o.dataTimeout, "data-timeout", d.DataTimeout, "longest pause inside a message body")
	fs.DurationVar(&o.greetDelay, "greet-delay", 0, "hold the greeting back; clients that talk first are dropped")
	fs.BoolVar(&o.normalizeBareEOL, "normalize-bare-eol", false, "turn bare CR or LF in DATA into CRLF instead of rejecting the message")
	fs.IntVar(&o.eventLoops, "event-loops", 0, "event loops, 0 for one per CPU")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM, time for transactions in flight to finish")
	fs.StringVar(&o.adminListen, "admin-listen", "127.0.0.1:9025", "HTTP address for /healthz, /readyz and /debug/pprof/, empty for none")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "text or json")
	o.amqp.register(fs)

	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err := applyEnv(fs); err != nil {
		return nil, err
	}
	switch o.sink {
	case "null", "amqp":
	default:
		return nil, fmt.Errorf("--sink %q: want amqp or null", o.sink)
	}
	return o, nil
}

func newLogger(o *options, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", o.logLevel, err)
	}
	ho := &slog.HandlerOptions{Level: level}
	switch o.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, ho)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, ho)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", o.logFormat)
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "lsmtp:", err)
		}
		os.Exit(2)
	}
}

func run(args []string) error {
	o, err := parseOptions(args, os.Stderr)
	if err != nil {
		return err
	}
	log, err := newLogger(o, os.Stderr)
	if err != nil {
		return err
	}
	raiseFileLimit(log)

	var sk sink.Sink = &sink.Null{}
	var ready func() bool = func() bool { return true }
	if o.sink == "amqp" {
		b, err := o.amqp.open(o.hostname, log)
		if err != nil {
			return err
		}
		sk, ready = b, b.Ready
	}

	srv, err := engine.New(engine.Config{
		Listen:           o.listen.values,
		Hostname:         o.hostname,
		MaxMessageSize:   o.maxMessageSize.n,
		MaxRecipients:    o.maxRecipients,
		MaxConns:         o.maxConns,
		MaxConnsPerIP:    o.maxConnsPerIP,
		MaxErrors:        o.maxErrors,
		IdleTimeout:      o.idleTimeout,
		DataTimeout:      o.dataTimeout,
		GreetDelay:       o.greetDelay,
		NormalizeBareEOL: o.normalizeBareEOL,
		EventLoops:       o.eventLoops,
		Sink:             sk,
		Logger:           log,
	})
	if err != nil {
		return err
	}

	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	addrs := srv.Addrs()
	if len(addrs) == 0 {
		return fmt.Errorf("listening: %w", <-served)
	}
	log.Info("listening", "addrs", addrs, "hostname", o.hostname, "sink", o.sink)
	if o.adminListen != "" {
		go serveAdmin(o.adminListen, ready, log)
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case err := <-served:
		return fmt.Errorf("server stopped: %w", err)
	case s := <-sig:
		log.Info("shutting down", "signal", s.String(), "timeout", o.shutdownTimeout)
	}
	signal.Stop(sig) // a second signal kills at once

	ctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Warn("shutdown deadline passed; remaining sessions got 421", "err", err)
	}
	// The sink drains after the sessions: whatever it still holds is
	// confirmed or failed before we exit.
	sctx, scancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer scancel()
	if err := sk.Close(sctx); err != nil {
		log.Warn("sink did not drain", "err", err)
	}
	st := srv.Stats()
	attrs := []any{"accepted_conns", st.Accepted.Load()}
	for _, o := range engine.Outcomes() {
		attrs = append(attrs, "messages_"+o.String(), st.MessagesBy(o))
	}
	log.Info("stopped", attrs...)
	return nil
}

// serveAdmin serves health checks and pprof for operators.
func serveAdmin(addr string, ready func() bool, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "broker not connected", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.Handle("/debug/pprof/", http.DefaultServeMux)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if err := srv.ListenAndServe(); err != nil {
		log.Error("admin listener failed", "addr", addr, "err", err)
	}
}

// raiseFileLimit lifts the soft RLIMIT_NOFILE to the hard one: every
// connection is a file descriptor.
func raiseFileLimit(log *slog.Logger) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			log.Warn("cannot raise the open file limit", "err", err)
		}
	}
}
