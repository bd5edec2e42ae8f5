package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/lsmtp/lsmtp/codec"
	"github.com/lsmtp/lsmtp/internal/policy"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// Config holds the engine's settings. Zero fields take the defaults below
// (see Defaults); Validate names every setting out of bounds.
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
	// its commands waits for the sink (RFC 2920 pipelining), or while it
	// does not read its replies; past it the session is closed with
	// 421 4.7.0. A pipelined group is a few commands (RFC 2920 §3.1), so
	// the default of 64 KiB is far more than a client needs.
	MaxPipelineBacklog int
	// MaxSessionBuffers bounds the octets all sessions hold at once in
	// their buffers: input not taken yet (pipelined behind a command
	// that waits, or from a client whose replies go unread), replies
	// not sent yet, and reply arrays. An honest client holds next to
	// nothing between reads, so what counts is what clients that do not
	// read pile up. Past it a session holding more than a small share
	// (16 KiB) takes no more commands, and one that keeps growing is
	// closed with 421 4.7.0. Sessions within their share are never
	// held back, so the total may pass it by that share per session.
	MaxSessionBuffers int64

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
	// XclientFrom are the addresses of relays and content filters that
	// connect without a PROXY header and may name their client with
	// XCLIENT (Postfix's smtpd_authorized_xclient_hosts). TrustedProxies
	// may send XCLIENT too, after their PROXY header.
	XclientFrom []netip.Prefix

	// Policy decides per client: allow and deny lists, connection and
	// message rates, accepted recipient domains. nil allows everything.
	Policy ClientPolicy

	// EventLoops is the number of gnet event loops; 0 is one per CPU.
	EventLoops int

	// TLS and AUTH (engine/tls.go, engine/auth.go).
	//
	// TLSCert and TLSKey are PEM files (the certificate may be followed by
	// its chain). With them, EHLO on Listen offers STARTTLS (RFC 3207).
	// They are read again on Reload and when they change (looked at
	// once a minute); a pair that does not load keeps the previous one.
	TLSCert, TLSKey string
	// ListenTLS are listeners that speak TLS from the first byte
	// (RFC 8314 §3, port 465).
	ListenTLS []string
	// ListenSubmission are listeners on which MAIL needs AUTH (RFC 6409,
	// port 587); STARTTLS as on Listen.
	ListenSubmission []string
	// TLSMinVersion is "1.2" or "1.3".
	TLSMinVersion string
	// RequireTLS refuses MAIL before STARTTLS with 530 5.7.0.
	RequireTLS bool
	// AuthFile holds "user:hash" lines (bcrypt or argon2id); with it,
	// AUTH PLAIN and LOGIN are offered over TLS. Read again like TLSCert.
	AuthFile string
	// RequireAuth refuses MAIL without AUTH on every listener with
	// 530 5.7.0.
	RequireAuth bool
	// HandshakeTimeout bounds a TLS handshake.
	HandshakeTimeout time.Duration
	// MaxHandshakes bounds the TLS handshakes running at once; 0 is 16
	// per CPU. A connection that finds no slot within a second is closed.
	MaxHandshakes int
	// MaxHandshakesPerIP bounds those of one client address (IPv6 by
	// IPv6Prefix, as MaxConnsPerIP), so that one address cannot hold
	// every slot of MaxHandshakes; 0 is no bound of its own. A
	// connection that finds none of its client's free within a second is
	// closed, holding none of the server's meanwhile.
	MaxHandshakesPerIP int
	// AuthFailDelay is the wait before the first 535 to a client IP; it
	// doubles with each failure, up to 32 times.
	AuthFailDelay time.Duration

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

