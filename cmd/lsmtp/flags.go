package main

import (
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/lsmtp/lsmtp/engine"
	"github.com/lsmtp/lsmtp/internal/policy"
)

// Every option is defined once, here, as a flag. The configuration file's
// keys are the flag names and each flag also has an environment variable
// LSMTP_NAME (upper case, dashes as underscores); config.go layers the
// three sources over the defaults: flag > variable > file > default.

// options are the settings of one lsmtp process; see README.md for each.
type options struct {
	configFile string

	listen             listFlag
	hostname           string
	sink               string
	maxMessageSize     sizeFlag
	maxInFlightBytes   sizeFlag
	maxRecipients      int
	maxLineLength      int
	maxPipelineBacklog sizeFlag
	maxConns           int
	maxConnsPerIP      int
	maxErrors          int
	idleTimeout        time.Duration
	dataTimeout        time.Duration
	greetDelay         time.Duration
	normalizeBareEOL   bool
	trustedProxies     prefixList
	allowCIDRs         prefixList
	denyCIDRs          prefixList
	recipientDomains   listFlag
	connRate           float64
	connBurst          int
	msgRate            float64
	msgBurst           int
	maxTracked         int
	eventLoops         int
	shutdownTimeout    time.Duration
	adminListen        string
	logLevel           string
	logFormat          string

	amqp amqpOptions
}

// flag names with special handling.
const (
	keyConfig       = "config"        // names the file: not a key inside it
	keyAMQPURL      = "amqp-url"      // printed with passwords masked
	keyAMQPPassword = "amqp-password" // never printed
	keyNoDeclare    = "no-declare"    // older spelling of --declare=false
)

// repeatable names the flags that may be given more than once. On the
// command line each use adds an item; a variable holds a comma-separated
// list; in the file the value is a YAML sequence.
var repeatable = map[string]bool{
	"listen": true, keyAMQPURL: true, "trusted-proxy": true,
	"allow-cidr": true, "deny-cidr": true, "recipient-domain": true,
}

// aliases are accepted everywhere but left out of the printed
// configuration and the sample file, which use the canonical key.
var aliases = map[string]string{keyNoDeclare: "declare"}

// secret names the keys whose values config print masks.
var secret = map[string]bool{keyAMQPPassword: true}

// machineDefault names the keys whose default depends on the machine:
// the sample file shows them commented out.
var machineDefault = map[string]bool{"hostname": true, "node": true}

