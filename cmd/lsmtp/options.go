package main

import (
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lsmtp/lsmtp/broker"
	"github.com/lsmtp/lsmtp/engine"
	"github.com/lsmtp/lsmtp/internal/policy"
)

// options are the settings of one lsmtp process. The engine's, the
// broker's and the client controls' settings are those packages' own
// Config values, filled in place: the package that owns a bound checks it
// on exactly what will run.
type options struct {
	configFile      string
	eng             engine.Config
	brk             broker.Config
	pol             policy.Config
	sink            string
	adminListen     string
	logLevel        string
	logFormat       string
	shutdownTimeout time.Duration
}

// option is one setting: the flag --name, the variable LSMTP_NAME (upper
// case, dashes as underscores) and the key name: in the file. Flags,
// variables, the file's schema, config sample, config print and the
// reload rules all come from table.
type option struct {
	name    string
	section string // heading in the sample and in config print; "" for --config and --no-declare
	help    string
	ptr     any    // the field: *string, *int, *int64, *bool, *float64, *time.Duration, *[]string, *[]netip.Prefix
	size    bool   // an integer in octets, with K, M, G suffixes
	secret  bool   // masked in config print; a file holding one should be private
	restart bool   // SIGHUP cannot change it
	machine bool   // the default depends on the machine: the sample shows it commented out
	negates string // the boolean option this older spelling is the opposite of
	flagged bool   // a flag gave an item: a list's next one adds to it
}

