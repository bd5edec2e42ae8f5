package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.yaml.in/yaml/v3"

	"github.com/lsmtp/lsmtp/broker"
	"github.com/lsmtp/lsmtp/engine"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// source says where an option's value came from. Higher wins.
type source uint8

const (
	fromDefault source = iota
	fromFile
	fromEnv
	fromFlag
)

func (s source) String() string {
	return [...]string{"default", "file", "env", "flag"}[s]
}

// lookupEnv is os.LookupEnv, or a map in tests.
type lookupEnv func(string) (string, bool)

// config is a set of options with where each came from.
type config struct {
	o    *options
	fs   *flag.FlagSet
	from map[string]source // by canonical key; absent: default
	line map[string]int    // line in the file, for keys from the file
	args []string          // what follows the flags: a subcommand

	warnings   []string // settings that work but deserve a look
	warnedKeys []string // the key of each warning
}

// logWarnings logs the warnings a running server should show; the engine
// warns about max-recipients itself.
func (c *config) logWarnings(log *slog.Logger) {
	for i, w := range c.warnings {
		if c.warnedKeys[i] != "max-recipients" {
			log.Warn("configuration", "problem", w)
		}
	}
}

// problems is every error found in a configuration, one per line.
type problems []string

func (p problems) Error() string { return strings.Join(p, "\n") }

// canonical maps an alias to the key it stands for.
func canonical(key string) string {
	if c, ok := aliases[key]; ok {
		return c
	}
	return key
}

// loadConfig layers the sources: defaults, then the file (--config or
// $LSMTP_CONFIG), then the variables, then the flags, each setting only
// the options no higher source set. Errors come back as problems, each
// naming where the bad value was given.
func loadConfig(args []string, env lookupEnv, stderr io.Writer) (*config, error) {
	o, fs := newOptions(stderr)
	c := &config{o: o, fs: fs, from: map[string]source{}, line: map[string]int{}}
	if err := fs.Parse(args); err != nil {
		return nil, err // already reported by the flag package, with usage
	}
	c.args = fs.Args()
	fs.Visit(func(f *flag.Flag) { c.from[canonical(f.Name)] = fromFlag })

	var errs problems
	fs.VisitAll(func(f *flag.Flag) {
		key := canonical(f.Name)
		if c.from[key] == fromFlag {
			return
		}
		v, ok := env(envName(f.Name))
		if !ok {
			return
		}
		if err := setValue(f, splitEnv(f.Name, v)); err != nil {
			errs = append(errs, fmt.Sprintf("$%s: %v", envName(f.Name), err))
			return
		}
		c.from[key] = fromEnv
	})

	if o.configFile != "" {
		data, err := os.ReadFile(o.configFile)
		if err != nil {
			errs = append(errs, fmt.Sprintf("config: %v", err))
		} else {
			errs = append(errs, c.applyFile(o.configFile, data)...)
		}
	}
	// Validation runs even after errors, so that one check shows every
	// problem; a value that could not be set kept its default.
	errs = append(errs, c.validate()...)
	if len(errs) > 0 {
		return c, errs
	}
	return c, nil
}

// splitEnv turns a variable into the values of its flag: a repeatable
// flag's variable is a comma-separated list.
func splitEnv(name, v string) []string {
	if !repeatable[name] {
		return []string{v}
	}
	var items []string
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			items = append(items, item)
		}
	}
	return items
}

// setValue sets a flag from its items, all or nothing: a bad item leaves
// the flag as it was (the flag package's own values would be zeroed).
func setValue(f *flag.Flag, items []string) error {
	_, scratch := newOptions(io.Discard)
	if sf := scratch.Lookup(f.Name); sf != nil {
		for _, item := range items {
			if err := sf.Value.Set(item); err != nil {
				return describeSetError(sf, item, err)
			}
		}
	}
	for _, item := range items {
		if err := f.Value.Set(item); err != nil {
			return describeSetError(f, item, err)
		}
	}
	return nil
}