// Defaults are the settings lsmtp starts with, and what New puts in a
// zero field, except where zero has a meaning of its own: MaxConns and
// MaxConnsPerIP 0 are no limit, GreetDelay 0 greets at once, EventLoops 0
// is one per CPU, MaxHandshakesPerIP 0 is no bound of its own.
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
	MaxPipelineBacklog: 64 << 10,
	// At the per-session bounds (MaxPipelineBacklog of input and
	// outputHighMark of replies, 128 KiB) 256 MiB is 2,000 clients that
	// do not read, a fifth of MaxConns; without it those 10,000 could
	// hold 1.3 GB. Size memory for it next to MaxInFlightBytes.
	MaxSessionBuffers: 256 << 20,
	MaxInFlightBytes:  1 << 30,
	IdleTimeout:       5 * time.Minute,
	DataTimeout:       5 * time.Minute,
	TLSMinVersion:     "1.2",
	HandshakeTimeout:  10 * time.Second,
	AuthFailDelay:     250 * time.Millisecond,
	// A client needs one handshake at a time per connection it opens
	// at once; a quarter of the server's slots on two CPUs.
	MaxHandshakesPerIP: 8,
}

// defaultTick is the TickInterval when none is set and the greeting is
// not delayed by less than four of them.
const defaultTick = 250 * time.Millisecond

