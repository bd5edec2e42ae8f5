// Command lsmtp is the SMTP ingest node: it receives mail and forwards
// every message to RabbitMQ, answering 250 only once the broker confirmed.
//
//	lsmtp [flags]                    run the server
//	lsmtp config check [flags]       validate the configuration and exit (1 with the problems)
//	lsmtp config print [flags]       print the effective configuration, secrets masked
//	lsmtp config sample              print a configuration file of every key with its default
//	lsmtp spool ls [flags]           list the messages in the spool (--spool-dir), oldest first
//	lsmtp spool show ID [flags]      print one spooled message: its envelope, then the message
//	lsmtp spool export DIR [flags]   write each spooled message to DIR as ID.eml and ID.json
//	lsmtp auth hash < password       print a password hash for --auth-file
//
// Options come from flags, LSMTP_* variables and the file named by
// --config, in that order of precedence; options.go has the table of them.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/automaxprocs/maxprocs"
)

// Exit codes.
const (
	exitOK       = 0
	exitProblems = 1 // the configuration is invalid, or the server failed
	exitUsage    = 2 // the command line cannot be understood
)

func main() {
	// GOMAXPROCS from the container's CPU quota (cgroups). Go 1.25 does
	// this too; automaxprocs keeps it so for any toolchain the binary is
	// built with, and says nothing (config print writes YAML to stdout).
	_, _ = maxprocs.Set(maxprocs.Logger(func(string, ...any) {}))
	os.Exit(mainExit(os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr))
}

func mainExit(args []string, env lookupEnv, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "auth" {
		return authCommand(args[1:], stdout, stderr)
	}
	if sub, flagArgs, ok := subcommand("config", args); ok {
		return configCommand(sub, flagArgs, env, stdout, stderr)
	}
	if sub, flagArgs, ok := subcommand("spool", args); ok {
		return spoolCommand(sub, flagArgs, env, stdout, stderr)
	}
	if err := run(args, env, stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		var p problems
		if errors.As(err, &p) {
			for _, line := range p {
				fmt.Fprintln(stderr, "lsmtp:", line)
			}
			return exitProblems
		}
		fmt.Fprintln(stderr, "lsmtp:", err)
		return exitUsage
	}
	return exitOK
}

// subcommand finds "<word> <sub>" (config, spool) before or after the
// flags and returns the flags without it.
func subcommand(word string, args []string) (sub string, flagArgs []string, ok bool) {
	if len(args) > 0 && args[0] == word {
		if len(args) < 2 {
			return "", nil, true
		}
		return args[1], args[2:], true
	}
	// Flags first: the flag package stops at the first non-flag.
	fs := newConfig(io.Discard).fs
	if fs.Parse(args) != nil || fs.NArg() == 0 || fs.Arg(0) != word {
		return "", nil, false
	}
	rest := fs.Args()
	flagArgs = append([]string(nil), args[:len(args)-len(rest)]...)
	if len(rest) < 2 {
		return "", flagArgs, true
	}
	return rest[1], append(flagArgs, rest[2:]...), true
}

// subcommandConfig loads the configuration a subcommand works with, from
// flagArgs, env and the file they name. When it cannot, it has said why
// on stderr and returns ok false with the exit code: exitProblems for
// problems in the configuration (each on a line, then their count),
// exitOK after --help, exitUsage for an argument the flag package
// rejected. Arguments left after the flags are in c.args, for the
// subcommand to judge.
func subcommandConfig(flagArgs []string, env lookupEnv, stderr io.Writer) (c *config, code int, ok bool) {
	c, err := loadConfig(flagArgs, env, stderr)
	var p problems
	switch {
	case errors.As(err, &p):
		for _, line := range p {
			fmt.Fprintln(stderr, "lsmtp:", line)
		}
		fmt.Fprintf(stderr, "lsmtp: configuration has %d problem(s)\n", len(p))
		return nil, exitProblems, false
	case errors.Is(err, flag.ErrHelp):
		return nil, exitOK, false
	case err != nil:
		return nil, exitUsage, false // the flag package said why
	}
	return c, exitOK, true
}

func configCommand(sub string, flagArgs []string, env lookupEnv, stdout, stderr io.Writer) int {
	switch sub {
	case "check", "print":
	case "sample":
		c, err := loadConfig(nil, func(string) (string, bool) { return "", false }, stderr)
		if err != nil {
			fmt.Fprintln(stderr, "lsmtp:", err)
			return exitProblems
		}
		if err := c.writeYAML(stdout, renderSample); err != nil {
			return exitProblems
		}
		return exitOK
	default:
		fmt.Fprintf(stderr, "lsmtp: config %q: want check, print or sample\n", sub)
		return exitUsage
	}
	c, code, ok := subcommandConfig(flagArgs, env, stderr)
	if !ok {
		return code
	}
	if len(c.args) > 0 {
		fmt.Fprintf(stderr, "lsmtp: unexpected argument %q\n", c.args[0])
		return exitUsage
	}
	for _, w := range c.warnings {
		fmt.Fprintln(stderr, "lsmtp: warning:", w.text)
	}
	if sub == "print" {
		if err := c.writeYAML(stdout, renderEffective); err != nil {
			return exitProblems
		}
		return exitOK
	}
	if c.o.configFile != "" {
		fmt.Fprintf(stdout, "%s: configuration ok\n", c.o.configFile)
	} else {
		fmt.Fprintln(stdout, "configuration ok (no file)")
	}
	return exitOK
}

// run serves until SIGINT or SIGTERM; SIGHUP reloads the configuration.
func run(args []string, env lookupEnv, stderr io.Writer) error {
	// Signals are caught before anything starts: a SIGHUP during start-up
	// must reload, not kill (its default action).
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sig)
	n, err := start(args, env, stderr)
	if err != nil {
		return err
	}
	return n.wait(sig)
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