// describeSetError replaces the flag package's bare "parse error" with
// what was expected.
func describeSetError(f *flag.Flag, v string, err error) error {
	g, ok := f.Value.(flag.Getter)
	if !ok || !strings.Contains(err.Error(), "parse error") {
		return err
	}
	switch g.Get().(type) {
	case bool:
		return fmt.Errorf("%q: want true or false", v)
	case int, int64, uint, uint64:
		return fmt.Errorf("%q is not a whole number", v)
	case float64:
		return fmt.Errorf("%q is not a number", v)
	case time.Duration:
		return fmt.Errorf("%q is not a duration (like 300ms, 30s, 5m, 1h)", v)
	}
	return err
}

// applyFile sets, from a YAML mapping of flag names to values, every
// option that no flag or variable set. Every key is checked, also the
// ones a flag overrides, so that `config check` finds all mistakes in the
// file. Unknown keys are errors: a misspelt limit must not go unnoticed.
func (c *config) applyFile(path string, data []byte) problems {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return problems{fmt.Sprintf("%s: %v", path, err)}
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil // an empty file: all defaults
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil // only comments
	}
	if root.Kind != yaml.MappingNode {
		return problems{fmt.Sprintf("%s:%d: want a mapping of key: value (the keys are the flag names)", path, root.Line)}
	}
	var errs problems
	// A scratch flag set checks the values that higher sources override.
	_, scratch := newOptions(io.Discard)
	seen := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		key := k.Value
		at := fmt.Sprintf("%s:%d: %s", path, k.Line, key)
		if first, dup := seen[canonical(key)]; dup {
			errs = append(errs, fmt.Sprintf("%s: given twice (first on line %d)", at, first))
			continue
		}
		seen[canonical(key)] = k.Line
		f := c.fs.Lookup(key)
		if key == keyConfig || f == nil {
			errs = append(errs, fmt.Sprintf("%s: unknown key%s", at, c.suggest(key)))
			continue
		}
		items, err := nodeValues(key, v)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", at, err))
			continue
		}
		if c.from[canonical(key)] > fromFile {
			// Overridden: only checked.
			if err := setValue(scratch.Lookup(key), items); err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", at, err))
			}
			continue
		}
		if err := setValue(f, items); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", at, err))
			continue
		}
		c.from[canonical(key)] = fromFile
		c.line[canonical(key)] = k.Line
	}
	return errs
}

// nodeValues are the strings a YAML value stands for: one scalar, or a
// sequence of scalars for a repeatable key.
func nodeValues(key string, v *yaml.Node) ([]string, error) {
	if v.Kind == yaml.AliasNode && v.Alias != nil {
		v = v.Alias
	}
	switch v.Kind {
	case yaml.ScalarNode:
		if v.Tag == "!!null" {
			return nil, errors.New("no value (remove the key to get the default)")
		}
		return []string{v.Value}, nil
	case yaml.SequenceNode:
		if !repeatable[key] {
			return nil, errors.New("takes one value, not a list")
		}
		items := make([]string, 0, len(v.Content))
		for _, it := range v.Content {
			if it.Kind != yaml.ScalarNode || it.Tag == "!!null" {
				return nil, fmt.Errorf("line %d: a list item must be a plain value", it.Line)
			}
			items = append(items, it.Value)
		}
		return items, nil
	}
	return nil, errors.New("takes a value or a list of values, not a mapping")
}

// suggest names the key a misspelt one probably meant.
func (c *config) suggest(key string) string {
	best, bestDist := "", 3
	c.fs.VisitAll(func(f *flag.Flag) {
		if f.Name == keyConfig {
			return
		}
		if d := editDistance(strings.ReplaceAll(strings.ToLower(key), "_", "-"), f.Name); d < bestDist {
			best, bestDist = f.Name, d
		}
	})
	if best == "" {
		return " (the keys are the flag names: lsmtp --help)"
	}
	return fmt.Sprintf(" (did you mean %s?)", best)
}