// table is every option of lsmtp, writing into o, in the order of the
// sample file. The defaults are what o holds when table is called. To add
// an option, add one entry here (and its field to options, or use a field
// of a package's Config): flag, variable, key, sample, print and reload
// follow.
func (o *options) table() []option {
	e, b, p := &o.eng, &o.brk, &o.pol
	const smtp, limits, clients, ops, rabbit = "SMTP", "Limits", "Client controls", "Operations", "RabbitMQ"
	const natsJS = "NATS JetStream"
	const secure = "TLS and AUTH"
	t := []option{
		{name: "config", ptr: &o.configFile, restart: true, help: "YAML file of options, keyed by flag name (flags and LSMTP_* variables win over it)"},
		{name: "listen", section: smtp, ptr: &e.Listen, restart: true, help: "address to listen on, host:port (repeatable)"},
		{name: "hostname", section: smtp, ptr: &e.Hostname, machine: true, help: "name in the greeting and Received: headers"},
		{name: "sink", section: smtp, ptr: &o.sink, restart: true, help: "where messages go: amqp (RabbitMQ), nats (NATS JetStream) or null (accept and discard)"},
		{name: "trusted-proxy", section: smtp, ptr: &e.TrustedProxies, help: "CIDR of load balancers that send a PROXY protocol header (repeatable)"},
		{name: "xclient-from", section: smtp, ptr: &e.XclientFrom, help: "CIDR of relays that connect without a PROXY header and may name their client with XCLIENT (repeatable)"},
		{name: "event-loops", section: smtp, ptr: &e.EventLoops, restart: true, help: "event loops, 0 for one per CPU"},
		{name: "greet-delay", section: smtp, ptr: &e.GreetDelay, help: "hold the greeting back; clients that talk first are dropped"},
		{name: "normalize-bare-eol", section: smtp, ptr: &e.NormalizeBareEOL, help: "turn bare CR or LF in DATA into CRLF instead of rejecting the message"},

		{name: "tls-cert", section: secure, ptr: &e.TLSCert, help: "PEM certificate (its chain may follow); with tls-key, EHLO offers STARTTLS (RFC 3207). Re-read on SIGHUP and when it changes (looked at once a minute); a pair that does not load keeps the one in force"},
		{name: "tls-key", section: secure, ptr: &e.TLSKey, help: "PEM private key of tls-cert"},
		{name: "listen-tls", section: secure, ptr: &e.ListenTLS, restart: true, help: "address that speaks TLS from the first byte (RFC 8314, port 465), repeatable"},
		{name: "listen-submission", section: secure, ptr: &e.ListenSubmission, restart: true, help: "address for mail submission (RFC 6409, port 587): MAIL needs AUTH; repeatable"},
		{name: "tls-min-version", section: secure, ptr: &e.TLSMinVersion, help: "oldest TLS version accepted: 1.2 or 1.3 (1.0 and 1.1 never: RFC 8996)"},
		{name: "require-tls", section: secure, ptr: &e.RequireTLS, help: "refuse MAIL before STARTTLS with 530 5.7.0"},
		{name: "auth-file", section: secure, ptr: &e.AuthFile, help: "file of user:hash lines (bcrypt or argon2id, made by lsmtp auth hash); AUTH PLAIN and LOGIN are offered over TLS only. Re-read like tls-cert"},
		{name: "require-auth", section: secure, ptr: &e.RequireAuth, help: "refuse MAIL without AUTH on every listener with 530 5.7.0"},
		{name: "auth-fail-delay", section: secure, ptr: &e.AuthFailDelay, help: "wait before the 535 to a failed AUTH; doubles with each failure from the same client IP, up to 32 times"},
		{name: "tls-handshake-timeout", section: secure, ptr: &e.HandshakeTimeout, help: "longest TLS handshake"},
		{name: "max-tls-handshakes", section: secure, ptr: &e.MaxHandshakes, restart: true, help: "TLS handshakes at once, 0 for 16 per CPU; a connection that finds none free within a second is closed"},
		{name: "max-tls-handshakes-per-ip", section: secure, ptr: &e.MaxHandshakesPerIP, restart: true, help: "TLS handshakes at once from one client IP (IPv6 by ipv6-prefix), 0 for no bound of its own; a connection that finds none of its client's free within a second is closed, holding none of max-tls-handshakes meanwhile"},

		{name: "max-message-size", section: limits, ptr: &e.MaxMessageSize, size: true, help: "largest message accepted, octets (K, M, G suffixes)"},
		{name: "max-in-flight-bytes", section: limits, ptr: &e.MaxInFlightBytes, size: true, help: "message octets held at once over all sessions until the broker confirmed; 451 4.3.1 past it"},
		{name: "max-recipients", section: limits, ptr: &e.MaxRecipients, help: "recipients per message"},
		{name: "max-line-length", section: limits, ptr: &e.MaxLineLength, help: "longest command line including CRLF, 512 (RFC 5321 4.5.3.1.4) to 65536"},
		{name: "max-pipeline-backlog", section: limits, ptr: &e.MaxPipelineBacklog, size: true, help: "input a client may pipeline behind a command that waits for the broker, or while its replies go unread; 421 past it"},
		{name: "max-session-buffers", section: limits, ptr: &e.MaxSessionBuffers, size: true, help: "octets all sessions hold at once in buffers (pipelined input, unsent replies); past it a session over 16 KiB takes no commands, 421 if it still grows"},
		{name: "max-conns", section: limits, ptr: &e.MaxConns, help: "open connections at once, 0 for no limit"},
		{name: "max-conns-per-ip", section: limits, ptr: &e.MaxConnsPerIP, help: "open connections from one client IP, 0 for no limit"},
		{name: "max-errors", section: limits, ptr: &e.MaxErrors, help: "protocol errors before the session is closed"},
		{name: "idle-timeout", section: limits, ptr: &e.IdleTimeout, help: "wait for the next command"},
		{name: "data-timeout", section: limits, ptr: &e.DataTimeout, help: "longest pause inside a message body"},
		{name: "shutdown-timeout", section: limits, ptr: &o.shutdownTimeout, help: "on SIGTERM, time for transactions in flight to finish"},

		{name: "allow-cidr", section: clients, ptr: &p.Allow, help: "only clients in these CIDRs may connect (repeatable; none: everyone not denied); others get 554 5.7.1"},
		{name: "deny-cidr", section: clients, ptr: &p.Deny, help: "clients in these CIDRs are refused with 554 5.7.1, even if allowed (repeatable)"},
		{name: "recipient-domain", section: clients, ptr: &p.RecipientDomains, help: "domain we accept mail for, .example.com for its subdomains (repeatable; none: any); others get 550 5.7.1 at RCPT"},
		{name: "conn-rate", section: clients, ptr: &p.ConnRate, help: "new connections per second one client IP may open, sustained; 0 for no limit; past it 421 4.7.0"},
		{name: "conn-burst", section: clients, ptr: &p.ConnBurst, help: "connections one client IP may open in a burst (the bucket size); 0 for max(1, conn-rate)"},
		{name: "msg-rate", section: clients, ptr: &p.MsgRate, help: "messages per second one client IP may send, sustained; 0 for no limit; past it 450 4.7.1 at MAIL"},
		{name: "msg-burst", section: clients, ptr: &p.MsgBurst, help: "messages one client IP may send in a burst (the bucket size); 0 for max(1, msg-rate)"},
		{name: "ipv6-prefix", section: clients, ptr: &e.IPv6Prefix, restart: true, help: "leading bits of an IPv6 client address that name one client for every per-client limit and rate (32..128); IPv4 clients are whole addresses"},
		{name: "max-tracked-clients", section: clients, ptr: &p.MaxTracked, help: "client IPs whose rate state is kept (about 110 bytes each); the least recent is forgotten"},

		{name: "admin-listen", section: ops, ptr: &o.adminListen, restart: true, help: "HTTP address for /metrics, /healthz, /readyz and /debug/pprof/, empty for none"},
		{name: "log-level", section: ops, ptr: &o.logLevel, help: "debug, info, warn or error"},
		{name: "log-format", section: ops, ptr: &o.logFormat, restart: true, help: "text or json"},

		{name: "amqp-url", section: rabbit, ptr: &b.URLs, secret: true, help: "AMQP URL of a RabbitMQ node; repeat for the nodes of a cluster, tried in turn (credentials also from $LSMTP_AMQP_USERNAME/$LSMTP_AMQP_PASSWORD)"},
		{name: "amqp-username", section: rabbit, ptr: &b.Username, help: "user for every AMQP URL, replacing the URLs' own (better in the file or $LSMTP_AMQP_USERNAME)"},
		{name: "amqp-password", section: rabbit, ptr: &b.Password, secret: true, help: "password for amqp-username (better in the file or $LSMTP_AMQP_PASSWORD than on the command line)"},
		{name: "exchange", section: rabbit, ptr: &b.Exchange, help: "exchange messages are published to"},
		{name: "exchange-type", section: rabbit, ptr: &b.ExchangeType, help: "type of the declared exchange (default: topic when the binding key has a * or # word, direct otherwise)"},
		{name: "queue", section: rabbit, ptr: &b.Queue, help: "queue declared and bound to the exchange"},
		{name: "routing-key", section: rabbit, ptr: &b.RoutingKey, help: "routing key; with {domain} one copy is published per recipient domain"},
		{name: "binding-key", section: rabbit, ptr: &b.BindingKey, help: "binding key of the queue (default: the routing key, {domain} replaced by #)"},
		{name: "declare", section: rabbit, ptr: &b.Declare, help: "declare exchange, queue and binding on connect; false when the topology is managed elsewhere"},
		{name: "no-declare", ptr: &b.Declare, negates: "declare", help: "same as --declare=false"},
		{name: "max-domains", section: rabbit, ptr: &b.MaxDomains, help: "with a {domain} routing key, distinct recipient domains (copies) per message; 452 4.5.3 at RCPT past it"},
		{name: "queue-type", section: rabbit, ptr: &b.QueueType, help: "quorum or classic"},
		{name: "dead-letter-exchange", section: rabbit, ptr: &b.DeadLetterExchange, help: "x-dead-letter-exchange of the queue"},
		{name: "max-length", section: rabbit, ptr: &b.MaxLength, help: "x-max-length of the queue (0: none)"},
		{name: "max-length-bytes", section: rabbit, ptr: &b.MaxLengthBytes, help: "x-max-length-bytes of the queue (0: none)"},
		{name: "overflow", section: rabbit, ptr: &b.Overflow, help: "x-overflow of the queue: drop-head, reject-publish, reject-publish-dlx"},
		{name: "amqp-workers", section: rabbit, ptr: &b.Workers, help: "publisher workers, each with its own channel"},
		{name: "amqp-window", section: rabbit, ptr: &b.Window, help: "unconfirmed publishes per worker"},
		{name: "amqp-ring", section: rabbit, ptr: &b.RingSize, help: "messages waiting for a publisher or deferred, beyond the unconfirmed windows; raised to the connection limit, so a full ring never refuses mail"},
		{name: "confirm-timeout", section: rabbit, ptr: &b.ConfirmTimeout, help: "how long one publish waits for the broker's confirm"},
		{name: "publish-retry-window", section: rabbit, ptr: &b.PublishRetryWindow, help: "how long after the final dot a message the broker cannot take now is published again before the client gets 451 (at least confirm-timeout; 0: no retry)"},
		{name: "spool-dir", section: rabbit, ptr: &b.SpoolDir, help: "directory of the durable spool: a message the broker cannot take now is fsynced there and answered 250, then published from there; empty for none (the client waits, then 451)"},
		{name: "spool-max-bytes", section: rabbit, ptr: &b.SpoolMaxBytes, size: true, help: "octets the spool's files may take; past it a message waits in memory, then 451 4.3.1"},
		{name: "spool-max-age", section: rabbit, ptr: &b.SpoolMaxAge, help: "age of a spooled message past which it is alarmed on (logged, lsmtp_spool_over_max_age); never dropped"},
		{name: "amqp-dial-timeout", section: rabbit, ptr: &b.DialTimeout, help: "bound on TCP connect plus the AMQP handshake"},
		{name: "amqp-heartbeat", section: rabbit, ptr: &b.Heartbeat, help: "AMQP heartbeat interval"},
		{name: "amqp-reconnect-min", section: rabbit, ptr: &b.ReconnectMin, help: "first wait before reconnecting to RabbitMQ (doubles, with jitter)"},
		{name: "amqp-reconnect-max", section: rabbit, ptr: &b.ReconnectMax, help: "longest wait between reconnect attempts"},
		{name: "envelope", section: rabbit, ptr: &b.Envelope, help: "how the envelope travels: trace (Return-Path, X-Original-To, X-Lsmtp-Envelope fields above Received: in the body), headers (the smtp-* AMQP headers) or both"},
		{name: "node", section: rabbit, ptr: &b.Node, machine: true, help: "node name in the smtp-node header"},

		{name: "nats-url", section: natsJS, ptr: &b.NATSURLs, secret: true, help: "URL of a NATS server (nats://, tls://); repeat for the servers of a cluster, tried in turn. With --sink nats, the amqp-* options do not apply; publish-retry-window, confirm-timeout, spool-*, envelope, max-domains and node do"},
		{name: "nats-user", section: natsJS, ptr: &b.NATSUser, help: "NATS user (with nats-password); one kind of credentials: user, token or creds"},
		{name: "nats-password", section: natsJS, ptr: &b.NATSPassword, secret: true, help: "password of nats-user (better in the file or $LSMTP_NATS_PASSWORD than on the command line)"},
		{name: "nats-token", section: natsJS, ptr: &b.NATSToken, secret: true, help: "NATS authentication token"},
		{name: "nats-creds", section: natsJS, ptr: &b.NATSCreds, help: "NATS .creds file (user JWT and NKey seed)"},
		{name: "nats-stream", section: natsJS, ptr: &b.NATSStream, help: "JetStream stream that stores the messages"},
		{name: "nats-subject", section: natsJS, ptr: &b.NATSSubject, help: "subject messages are published to; ending in .{domain}, one copy is published per recipient domain"},
		{name: "nats-declare", section: natsJS, ptr: &b.NATSDeclare, help: "create the stream, or update it to these settings, on connect: file storage, nats-replicas, nats-max-bytes with discard new, a duplicate window of at least 2m; false when it is managed elsewhere"},
		{name: "nats-replicas", section: natsJS, ptr: &b.NATSReplicas, help: "replicas of the declared stream (1..5)"},
		{name: "nats-max-bytes", section: natsJS, ptr: &b.NATSMaxBytes, size: true, help: "octets the declared stream may hold, 0 for no limit; past it new messages are refused, 451 4.3.1"},
		{name: "nats-workers", section: natsJS, ptr: &b.NATSWorkers, help: "publisher workers, each with its own JetStream context on the connection"},
		{name: "nats-max-pending", section: natsJS, ptr: &b.NATSMaxPending, help: "asynchronous publishes per worker waiting for their PubAck"},
	}
	for i := range t {
		// The broker is opened once: nothing about it changes on SIGHUP.
		t[i].restart = t[i].restart || t[i].section == rabbit || t[i].section == natsJS
	}
	return t
}