// newOptions returns the defaults and the flag set that writes into them.
func newOptions(stderr io.Writer) (*options, *flag.FlagSet) {
	d := engine.Defaults
	o := &options{}
	o.listen.values = d.Listen
	o.maxMessageSize.n = d.MaxMessageSize
	o.maxInFlightBytes.n = d.MaxInFlightBytes
	o.maxPipelineBacklog.n = int64(d.MaxPipelineBacklog)
	host, _ := os.Hostname()
	if host == "" {
		host = "localhost"
	}

	fs := flag.NewFlagSet("lsmtp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.configFile, keyConfig, "", "YAML file of options, keyed by flag name (flags and LSMTP_* variables win over it)")
	fs.Var(&o.listen, "listen", "address to listen on, host:port (repeatable)")
	fs.StringVar(&o.hostname, "hostname", host, "name in the greeting and Received: headers")
	fs.StringVar(&o.sink, "sink", "amqp", "where messages go: amqp (RabbitMQ) or null (accept and discard)")
	fs.Var(&o.maxMessageSize, "max-message-size", "largest message accepted, octets (K, M, G suffixes)")
	fs.Var(&o.maxInFlightBytes, "max-in-flight-bytes", "message octets held at once over all sessions until the broker confirmed; 451 4.3.1 past it")
	fs.IntVar(&o.maxRecipients, "max-recipients", d.MaxRecipients, "recipients per message")
	fs.IntVar(&o.maxLineLength, "max-line-length", d.MaxLineLength, "longest command line including CRLF, at least 512 (RFC 5321 4.5.3.1.4)")
	fs.Var(&o.maxPipelineBacklog, "max-pipeline-backlog", "input a client may pipeline behind a command that waits for the broker; 421 past it")
	fs.IntVar(&o.maxConns, "max-conns", d.MaxConns, "open connections at once, 0 for no limit")
	fs.IntVar(&o.maxConnsPerIP, "max-conns-per-ip", d.MaxConnsPerIP, "open connections from one client IP, 0 for no limit")
	fs.IntVar(&o.maxErrors, "max-errors", d.MaxErrors, "protocol errors before the session is closed")
	fs.DurationVar(&o.idleTimeout, "idle-timeout", d.IdleTimeout, "wait for the next command")
	fs.DurationVar(&o.dataTimeout, "data-timeout", d.DataTimeout, "longest pause inside a message body")
	fs.DurationVar(&o.greetDelay, "greet-delay", 0, "hold the greeting back; clients that talk first are dropped")
	fs.BoolVar(&o.normalizeBareEOL, "normalize-bare-eol", false, "turn bare CR or LF in DATA into CRLF instead of rejecting the message")
	fs.Var(&o.trustedProxies, "trusted-proxy", "CIDR of load balancers that send a PROXY protocol header (repeatable)")
	fs.Var(&o.allowCIDRs, "allow-cidr", "only clients in these CIDRs may connect (repeatable; none: everyone not denied); others get 554 5.7.1")
	fs.Var(&o.denyCIDRs, "deny-cidr", "clients in these CIDRs are refused with 554 5.7.1, even if allowed (repeatable)")
	fs.Var(&o.recipientDomains, "recipient-domain", "domain we accept mail for, .example.com for its subdomains (repeatable; none: any); others get 550 5.7.1 at RCPT")
	fs.Float64Var(&o.connRate, "conn-rate", 0, "new connections per second one client IP may open, sustained; 0 for no limit; past it 421 4.7.0")
	fs.IntVar(&o.connBurst, "conn-burst", 0, "connections one client IP may open in a burst (the bucket size); 0 for max(1, conn-rate)")
	fs.Float64Var(&o.msgRate, "msg-rate", 0, "messages per second one client IP may send, sustained; 0 for no limit; past it 450 4.7.1 at MAIL")
	fs.IntVar(&o.msgBurst, "msg-burst", 0, "messages one client IP may send in a burst (the bucket size); 0 for max(1, msg-rate)")
	fs.IntVar(&o.maxTracked, "max-tracked-clients", policy.DefaultMaxTracked, "client IPs whose rate state is kept (about 110 bytes each); the least recent is forgotten")
	fs.IntVar(&o.eventLoops, "event-loops", 0, "event loops, 0 for one per CPU")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM, time for transactions in flight to finish")
	fs.StringVar(&o.adminListen, "admin-listen", "127.0.0.1:9025", "HTTP address for /metrics, /healthz, /readyz and /debug/pprof/, empty for none")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "text or json")
	o.amqp.register(fs)
	return o, fs
}

// listFlag is a repeatable flag of strings.
type listFlag struct {
	values []string
	set    bool // set once: the first value replaces the default
}

func (l *listFlag) String() string { return strings.Join(l.values, ",") }

func (l *listFlag) Set(v string) error {
	if !l.set {
		l.values, l.set = nil, true
	}
	l.values = append(l.values, v)
	return nil
}

// prefixList is a repeatable flag of CIDR prefixes; a bare address
// stands for itself alone (/32 or /128).
type prefixList struct {
	prefixes []netip.Prefix
	set      bool
}

func (p *prefixList) String() string {
	s := make([]string, len(p.prefixes))
	for i, x := range p.prefixes {
		s[i] = x.String()
	}
	return strings.Join(s, ",")
}