// editDistance is the Levenshtein distance of two short strings.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// where tells an operator where to change a key's value.
func (c *config) where(key string) string {
	key = canonical(key)
	switch c.from[key] {
	case fromFlag:
		return "--" + key
	case fromEnv:
		return "$" + envName(key)
	case fromFile:
		return fmt.Sprintf("%s:%d: %s", c.o.configFile, c.line[key], key)
	}
	return key + " (default)"
}

// validate checks what each value alone cannot: ranges, and limits that
// cannot hold together. Each problem names the key and where it was set.
func (c *config) validate() problems {
	o := c.o
	var errs problems
	bad := func(key, format string, args ...any) {
		errs = append(errs, c.where(key)+": "+fmt.Sprintf(format, args...))
	}
	warn := func(key, format string, args ...any) {
		c.warnings = append(c.warnings, c.where(key)+": "+fmt.Sprintf(format, args...))
		c.warnedKeys = append(c.warnedKeys, key)
	}

	switch o.sink {
	case "amqp", "null":
	default:
		bad("sink", "%q: want amqp or null", o.sink)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		bad("log-level", "%q: want debug, info, warn or error", o.logLevel)
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		bad("log-format", "%q: want text or json", o.logFormat)
	}
	if len(o.listen.values) == 0 {
		bad("listen", "no address to listen on")
	}
	for _, a := range o.listen.values {
		if err := checkHostPort(a); err != nil {
			bad("listen", "%v", err)
		}
	}
	if o.adminListen != "" {
		if err := checkHostPort(o.adminListen); err != nil {
			bad("admin-listen", "%v (empty turns the admin listener off)", err)
		}
	}
	if o.hostname == "" || len(o.hostname) > 255 || strings.ContainsFunc(o.hostname, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
		bad("hostname", "%q cannot stand in a greeting (a domain name, no spaces)", o.hostname)
	}

	positive := []struct {
		key string
		v   int64
	}{
		{"max-message-size", o.maxMessageSize.n},
		{"max-in-flight-bytes", o.maxInFlightBytes.n},
		{"max-recipients", int64(o.maxRecipients)},
		{"max-line-length", int64(o.maxLineLength)},
		{"max-pipeline-backlog", o.maxPipelineBacklog.n},
		{"max-errors", int64(o.maxErrors)},
		{"idle-timeout", int64(o.idleTimeout)},
		{"data-timeout", int64(o.dataTimeout)},
		{"shutdown-timeout", int64(o.shutdownTimeout)},
	}
	for _, p := range positive {
		if p.v <= 0 {
			bad(p.key, "must be more than 0")
		}
	}
	notNegative := []struct {
		key string
		v   int64
	}{
		{"max-conns", int64(o.maxConns)},
		{"max-conns-per-ip", int64(o.maxConnsPerIP)},
		{"greet-delay", int64(o.greetDelay)},
		{"event-loops", int64(o.eventLoops)},
		{"conn-burst", int64(o.connBurst)},
		{"msg-burst", int64(o.msgBurst)},
		{"max-tracked-clients", int64(o.maxTracked)},
	}
	for _, p := range notNegative {
		if p.v < 0 {
			bad(p.key, "must not be negative")
		}
	}
	for _, r := range []struct {
		key string
		v   float64
	}{{"conn-rate", o.connRate}, {"msg-rate", o.msgRate}} {
		if r.v < 0 || math.IsNaN(r.v) || math.IsInf(r.v, 0) {
			bad(r.key, "%v: want a rate per second, 0 for no limit", r.v)
		}
	}
	for _, d := range o.recipientDomains.values {
		if d == "" || d == "." || strings.ContainsAny(d, "@ \t[]") {
			bad("recipient-domain", "%q is not a domain (example.com, or .example.com for its subdomains)", d)
		}
	}
	if o.maxLineLength > 0 && o.maxLineLength < 512 {
		bad("max-line-length", "%d is below the 512 octets RFC 5321 §4.5.3.1.4 requires", o.maxLineLength)
	}
	if o.maxPipelineBacklog.n > 1<<30 {
		bad("max-pipeline-backlog", "%s: at most 1G", formatSize(o.maxPipelineBacklog.n))
	}
	if o.maxMessageSize.n > o.maxInFlightBytes.n && o.maxInFlightBytes.n > 0 {
		bad("max-message-size", "%s is more than max-in-flight-bytes (%s): a message that large could never be held until the broker confirmed it",
			formatSize(o.maxMessageSize.n), formatSize(o.maxInFlightBytes.n))
	}
	if o.maxRecipients > 0 && o.maxRecipients < 100 {
		warn("max-recipients", "%d is below the 100 RFC 5321 §4.5.3.1.8 asks servers to accept", o.maxRecipients)
	}
	if o.idleTimeout > 0 && o.idleTimeout < 5*time.Minute {
		warn("idle-timeout", "%s is below the 5 minutes of RFC 5321 §4.5.3.2.7", formatDuration(o.idleTimeout))
	}
	if o.maxConns > 0 && o.maxConnsPerIP > o.maxConns {
		warn("max-conns-per-ip", "%d is more than max-conns (%d)", o.maxConnsPerIP, o.maxConns)
	}

	errs = append(errs, c.validateAMQP()...)

	// The packages' own checks catch whatever the ones above missed.
	if len(errs) == 0 {
		ec := o.engineConfig()
		pol, err := o.newPolicy()
		if err != nil {
			errs = append(errs, err.Error())
		}
		ec.Policy = pol
		ec.Sink = &sink.Null{}
		ec.Logger = slog.New(slog.DiscardHandler)
		if _, err := engine.New(ec); err != nil {
			errs = append(errs, err.Error())
		}
		bc := o.amqp.cfg
		if err := bc.Validate(); err != nil {
			errs = append(errs, err.Error())
		}
	}
	return errs
}

