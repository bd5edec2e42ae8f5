// Command lsmtp-bench is lsmtp's load generator ("run") and benchmark
// suite ("suite", what make bench runs), with the factor table
// ("factors"), the side-by-side comparison ("peers"), the JetStream
// section ("nats") and the TLS section ("tls"). See BENCHMARKS.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/lsmtp/lsmtp/bench"
)

func usage() {
	fmt.Fprintf(os.Stderr, `usage:
  lsmtp-bench run [flags]     drive load at a running SMTP server
  lsmtp-bench suite [flags]   run the benchmark suite and write BENCHMARKS.md
  lsmtp-bench factors [flags] what each part of a publish costs RabbitMQ (the factor table)
  lsmtp-bench peers [flags]   lsmtp side by side with the go-smtp bridge
  lsmtp-bench nats [flags]    lsmtp → NATS JetStream beside a raw nats.go ceiling and lsmtp → RabbitMQ
  lsmtp-bench tls [flags]     TLS handshakes, messages and idle memory, lsmtp beside go-smtp's TLS
  lsmtp-bench <command> -h    flags of a command
`)
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	var err error
	switch os.Args[1] {
	case "run":
		err = runLoad(ctx, os.Args[2:])
	case "suite":
		err = runSuite(ctx, os.Args[2:])
	case "factors":
		err = runFactors(ctx, os.Args[2:])
	case "peers":
		err = runPeers(ctx, os.Args[2:])
	case "nats":
		err = runNATS(ctx, os.Args[2:])
	case "tls":
		err = runTLS(ctx, os.Args[2:])
	case "worker": // one generator process of a run split over several
		err = bench.WorkerMain(ctx, os.Stdin, os.Stdout)
	case "-h", "--help", "help":
		usage()
		return
	default:
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "lsmtp-bench:", err)
		os.Exit(1)
	}
}

func runLoad(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var cfg bench.LoadConfig
	targets := fs.String("target", "127.0.0.1:2525", "SMTP server, IPv4 host:port; a comma-separated list spreads the sessions")
	fs.IntVar(&cfg.Sessions, "sessions", 100, "concurrent sessions (the paper's clients × concurrency)")
	fs.DurationVar(&cfg.RTT, "rtt", 0, "emulated network round-trip time, e.g. 315ms")
	fs.IntVar(&cfg.PerConn, "per-conn", 1, "messages per connection")
	fs.BoolVar(&cfg.Pipelining, "pipelining", false, "use RFC 2920 pipelining when offered")
	fs.BoolVar(&cfg.Chunking, "chunking", false, "use RFC 3030 BDAT (with pipelining) when offered")
	fs.IntVar(&cfg.Size, "size", 2048, "message size in octets")
	fs.IntVar(&cfg.Recipients, "rcpts", 1, "recipients per message")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "measurement window")
	fs.Int64Var(&cfg.Count, "count", 0, "stop after this many messages instead of after -duration")
	fs.DurationVar(&cfg.Ramp, "ramp", 0, "spread session starts over this (default: one message cycle)")
	fs.DurationVar(&cfg.Warmup, "warmup", 0, "wait after the ramp before measuring (default: one message cycle, at least 1s)")
	fs.IntVar(&cfg.Loops, "loops", 0, "client event loops (default: GOMAXPROCS)")
	fs.IntVar(&cfg.PerSource, "per-source", 0, "sessions per client address 127.0.0.x (default: 60% of the ephemeral port range)")
	fs.IntVar(&cfg.Processes, "processes", 0, "generator processes (default: as few as the open file limit allows)")
	profile := fs.String("profile", "", "capture the server's CPU and allocation profiles over the window into this directory (needs -admin)")
	admin := fs.String("admin", "127.0.0.1:9025", "the server's admin address (lsmtp --admin-listen) for -profile")
	genProfile := fs.String("gen-cpuprofile", "", "write the generator's own CPU profile to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg.Targets = strings.Split(*targets, ",")
	if cfg.Chunking {
		cfg.Pipelining = true
	}
	cfg.Progress = func(p bench.Progress) {
		fmt.Fprintf(os.Stderr, "\r%6.1fs %-7s ok=%d failed=%d errors=%d conns=%d   ",
			p.Elapsed.Seconds(), p.Phase, p.OK, p.Failed, p.Errors, p.Connected)
	}
	if *genProfile != "" {
		f, err := os.Create(*genProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	var waitProfiles func() (bench.Profiles, error)
	if *profile != "" {
		cfg.WindowStart = func() {
			waitProfiles = bench.CaptureProfiles(*admin, *profile, "run", cfg.Duration)
		}
	}
	res, err := bench.Run(ctx, cfg)
	if waitProfiles != nil {
		p, perr := waitProfiles()
		if perr != nil {
			fmt.Fprintln(os.Stderr, "lsmtp-bench:", perr)
		} else {
			fmt.Fprintf(os.Stderr, "profiles: %s %s\n", p.CPU, p.Allocs)
		}
	}
	fmt.Fprintln(os.Stderr)
	if res != nil {
		fmt.Print(bench.FormatResult(res))
	}
	return err
}