// newOptions returns the defaults: the packages' own, and this command's.
func newOptions() *options {
	host, _ := os.Hostname()
	if host == "" {
		host = "localhost"
	}
	o := &options{eng: engine.Defaults, brk: broker.DefaultConfig(), sink: "amqp", adminListen: "127.0.0.1:9025",
		logLevel: "info", logFormat: "text", shutdownTimeout: 30 * time.Second}
	o.eng.Listen = slices.Clone(o.eng.Listen)
	o.eng.Hostname = host
	o.pol.MaxTracked = policy.DefaultMaxTracked
	return o
}

// Set parses one item into the field; a list appends it. Its errors say
// what was expected.
func (o *option) Set(s string) error {
	field := reflect.ValueOf(o.ptr).Elem()
	if field.Kind() == reflect.Slice && !o.flagged {
		field.SetZero() // the first flag replaces the default list
	}
	o.flagged = true
	var v any = s
	var err error
	switch o.ptr.(type) {
	case *bool:
		var b bool
		if b, err = strconv.ParseBool(s); err != nil {
			return fmt.Errorf("%q: want true or false", s)
		}
		v = b != (o.negates != "")
	case *int, *int64:
		v, err = o.integer(s)
	case *float64:
		if v, err = strconv.ParseFloat(s, 64); err != nil {
			return fmt.Errorf("%q is not a number", s)
		}
	case *time.Duration:
		if v, err = time.ParseDuration(s); err != nil {
			return fmt.Errorf("%q is not a duration (like 300ms, 30s, 5m, 1h)", s)
		}
	case *[]netip.Prefix:
		v, err = parsePrefix(s)
	}
	if err != nil {
		return err
	}
	if field.Kind() == reflect.Slice {
		field.Set(reflect.Append(field, reflect.ValueOf(v)))
	} else {
		field.Set(reflect.ValueOf(v).Convert(field.Type()))
	}
	return nil
}