func (c *config) validateAMQP() problems {
	cfg := &c.o.amqp.cfg
	var errs problems
	bad := func(key, format string, args ...any) {
		errs = append(errs, c.where(key)+": "+fmt.Sprintf(format, args...))
	}
	if len(cfg.URLs) == 0 {
		bad(keyAMQPURL, "no AMQP URL")
	}
	for _, u := range cfg.URLs {
		if err := checkAMQPURL(u); err != nil {
			bad(keyAMQPURL, "%s: %v", broker.RedactURL(u), err)
		}
	}
	if cfg.Password != "" && cfg.Username == "" {
		bad(keyAMQPPassword, "set without amqp-username: it would be ignored")
	}
	if cfg.QueueType != broker.QueueQuorum && cfg.QueueType != broker.QueueClassic {
		bad("queue-type", "%q: want %s or %s", cfg.QueueType, broker.QueueQuorum, broker.QueueClassic)
	}
	ranges := []struct {
		key      string
		v        int
		min, max int
	}{
		{"amqp-workers", cfg.Workers, 1, 64},
		{"amqp-window", cfg.Window, 1, 65535},
		{"amqp-ring", cfg.RingSize, 2, 1 << 24},
	}
	for _, r := range ranges {
		if c.fs.Lookup(r.key) != nil && (r.v < r.min || r.v > r.max) {
			bad(r.key, "%d: want %d..%d", r.v, r.min, r.max)
		}
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"confirm-timeout", cfg.ConfirmTimeout},
		{"amqp-dial-timeout", cfg.DialTimeout},
		{"amqp-reconnect-min", cfg.ReconnectMin},
	} {
		if d.v <= 0 {
			bad(d.key, "must be more than 0")
		}
	}
	if cfg.Heartbeat < 0 {
		bad("amqp-heartbeat", "must not be negative")
	}
	if cfg.ReconnectMin > 0 && cfg.ReconnectMax < cfg.ReconnectMin {
		bad("amqp-reconnect-max", "%s is less than amqp-reconnect-min (%s)", formatDuration(cfg.ReconnectMax), formatDuration(cfg.ReconnectMin))
	}
	if cfg.MaxLength < 0 {
		bad("max-length", "must not be negative")
	}
	if cfg.MaxLengthBytes < 0 {
		bad("max-length-bytes", "must not be negative")
	}
	switch cfg.Overflow {
	case "", "drop-head", "reject-publish", "reject-publish-dlx":
	default:
		bad("overflow", "%q: want drop-head, reject-publish or reject-publish-dlx", cfg.Overflow)
	}
	return errs
}

