package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/lsmtp/lsmtp/codec"
	"github.com/lsmtp/lsmtp/internal/policy"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// Config holds the engine's settings. Zero fields take the defaults below
// (see Defaults); negative limits are invalid.
type Config struct {
	// Listen addresses, host:port.
	Listen []string
	// Hostname is the name in our greeting and Received: headers.
	Hostname string

	// MaxMessageSize is the largest message body accepted, in octets after
	// dot-unstuffing, not counting our Received: header (RFC 1870 SIZE).
	MaxMessageSize int64
	// MaxRecipients per transaction; the next RCPT gets 452 4.5.3
	// (RFC 5321 §4.5.3.1.8 requires at least 100 to be accepted).
	MaxRecipients int
	// MaxLineLength of a command line including CRLF (RFC 5321 §4.5.3.1.4),
	// 512 up to codec.MaxLineLimit.
	MaxLineLength int
	// MaxConns open at once over all listeners; 0 means no limit.
	MaxConns int
	// MaxConnsPerIP open at once from one client address; 0 means no limit.
	MaxConnsPerIP int
	// IPv6Prefix is how many leading bits of an IPv6 client address name
	// one client for MaxConnsPerIP (32 to 128, default 64): a site is
	// given a /64 or more (RFC 6177), so counting each address would let
	// one client open 2^64 times the limit. IPv4 clients, also as
	// IPv4-mapped IPv6 addresses, are counted by their whole address. A
	// *policy.Policy keys its rate buckets by its own Config.IPv6Prefix:
	// give both the same value. Reload cannot change it.
	IPv6Prefix int
	// MaxErrors is how many protocol errors a session may make before we
	// answer 421 and close.
	MaxErrors int
	// MaxPipelineBacklog bounds the input a client may send while one of
	// its commands waits for the sink (RFC 2920 pipelining); past it the
	// session is closed with 421 4.7.0.
	MaxPipelineBacklog int

	// MaxInFlightBytes bounds the message octets held at once, over all
	// sessions, from DATA/BDAT until the sink's verdict. A body that would pass it is read to its end, kept nowhere, and
	// answered 451 4.3.1.
	MaxInFlightBytes int64

	// IdleTimeout is how long we wait for the next command
	// (RFC 5321 §4.5.3.2.7: at least 5 minutes).
	IdleTimeout time.Duration
	// DataTimeout is how long a DATA or BDAT body may go without a byte
	// arriving (RFC 5321 §4.5.3.2.5-6).
	DataTimeout time.Duration
	// GreetDelay holds the greeting back; a client that talks before it
	// is a protocol violator (RFC 5321 §3.1: the client waits for 220) and
	// is disconnected. 0 greets at once.
	GreetDelay time.Duration
	// TickInterval is how often timeouts are checked.
	TickInterval time.Duration

	// NormalizeBareEOL turns a bare CR or LF in a DATA body into CRLF
	// instead of rejecting the message (RFC 5321 §2.3.8).
	NormalizeBareEOL bool

	// TrustedProxies are the addresses of load balancers whose
	// connections start with a PROXY protocol header (v1 or v2) naming the
	// real client. Connections from anywhere else must not send one.
	TrustedProxies []netip.Prefix

	// Policy decides per client: allow and deny lists, connection and
	// message rates, accepted recipient domains. nil allows everything.
	Policy ClientPolicy

	// EventLoops is the number of gnet event loops; 0 is one per CPU.
	EventLoops int

	// Sink takes finished messages. Required.
	Sink sink.Sink
	// Logger for connection-level events; nil discards.
	Logger *slog.Logger
}

// ClientPolicy decides per client; *policy.Policy implements it. Every
// method is called on an event loop: none may block.
type ClientPolicy interface {
	// ClientAllowed: the allow and deny lists (refused: 554 5.7.1).
	ClientAllowed(ip netip.Addr) bool
	// TakeConnection takes a token from ip's connection rate (421 4.7.0).
	TakeConnection(ip netip.Addr, now time.Time) bool
	// TakeMessage takes a token from ip's message rate (450 4.7.1 at MAIL).
	TakeMessage(ip netip.Addr, now time.Time) bool
	// RecipientAllowed: the recipient domain allow-list (550 5.7.1).
	RecipientAllowed(addr []byte) bool
}