func (o *option) integer(s string) (int64, error) {
	if o.size {
		return parseSize(s)
	}
	n, err := strconv.ParseInt(s, 0, strconv.IntSize)
	if err != nil {
		return 0, fmt.Errorf("%q is not a whole number", s)
	}
	return n, nil
}

// text is the field's value as it would be written, one string per item.
func (o *option) text() []string {
	num := func(n int64) []string {
		if o.size {
			return []string{engine.FormatSize(n)}
		}
		return []string{strconv.FormatInt(n, 10)}
	}
	switch p := o.ptr.(type) {
	case *string:
		return []string{*p}
	case *[]string:
		return slices.Clone(*p)
	case *bool:
		return []string{strconv.FormatBool(*p != (o.negates != ""))}
	case *int:
		return num(int64(*p))
	case *int64:
		return num(*p)
	case *float64:
		return []string{strconv.FormatFloat(*p, 'g', -1, 64)}
	case *time.Duration:
		return []string{formatDuration(*p)}
	case *[]netip.Prefix:
		var out []string
		for _, x := range *p {
			out = append(out, x.String())
		}
		return out
	}
	return nil
}

func (o *option) isList() bool { return reflect.TypeOf(o.ptr).Elem().Kind() == reflect.Slice }

// String and IsBoolFlag make an option a flag.Value.
func (o *option) String() string { return strings.Join(o.show(true), ",") }