// checkAMQPURL parses u as the AMQP client will. Its errors never repeat
// the URL, which may hold a password.
func checkAMQPURL(u string) error {
	p, err := url.Parse(u)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("not a URL: %v", err)
	}
	if p.Scheme != "amqp" && p.Scheme != "amqps" {
		return fmt.Errorf("scheme %q: want amqp or amqps", p.Scheme)
	}
	if p.Host == "" {
		return errors.New("no host")
	}
	if _, err := amqp.ParseURI(u); err != nil {
		return err
	}
	return nil
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

// sections order the keys in the sample file and in config print.
var sections = []struct {
	title string
	keys  []string
}{
	{"SMTP", []string{"listen", "hostname", "sink", "trusted-proxy", "event-loops", "greet-delay", "normalize-bare-eol"}},
	{"Limits", []string{"max-message-size", "max-in-flight-bytes", "max-recipients", "max-line-length", "max-pipeline-backlog",
		"max-conns", "max-conns-per-ip", "max-errors", "idle-timeout", "data-timeout", "shutdown-timeout"}},
	{"Client controls", []string{"allow-cidr", "deny-cidr", "recipient-domain", "conn-rate", "conn-burst", "msg-rate", "msg-burst", "max-tracked-clients"}},
	{"Operations", []string{"admin-listen", "log-level", "log-format"}},
	{"RabbitMQ", []string{keyAMQPURL, "amqp-username", keyAMQPPassword, "exchange", "exchange-type", "queue", "routing-key", "binding-key",
		"declare", "queue-type", "dead-letter-exchange", "max-length", "max-length-bytes", "overflow",
		"amqp-workers", "amqp-window", "amqp-ring", "confirm-timeout",
		"amqp-dial-timeout", "amqp-heartbeat", "amqp-reconnect-min", "amqp-reconnect-max", "node"}},
}

// orderedKeys returns the sections with their registered keys; keys of
// no section (a flag added without updating sections) land in "Other".
func (c *config) orderedKeys() (titles []string, keys [][]string) {
	placed := map[string]bool{keyConfig: true}
	for k := range aliases {
		placed[k] = true
	}
	for _, s := range sections {
		var ks []string
		for _, k := range s.keys {
			if c.fs.Lookup(k) != nil {
				ks = append(ks, k)
				placed[k] = true
			}
		}
		if len(ks) > 0 {
			titles, keys = append(titles, s.title), append(keys, ks)
		}
	}
	var other []string
	c.fs.VisitAll(func(f *flag.Flag) {
		if !placed[f.Name] {
			other = append(other, f.Name)
		}
	})
	if len(other) > 0 {
		titles, keys = append(titles, "Other"), append(keys, other)
	}
	return titles, keys
}

// renderMode chooses between the two YAML renderings.
type renderMode uint8

const (
	renderEffective renderMode = iota // config print: secrets masked, source of each value
	renderSample                      // the sample file: every key, its default and its meaning
)

