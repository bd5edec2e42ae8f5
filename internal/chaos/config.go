package chaos

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Fault is one kind of trouble injected during a run.
type Fault int

const (
	// FaultCut drops lsmtp's broker connections at the fault proxy and
	// refuses new ones for Config.CutOutage.
	FaultCut Fault = iota
	// FaultRabbitRestart stops the RabbitMQ application (rabbitmqctl
	// stop_app) for Config.RabbitOutage and starts it again.
	FaultRabbitRestart
	// FaultLSMTPRestart sends lsmtp SIGTERM and starts a new process.
	FaultLSMTPRestart
	numFaults
)

var faultNames = [numFaults]string{"cut", "rabbit-restart", "lsmtp-restart"}

func (f Fault) String() string {
	if f >= 0 && f < numFaults {
		return faultNames[f]
	}
	return fmt.Sprintf("fault(%d)", int(f))
}

// ParseFaults reads a comma-separated list of fault names.
func ParseFaults(s string) ([]Fault, error) {
	var out []Fault
	for _, name := range strings.Split(s, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		found := false
		for f := Fault(0); f < numFaults; f++ {
			if f.String() == name {
				out = append(out, f)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown fault %q (want %s)", name, strings.Join(faultNames[:], ", "))
		}
	}
	return out, nil
}

// Config is one chaos run.
type Config struct {
	// Duration of the load; faults are injected within it.
	Duration time.Duration
	// Sessions is the number of concurrent SMTP sessions.
	Sessions int
	// PerConn is how many messages a session sends before QUIT and a new
	// connection.
	PerConn int
	// Pipelining sends MAIL, RCPT and DATA in one write (RFC 2920).
	Pipelining bool
	// Size of each message in octets (approximately: a few header lines
	// plus filler).
	Size int
	// Rate caps the messages per second over all sessions; 0 for none.
	Rate float64

	// Faults are injected in this order, over and over, FaultInterval
	// apart; none starts in the last FaultInterval of the run, so that
	// recovery from the last one is seen.
	Faults        []Fault
	FaultInterval time.Duration
	CutOutage     time.Duration // how long the proxy refuses after a cut
	RabbitOutage  time.Duration // how long the RabbitMQ app stays stopped

	// LSMTP is a prebuilt lsmtp binary; empty builds ./cmd/lsmtp of the
	// module in ModuleDir (empty: the module of the working directory).
	LSMTP     string
	ModuleDir string
	// ShutdownTimeout is lsmtp's --shutdown-timeout; ConfirmTimeout its
	// --confirm-timeout.
	ShutdownTimeout time.Duration
	ConfirmTimeout  time.Duration
	// SamePort restarts lsmtp on the port it had, as a service manager
	// does; when that port cannot be bound, the run reports it and goes
	// on with a fresh port. Without it every restart takes a fresh port.
	SamePort bool
	// ExtraArgs are appended to lsmtp's command line.
	ExtraArgs []string

	// RabbitAddr is RabbitMQ's AMQP address, RabbitUser and RabbitPassword
	// its credentials.
	RabbitAddr     string
	RabbitUser     string
	RabbitPassword string
	// Name of the exchange and queue used, created by lsmtp and deleted
	// at the end unless KeepQueue; empty picks lsmtp-chaos.<random>.
	Name      string
	KeepQueue bool

	// Log receives progress lines; nil discards them.
	Log io.Writer
}

// Defaults returns the settings of `make chaos`.
func Defaults() Config {
	return Config{
		Duration:        3 * time.Minute,
		Sessions:        20,
		PerConn:         5,
		Pipelining:      true,
		Size:            2048,
		Rate:            1000,
		Faults:          []Fault{FaultCut, FaultRabbitRestart, FaultLSMTPRestart},
		FaultInterval:   10 * time.Second,
		CutOutage:       time.Second,
		RabbitOutage:    2 * time.Second,
		ShutdownTimeout: 3 * time.Second,
		ConfirmTimeout:  5 * time.Second,
		SamePort:        true,
		RabbitAddr:      "127.0.0.1:5672",
		RabbitUser:      "guest",
		RabbitPassword:  "guest",
	}
}

func (c *Config) validate() error {
	var errs []error
	if c.Duration <= 0 {
		errs = append(errs, errors.New("duration must be positive"))
	}
	if c.Sessions < 1 || c.Sessions > 1000 {
		errs = append(errs, fmt.Errorf("sessions %d: want 1..1000", c.Sessions))
	}
	if c.PerConn < 1 {
		errs = append(errs, fmt.Errorf("messages per connection %d: want at least 1", c.PerConn))
	}
	if c.Size < 0 || c.Size > 10<<20 {
		errs = append(errs, fmt.Errorf("size %d: want 0..10 MiB", c.Size))
	}
	if c.Rate < 0 {
		errs = append(errs, errors.New("rate must not be negative"))
	}
	if len(c.Faults) > 0 && c.FaultInterval <= 0 {
		errs = append(errs, errors.New("fault interval must be positive"))
	}
	if c.CutOutage < 0 || c.RabbitOutage < 0 {
		errs = append(errs, errors.New("outages must not be negative"))
	}
	if c.ShutdownTimeout <= 0 || c.ConfirmTimeout <= 0 {
		errs = append(errs, errors.New("shutdown and confirm timeouts must be positive"))
	}
	if c.RabbitAddr == "" {
		errs = append(errs, errors.New("no RabbitMQ address"))
	}
	return errors.Join(errs...)
}

func (c *Config) amqpURL(addr string) string {
	return "amqp://" + c.RabbitUser + ":" + c.RabbitPassword + "@" + addr + "/"
}

func (c *Config) has(f Fault) bool {
	for _, g := range c.Faults {
		if g == f {
			return true
		}
	}
	return false
}