func (o *option) IsBoolFlag() bool { _, ok := o.ptr.(*bool); return ok }

func parseSize(v string) (int64, error) {
	mult := int64(1)
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(v)), "IB"), "B")
	if i := strings.IndexAny(t, "KMG"); i >= 0 && i == len(t)-1 {
		mult, t = int64(1)<<(10*(1+strings.IndexByte("KMG", t[i]))), t[:i]
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size (octets, or with K, M, G)", v)
	}
	return n * mult, nil
}

// parsePrefix reads a CIDR prefix; a bare address stands for itself alone
// (/32 or /128).
func parsePrefix(v string) (netip.Prefix, error) {
	v = strings.TrimSpace(v)
	pfx, err := netip.ParsePrefix(v)
	if err != nil {
		a, aerr := netip.ParseAddr(v)
		if aerr != nil {
			return pfx, fmt.Errorf("%q is not a CIDR prefix or an IP address", v)
		}
		pfx = netip.PrefixFrom(a, a.BitLen())
	}
	if pfx != pfx.Masked() {
		return pfx, fmt.Errorf("%q has bits set past its prefix length (did you mean %s?)", v, pfx.Masked())
	}
	return pfx, nil
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

// envName is the variable that stands for an option.
func envName(name string) string {
	return "LSMTP_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// newPolicy builds the client controls; nil when there are none, so that
// the engine skips them altogether.
func (o *options) newPolicy() (engine.ClientPolicy, error) {
	c := o.pol
	c.IPv6Prefix = o.eng.IPv6Prefix // one prefix for every per-client count
	if len(c.Allow) == 0 && len(c.Deny) == 0 && len(c.RecipientDomains) == 0 && c.ConnRate == 0 && c.MsgRate == 0 {
		return nil, nil
	}
	p, err := policy.New(c)
	if err != nil {
		return nil, err
	}
	return p, nil
}