// writeYAML writes the options as a configuration file that loads back
// to the same options (in renderEffective, except for masked secrets).
func (c *config) writeYAML(w io.Writer, mode renderMode) error {
	var b strings.Builder
	if mode == renderSample {
		b.WriteString(sampleHeader)
	} else {
		b.WriteString("# lsmtp effective configuration; after each value, where it came from.\n")
		if c.o.configFile != "" {
			fmt.Fprintf(&b, "# config file: %s\n", c.o.configFile)
		}
	}
	titles, keys := c.orderedKeys()
	for i, title := range titles {
		fmt.Fprintf(&b, "\n## %s\n", title)
		allRestart := !slices.ContainsFunc(keys[i], func(k string) bool { return !needsRestart(k) })
		if mode == renderSample && allRestart {
			b.WriteString("# SIGHUP cannot change these: they need a restart.\n")
		}
		for _, key := range keys[i] {
			f := c.fs.Lookup(key)
			val := c.renderValue(f, mode)
			switch mode {
			case renderSample:
				b.WriteString("\n")
				for _, line := range wrap(f.Usage, 76) {
					fmt.Fprintf(&b, "# %s\n", line)
				}
				if needsRestart(key) && !allRestart {
					b.WriteString("# (SIGHUP cannot change it: restart)\n")
				}
				if machineDefault[key] {
					fmt.Fprintf(&b, "# %s: %s   (default: this machine's hostname)\n", key, "mx1.example.com")
				} else {
					fmt.Fprintf(&b, "%s: %s\n", key, val)
				}
			default:
				from := c.from[key].String()
				if c.from[key] == fromEnv {
					from += " $" + envName(key)
				}
				fmt.Fprintf(&b, "%s: %s   # %s\n", key, val, from)
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

const sampleHeader = `# lsmtp configuration: every key with its default.
#
# Use it with: lsmtp --config /etc/lsmtp/lsmtp.yaml
# Check a file: lsmtp config check --config FILE
# Show what is in force: lsmtp config print --config FILE
#
# The keys are the flag names (lsmtp --help). Each key is also an
# environment variable LSMTP_<KEY>, upper case with underscores:
# max-message-size is LSMTP_MAX_MESSAGE_SIZE. Lists are YAML sequences
# here and comma-separated in variables.
# Precedence: flag > variable > this file > default.
# Sizes take K, M, G suffixes (powers of 1024); durations are Go
# durations (300ms, 30s, 5m, 1h). Unknown keys are errors.
# SIGHUP rereads this file (flags and variables are fixed for the life of
# the process and still win over it); limits and timeouts take effect on
# open connections, the keys marked "restart" do not.
`

// renderValue is a flag's value as YAML.
func (c *config) renderValue(f *flag.Flag, mode renderMode) string {
	if secret[f.Name] && mode == renderEffective && f.Value.String() != "" {
		return yamlString("xxxxx")
	}
	if repeatable[f.Name] {
		var items []string
		if f.Name == keyAMQPURL {
			for _, u := range c.o.amqp.cfg.URLs {
				if mode == renderEffective {
					u = broker.RedactURL(u)
				}
				items = append(items, u)
			}
		} else if s := f.Value.String(); s != "" {
			items = strings.Split(s, ",")
		}
		for i := range items {
			items[i] = yamlString(items[i])
		}
		return "[" + strings.Join(items, ", ") + "]"
	}
	if g, ok := f.Value.(flag.Getter); ok {
		switch v := g.Get().(type) {
		case bool, int, int64, uint, uint64, float64:
			return fmt.Sprint(v)
		case string:
			return yamlString(v)
		case time.Duration:
			return formatDuration(v)
		}
	}
	return yamlString(f.Value.String())
}

// yamlString is s as a YAML scalar, quoted only when it must be.
func yamlString(s string) string {
	out, err := yaml.Marshal(s)
	if err != nil {
		return strconv.Quote(s)
	}
	return strings.TrimSuffix(string(out), "\n")
}

// wrap breaks text into lines of at most width runes at spaces.
func wrap(text string, width int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(text) {
		if line != "" && len(line)+1+len(w) > width {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	return append(lines, line)
}

// restartKeys are the options SIGHUP cannot change. The engine names its
// own (Reload's restartNeeded); these are the ones this command owns:
// the sink and everything about RabbitMQ, the admin listener, the log format.
var restartKeys = []string{"sink", "admin-listen", "log-format", "listen", "event-loops", keyConfig}

// brokerKeys are the flags the broker package and amqpOptions register.
var brokerKeys = func() map[string]bool {
	var a amqpOptions
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	a.register(fs)
	keys := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { keys[f.Name] = true })
	return keys
}()

func needsRestart(key string) bool {
	return brokerKeys[key] || slices.Contains(restartKeys, key)
}