// Defaults are the values zero fields take.
var Defaults = Config{
	Listen:             []string{"127.0.0.1:2525"},
	Hostname:           "localhost",
	MaxMessageSize:     25 << 20,
	MaxRecipients:      100,
	MaxLineLength:      512,
	MaxConns:           10000,
	MaxConnsPerIP:      50,
	IPv6Prefix:         64,
	MaxErrors:          10,
	MaxPipelineBacklog: 1 << 20,
	MaxInFlightBytes:   1 << 30,
	IdleTimeout:        5 * time.Minute,
	DataTimeout:        5 * time.Minute,
	TickInterval:       250 * time.Millisecond,
}

// withDefaults fills zero fields and validates the result.
func (c Config) withDefaults() (Config, error) {
	d := Defaults
	if len(c.Listen) == 0 {
		c.Listen = d.Listen
	}
	orDefault(&c.Hostname, d.Hostname)
	orDefault(&c.MaxMessageSize, d.MaxMessageSize)
	orDefault(&c.MaxRecipients, d.MaxRecipients)
	orDefault(&c.MaxLineLength, d.MaxLineLength)
	orDefault(&c.IPv6Prefix, d.IPv6Prefix)
	orDefault(&c.MaxErrors, d.MaxErrors)
	orDefault(&c.MaxInFlightBytes, d.MaxInFlightBytes)
	orDefault(&c.MaxPipelineBacklog, d.MaxPipelineBacklog)
	orDefault(&c.IdleTimeout, d.IdleTimeout)
	orDefault(&c.DataTimeout, d.DataTimeout)
	if c.TickInterval == 0 {
		c.TickInterval = d.TickInterval
		if c.GreetDelay > 0 && c.GreetDelay/4 < c.TickInterval {
			c.TickInterval = max(c.GreetDelay/4, 10*time.Millisecond)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	var errs []error
	if c.Sink == nil {
		errs = append(errs, errors.New("engine: no sink"))
	}
	if c.MaxMessageSize < 0 || c.MaxRecipients < 0 || c.MaxConns < 0 || c.MaxConnsPerIP < 0 ||
		c.MaxErrors < 0 || c.MaxPipelineBacklog < 0 || c.MaxInFlightBytes < 0 || c.IdleTimeout < 0 || c.DataTimeout < 0 ||
		c.GreetDelay < 0 || c.TickInterval < 0 || c.EventLoops < 0 {
		errs = append(errs, errors.New("engine: limits and timeouts must not be negative"))
	}
	if c.MaxLineLength < 512 {
		// RFC 5321 §4.5.3.1.4: a command line is at least 512 octets.
		errs = append(errs, fmt.Errorf("engine: max line length %d is below the 512 octets RFC 5321 §4.5.3.1.4 requires", c.MaxLineLength))
	} else if c.MaxLineLength > codec.MaxLineLimit {
		errs = append(errs, fmt.Errorf("engine: max line length %d is above the %d octets a line may hold in the input buffer", c.MaxLineLength, codec.MaxLineLimit))
	}
	if c.IPv6Prefix < policy.MinIPv6Prefix || c.IPv6Prefix > 128 {
		errs = append(errs, fmt.Errorf("engine: IPv6 prefix /%d is not between /%d and /128", c.IPv6Prefix, policy.MinIPv6Prefix))
	}
	if c.MaxRecipients < 100 {
		c.Logger.Warn("max recipients below the 100 RFC 5321 §4.5.3.1.8 asks servers to accept", "max_recipients", c.MaxRecipients)
	}
	return c, errors.Join(errs...)
}

// orDefault sets *v to d when *v is the zero value.
func orDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}