// withDefaults fills zero fields and validates the result; warnings are
// logged.
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
	orDefault(&c.MaxSessionBuffers, d.MaxSessionBuffers)
	orDefault(&c.IdleTimeout, d.IdleTimeout)
	orDefault(&c.DataTimeout, d.DataTimeout)
	c.tlsDefaults()
	if c.TickInterval == 0 {
		c.TickInterval = defaultTick
		if c.GreetDelay > 0 && c.GreetDelay/4 < c.TickInterval {
			c.TickInterval = max(c.GreetDelay/4, 10*time.Millisecond)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	warnings, err := c.Validate()
	for _, w := range warnings {
		c.Logger.Warn("configuration", "problem", w)
	}
	if c.Sink == nil {
		err = errors.Join(err, errors.New("engine: no sink"))
	}
	return c, err
}

// Validate checks every bound of c as it stands (New first puts the
// defaults in zero fields). Each problem reads "engine: Field: what is
// wrong", Field naming the field of Config, so that a caller can say
// where the value came from; err joins those that make c unusable,
// warnings are those that work but deserve a look.
func (c *Config) Validate() (warnings []string, err error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("engine: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	warn := func(field, format string, args ...any) {
		warnings = append(warnings, fmt.Sprintf("engine: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	if len(c.Listen) == 0 {
		bad("Listen", "no address to listen on")
	}
	for _, a := range c.Listen {
		if err := checkHostPort(a); err != nil {
			bad("Listen", "%v", err)
		}
	}
	if !hostnameValid(c.Hostname) {
		bad("Hostname", "%q cannot stand in a greeting (a domain name, no spaces)", c.Hostname)
	}
	for _, p := range []struct {
		field string
		v     int64
	}{
		{"MaxMessageSize", c.MaxMessageSize}, {"MaxInFlightBytes", c.MaxInFlightBytes},
		{"MaxRecipients", int64(c.MaxRecipients)}, {"MaxLineLength", int64(c.MaxLineLength)},
		{"MaxPipelineBacklog", int64(c.MaxPipelineBacklog)}, {"MaxSessionBuffers", c.MaxSessionBuffers},
		{"MaxErrors", int64(c.MaxErrors)},
		{"IdleTimeout", int64(c.IdleTimeout)}, {"DataTimeout", int64(c.DataTimeout)},
	} {
		if p.v <= 0 {
			bad(p.field, "must be more than 0")
		}
	}
	for _, p := range []struct {
		field string
		v     int64
	}{
		{"MaxConns", int64(c.MaxConns)}, {"MaxConnsPerIP", int64(c.MaxConnsPerIP)}, {"GreetDelay", int64(c.GreetDelay)},
		{"EventLoops", int64(c.EventLoops)}, {"TickInterval", int64(c.TickInterval)},
	} {
		if p.v < 0 {
			bad(p.field, "must not be negative")
		}
	}
	if c.MaxLineLength > 0 && c.MaxLineLength < 512 {
		// RFC 5321 §4.5.3.1.4: a command line is at least 512 octets.
		bad("MaxLineLength", "%d is below the 512 octets RFC 5321 §4.5.3.1.4 requires", c.MaxLineLength)
	} else if c.MaxLineLength > codec.MaxLineLimit {
		bad("MaxLineLength", "%d is above the %d octets a line may hold in the input buffer", c.MaxLineLength, codec.MaxLineLimit)
	}
	if c.IPv6Prefix < policy.MinIPv6Prefix || c.IPv6Prefix > 128 {
		bad("IPv6Prefix", "/%d is not between /%d and /128", c.IPv6Prefix, policy.MinIPv6Prefix)
	}
	if c.MaxPipelineBacklog > 1<<30 {
		bad("MaxPipelineBacklog", "%s: at most 1G", FormatSize(int64(c.MaxPipelineBacklog)))
	}
	if c.MaxSessionBuffers > 0 && c.MaxSessionBuffers < int64(c.MaxPipelineBacklog) {
		warn("MaxSessionBuffers", "%s is less than MaxPipelineBacklog (%s): one client's backlog could spend it",
			FormatSize(c.MaxSessionBuffers), FormatSize(int64(c.MaxPipelineBacklog)))
	}
	if c.MaxRecipients > 0 && c.MaxRecipients < 100 {
		warn("MaxRecipients", "%d is below the 100 RFC 5321 §4.5.3.1.8 asks servers to accept", c.MaxRecipients)
	}
	if c.IdleTimeout > 0 && c.IdleTimeout < 5*time.Minute {
		warn("IdleTimeout", "%s is below the 5 minutes of RFC 5321 §4.5.3.2.7", c.IdleTimeout)
	}
	c.validateTLS(bad)
	for _, p := range c.XclientFrom {
		switch {
		case !p.IsValid():
			bad("XclientFrom", "%v is not a CIDR prefix", p)
		case p.Bits() == 0:
			// XCLIENT from anywhere lets anyone claim any address.
			bad("XclientFrom", "%v trusts every address", p)
		}
		for _, q := range c.TrustedProxies {
			if q.IsValid() && p.IsValid() && p.Overlaps(q) {
				warn("XclientFrom", "%v overlaps TrustedProxies %v: connections from there must still start with a PROXY header", p, q)
			}
		}
	}
	if c.MaxConns > 0 && c.MaxConnsPerIP > c.MaxConns {
		warn("MaxConnsPerIP", "%d is more than MaxConns (%d)", c.MaxConnsPerIP, c.MaxConns)
	}
	return warnings, errors.Join(errs...)
}

// hostnameValid: our name stands in the greeting and in Received:
// headers (RFC 5321 §4.1.3 domain), so it may hold no space, no control
// and nothing a header comment would choke on.
func hostnameValid(h string) bool {
	return h != "" && len(h) <= 255 && !strings.ContainsFunc(h, func(r rune) bool {
		return r <= ' ' || r >= 0x7f || strings.ContainsRune("()<>", r)
	})
}

// checkHostPort accepts host:port with a numeric port; an empty host is
// every address.
func checkHostPort(a string) error {
	_, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("%q: want host:port", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: port %q is not a number 0..65535", a, port)
	}
	return nil
}

// FormatSize writes octets as the configuration takes them, with the
// largest of the suffixes K, M, G (powers of 1024) that divides n.
func FormatSize(n int64) string {
	switch {
	case n != 0 && n%(1<<30) == 0:
		return strconv.FormatInt(n>>30, 10) + "G"
	case n != 0 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + "M"
	case n != 0 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + "K"
	}
	return strconv.FormatInt(n, 10)
}

// orDefault sets *v to d when *v is the zero value.
func orDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}