func (p *prefixList) Set(v string) error {
	v = strings.TrimSpace(v)
	pfx, err := netip.ParsePrefix(v)
	if err != nil {
		a, aerr := netip.ParseAddr(v)
		if aerr != nil {
			return fmt.Errorf("%q is not a CIDR prefix or an IP address", v)
		}
		pfx = netip.PrefixFrom(a, a.BitLen())
	}
	if pfx != pfx.Masked() {
		return fmt.Errorf("%q has bits set past its prefix length (did you mean %s?)", v, pfx.Masked())
	}
	if !p.set {
		p.prefixes, p.set = nil, true
	}
	p.prefixes = append(p.prefixes, pfx)
	return nil
}

// sizeFlag accepts plain octets or a K, M, G suffix (powers of 1024).
type sizeFlag struct{ n int64 }

func (s *sizeFlag) String() string { return formatSize(s.n) }

func (s *sizeFlag) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	s.n = n
	return nil
}

func parseSize(v string) (int64, error) {
	mult := int64(1)
	t := strings.ToUpper(strings.TrimSpace(v))
	t = strings.TrimSuffix(t, "IB")
	t = strings.TrimSuffix(t, "B")
	switch {
	case strings.HasSuffix(t, "K"):
		mult, t = 1<<10, t[:len(t)-1]
	case strings.HasSuffix(t, "M"):
		mult, t = 1<<20, t[:len(t)-1]
	case strings.HasSuffix(t, "G"):
		mult, t = 1<<30, t[:len(t)-1]
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size (octets, or with K, M, G)", v)
	}
	return n * mult, nil
}

// formatSize writes n with the largest suffix that divides it.
func formatSize(n int64) string {
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

// formatDuration drops the zero units time.Duration.String keeps: 5m, not 5m0s.
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// envName is the variable that stands for a flag.
func envName(flagName string) string {
	return "LSMTP_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// policyConfig is the client controls' part of the options.
func (o *options) policyConfig() policy.Config {
	return policy.Config{
		Allow:            o.allowCIDRs.prefixes,
		Deny:             o.denyCIDRs.prefixes,
		ConnRate:         o.connRate,
		ConnBurst:        o.connBurst,
		MsgRate:          o.msgRate,
		MsgBurst:         o.msgBurst,
		RecipientDomains: o.recipientDomains.values,
		MaxTracked:       o.maxTracked,
	}
}

// newPolicy builds the client controls; nil when there are none, so that
// the engine skips them altogether.
func (o *options) newPolicy() (engine.ClientPolicy, error) {
	cfg := o.policyConfig()
	if len(cfg.Allow) == 0 && len(cfg.Deny) == 0 && len(cfg.RecipientDomains) == 0 && cfg.ConnRate == 0 && cfg.MsgRate == 0 {
		return nil, nil
	}
	p, err := policy.New(cfg)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// engineConfig is the engine's part of the options. The sink, the logger
// and the client policy (newPolicy) are the caller's.
func (o *options) engineConfig() engine.Config {
	return engine.Config{
		Listen:             o.listen.values,
		Hostname:           o.hostname,
		MaxMessageSize:     o.maxMessageSize.n,
		MaxInFlightBytes:   o.maxInFlightBytes.n,
		MaxRecipients:      o.maxRecipients,
		MaxLineLength:      o.maxLineLength,
		MaxPipelineBacklog: int(o.maxPipelineBacklog.n),
		MaxConns:           o.maxConns,
		MaxConnsPerIP:      o.maxConnsPerIP,
		MaxErrors:          o.maxErrors,
		IdleTimeout:        o.idleTimeout,
		DataTimeout:        o.dataTimeout,
		GreetDelay:         o.greetDelay,
		NormalizeBareEOL:   o.normalizeBareEOL,
		TrustedProxies:     o.trustedProxies.prefixes,
		EventLoops:         o.eventLoops,
	}
}
