package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/lsmtp/lsmtp/broker"
	"github.com/lsmtp/lsmtp/engine"
	"github.com/lsmtp/lsmtp/internal/policy"
)

// source says where an option's value came from. Higher wins.
type source uint8

const (
	fromDefault source = iota
	fromFile
	fromEnv
	fromFlag
)

func (s source) String() string { return [...]string{"default", "file", "env", "flag"}[s] }

// lookupEnv is os.LookupEnv, or a map in tests.
type lookupEnv func(string) (string, bool)

// config is a set of options with where each came from.
type config struct {
	o    *options
	opts []option // o.table()
	fs   *flag.FlagSet
	from map[string]source // by option name (an alias counts for its option); absent: default
	line map[string]int    // line in the file, for keys from the file
	args []string          // what follows the flags: a subcommand

	warnings    []warning // settings that work but deserve a look
	fileSecrets []string  // secret options the file gives a value that mask hides
}

type warning struct {
	text   string
	engine bool // the engine logs it itself when it starts
}

// problems is every error found in a configuration, one per line.
type problems []string

func (p problems) Error() string { return strings.Join(p, "\n") }

// newConfig is the defaults, with a flag for every option.
func newConfig(stderr io.Writer) *config {
	o := newOptions()
	c := &config{o: o, opts: o.table(), fs: flag.NewFlagSet("lsmtp", flag.ContinueOnError),
		from: map[string]source{}, line: map[string]int{}}
	c.fs.SetOutput(stderr)
	for i := range c.opts {
		c.fs.Var(&c.opts[i], c.opts[i].name, c.opts[i].help)
	}
	c.fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: lsmtp [flags]; lsmtp config check|print|sample [flags]")
		for _, o := range newOptions().table() { // the defaults, not what was parsed so far
			kind := strings.NewReplacer("time.", "", "netip.Prefix", "cidr").Replace(reflect.TypeOf(o.ptr).Elem().String())
			if o.size {
				kind = "size"
			}
			fmt.Fprintf(stderr, "  --%s %s  ($%s, default %s)\n    \t%s\n", o.name, kind, envName(o.name), o.render(renderEffective), o.help)
		}
	}
	return c
}

// find is the option named name, or nil.
func (c *config) find(name string) *option {
	if i := c.index(name); i >= 0 {
		return &c.opts[i]
	}
	return nil
}

func (c *config) index(name string) int {
	return slices.IndexFunc(c.opts, func(o option) bool { return o.name == name })
}

// canonical is the option an older spelling stands for.
func canonical(o *option) string {
	if o.negates != "" {
		return o.negates
	}
	return o.name
}

// loadConfig layers the sources: defaults, then the file (--config or
// $LSMTP_CONFIG), then the variables, then the flags, each setting only
// the options no higher source set. Errors come back as problems, each
// naming where the bad value was given.
func loadConfig(args []string, env lookupEnv, stderr io.Writer) (*config, error) {
	c := newConfig(stderr)
	if err := c.fs.Parse(args); err != nil {
		return nil, err // already reported by the flag package, with usage
	}
	c.args = c.fs.Args()
	c.fs.Visit(func(f *flag.Flag) { c.from[canonical(c.find(f.Name))] = fromFlag })

	var errs problems
	for i := range c.opts {
		opt := &c.opts[i]
		v, ok := env(envName(opt.name))
		if !ok {
			continue
		}
		items := []string{v}
		if opt.isList() { // comma-separated
			items = strings.Split(v, ",")
			for j := range items {
				items[j] = strings.TrimSpace(items[j])
			}
			items = slices.DeleteFunc(items, func(s string) bool { return s == "" })
		}
		if err := c.layer(opt, items, fromEnv, 0); err != nil {
			errs = append(errs, fmt.Sprintf("$%s: %v", envName(opt.name), err))
		}
	}
	if c.o.configFile != "" {
		data, err := os.ReadFile(c.o.configFile)
		if err != nil {
			errs = append(errs, fmt.Sprintf("config: %v", err))
		} else {
			errs = append(errs, c.applyFile(c.o.configFile, data)...)
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

// layer sets opt from the file or a variable unless a higher source set
// it; then the items are only checked, so that every mistake shows. The
// items are tried on a scratch copy first: a bad one changes nothing.
func (c *config) layer(opt *option, items []string, src source, line int) error {
	key := canonical(opt)
	targets := []*option{&newOptions().table()[c.index(opt.name)]}
	if c.from[key] <= src {
		targets = append(targets, opt)
	}
	for _, t := range targets {
		t.flagged = false // the first item replaces a list
		for _, item := range items {
			if err := t.Set(item); err != nil {
				return err
			}
		}
	}
	if len(targets) == 2 {
		c.from[key], c.line[key] = src, line
	}
	return nil
}

// applyFile sets, from a YAML mapping of option names to values, every
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
	seen := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		at := fmt.Sprintf("%s:%d: %s", path, k.Line, k.Value)
		opt := c.find(k.Value)
		if opt == nil || opt.name == "config" {
			errs = append(errs, fmt.Sprintf("%s: unknown key%s", at, c.suggest(k.Value)))
			continue
		}
		key := canonical(opt)
		if first, dup := seen[key]; dup {
			errs = append(errs, fmt.Sprintf("%s: given twice (first on line %d)", at, first))
			continue
		}
		seen[key] = k.Line
		items, err := nodeValues(opt, v)
		def := newOptions().table()[c.index(opt.name)].text() // the default guest:guest is no secret
		if opt.secret && slices.ContainsFunc(items, func(s string) bool { return mask(s) != s && !slices.Contains(def, s) }) {
			c.fileSecrets = append(c.fileSecrets, opt.name)
		}
		if err == nil {
			err = c.layer(opt, items, fromFile, k.Line)
		}
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", at, err))
		}
	}
	return errs
}

// nodeValues are the strings a YAML value stands for: one scalar, or a
// sequence of scalars for a list.
func nodeValues(opt *option, v *yaml.Node) ([]string, error) {
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
		if !opt.isList() {
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
	for _, o := range c.opts {
		if d := editDistance(strings.ReplaceAll(strings.ToLower(key), "_", "-"), o.name); o.section != "" && d < bestDist {
			best, bestDist = o.name, d
		}
	}
	if best == "" {
		return " (the keys are the flag names: lsmtp --help)"
	}
	return fmt.Sprintf(" (did you mean %s?)", best)
}

// editDistance is the Levenshtein distance of two short strings.
func editDistance(a, b string) int {
	prev, cur := make([]int, len(b)+1), make([]int, len(b)+1)
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

// validate checks what this command owns (the sink, the logs, the admin
// listener, the secrets' file) and lets each package check its own
// settings; their problems are named after the option that set the field.
func (c *config) validate() problems {
	o := c.o
	var errs problems
	bad := func(key, format string, args ...any) {
		errs = append(errs, c.where(key)+": "+fmt.Sprintf(format, args...))
	}
	warn := func(key, format string, args ...any) {
		c.warnings = append(c.warnings, warning{text: c.where(key) + ": " + fmt.Sprintf(format, args...)})
	}
	if o.sink != broker.SinkAMQP && o.sink != broker.SinkNATS && o.sink != "null" {
		bad("sink", "%q: want amqp, nats or null", o.sink)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		bad("log-level", "%q: want debug, info, warn or error", o.logLevel)
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		bad("log-format", "%q: want text or json", o.logFormat)
	}
	if o.adminListen != "" {
		host, port, err := net.SplitHostPort(o.adminListen)
		if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
			bad("admin-listen", "%q: want host:port with a port 0..65535 (empty turns the admin listener off)", o.adminListen)
		} else if ip, ierr := netip.ParseAddr(host); host != "localhost" && (ierr != nil || !ip.IsLoopback()) {
			warn("admin-listen", "%q is not a loopback address: /metrics and /debug/pprof/ are open to whoever reaches it", o.adminListen)
		}
	}
	if o.eng.MaxMessageSize > o.eng.MaxInFlightBytes && o.eng.MaxInFlightBytes > 0 {
		// Not an engine bound (the engine answers 451 to such a message),
		// but never what an operator means.
		bad("max-message-size", "%s is more than max-in-flight-bytes (%s): a message that large could never be held until the broker confirmed it",
			engine.FormatSize(o.eng.MaxMessageSize), engine.FormatSize(o.eng.MaxInFlightBytes))
	}
	warnings, err := o.eng.Validate()
	errs = append(errs, c.explain(&o.eng, err)...)
	errs = append(errs, c.explain(&o.eng, o.eng.CheckFiles())...)
	for _, w := range warnings {
		c.warnings = append(c.warnings, warning{text: c.explain(&o.eng, errors.New(w))[0], engine: true})
	}
	_, err = policy.New(o.pol)
	errs = append(errs, c.explain(&o.pol, err)...)
	bc := o.brk
	if o.sink == broker.SinkNATS {
		bc.Sink = broker.SinkNATS
	}
	errs = append(errs, c.explain(&o.brk, bc.Validate())...)
	c.checkSecretFile()
	return errs
}

// fieldWord is a word that may name a field of a package's Config.
var fieldWord = regexp.MustCompile(`\b[A-Z][A-Za-z]+\b`)

// explain turns a package's problems, "pkg: Field: what", into ours,
// "where: option: what", Field being a field of cfg (a pointer to the
// package's Config in c.o) and every field named in "what" spelt as its
// option.
func (c *config) explain(cfg any, err error) problems {
	if err == nil {
		return nil
	}
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	rv := reflect.ValueOf(cfg).Elem()
	option := func(field string) *option {
		f := rv.FieldByName(field)
		for i := range c.opts {
			if f.IsValid() && c.opts[i].ptr == f.Addr().Interface() && c.opts[i].negates == "" {
				return &c.opts[i]
			}
		}
		return nil
	}
	var out problems
	for _, e := range errs {
		_, rest, _ := strings.Cut(e.Error(), ": ")
		field, what, _ := strings.Cut(rest, ": ")
		field, _, _ = strings.Cut(strings.Split(field, "/")[0], "[") // "Allow[2]", "MsgBurst/MsgRate"
		opt := option(field)
		if opt == nil {
			out = append(out, e.Error())
			continue
		}
		what = fieldWord.ReplaceAllStringFunc(what, func(w string) string {
			if o := option(w); o != nil {
				return o.name
			}
			return w
		})
		out = append(out, c.where(opt.name)+": "+what)
	}
	return out
}

// checkSecretFile warns when the file holds a secret others may read: a
// password given there is meant to stay out of process listings, and a
// file anyone can read is no better.
func (c *config) checkSecretFile() {
	held := c.fileSecrets
	if len(held) == 0 {
		return
	}
	if fi, err := os.Stat(c.o.configFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
		c.warnings = append(c.warnings, warning{text: fmt.Sprintf("%s: holds %s and is readable by group or others (mode %04o): chmod 600 it",
			c.o.configFile, strings.Join(held, " and "), fi.Mode().Perm())})
	}
}

// logWarnings logs the warnings a running server should show.
func (c *config) logWarnings(log *slog.Logger) {
	for _, w := range c.warnings {
		if !w.engine {
			log.Warn("configuration", "problem", w.text)
		}
	}
}

// show is the option's value as text, one string per item, secrets
// masked if asked.
func (o *option) show(masked bool) []string {
	items := o.text()
	for i, s := range items {
		if masked && o.secret {
			items[i] = mask(s)
		}
	}
	return items
}

// renderMode chooses between the two YAML renderings.
type renderMode uint8

const (
	renderEffective renderMode = iota // config print: secrets masked, source of each value
	renderSample                      // the sample file: every key, its default and its meaning
)

// render is an option's value as YAML.
func (o *option) render(mode renderMode) string {
	items := o.show(mode == renderEffective)
	if _, quoted := o.ptr.(*string); !o.isList() && !quoted {
		return items[0]
	}
	for i := range items {
		items[i] = yamlString(items[i])
	}
	if !o.isList() {
		return items[0]
	}
	return "[" + strings.Join(items, ", ") + "]"
}

// writeYAML writes the options as a configuration file that loads back
// to the same options (in renderEffective, except for masked secrets).
// The options of the file are those with a section, in table order.
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
	reloadable := map[string]bool{} // sections with an option SIGHUP can change
	for _, o := range c.opts {
		reloadable[o.section] = reloadable[o.section] || !o.restart
	}
	section := ""
	for _, o := range c.opts {
		if o.section == "" {
			continue
		}
		if o.section != section {
			section = o.section
			fmt.Fprintf(&b, "\n## %s\n", section)
			if mode == renderSample && !reloadable[section] {
				b.WriteString("# SIGHUP cannot change these: they need a restart.\n")
			}
		}
		if mode == renderEffective {
			from := c.from[o.name].String()
			if c.from[o.name] == fromEnv {
				from += " $" + envName(o.name)
			}
			fmt.Fprintf(&b, "%s: %s   # %s\n", o.name, o.render(mode), from)
			continue
		}
		b.WriteString("\n")
		for _, line := range wrap(o.help, 76) {
			fmt.Fprintf(&b, "# %s\n", line)
		}
		if o.restart && reloadable[section] {
			b.WriteString("# (SIGHUP cannot change it: restart)\n")
		}
		if o.machine {
			fmt.Fprintf(&b, "# %s: %s   (default: this machine's hostname)\n", o.name, "mx1.example.com")
		} else {
			fmt.Fprintf(&b, "%s: %s\n", o.name, o.render(mode))
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
			lines, line = append(lines, line), ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	return append(lines, line)
}

// changedKeys names the options whose values differ between a and b; with
// restart, only those SIGHUP cannot change, else only the others.
func changedKeys(a, b *config, restart bool) []string {
	var keys []string
	for i, o := range b.opts {
		if o.section != "" && o.restart == restart && o.render(renderSample) != a.opts[i].render(renderSample) {
			keys = append(keys, o.name)
		}
	}
	return keys
}

// redactArgs is a command line with the values of secret options masked,
// for /debug/pprof/cmdline.
func redactArgs(args []string) []string {
	c := newConfig(io.Discard)
	out := slices.Clone(args)
	for i := 0; i < len(out); i++ {
		name, v, hasValue := strings.Cut(strings.TrimLeft(out[i], "-"), "=")
		opt := c.find(name)
		switch {
		case !strings.HasPrefix(out[i], "-") || opt == nil || !opt.secret:
			if u, err := url.Parse(out[i]); err == nil && u.User != nil {
				out[i] = u.Redacted()
			}
		case hasValue:
			out[i] = out[i][:len(out[i])-len(v)] + mask(v)
		case i+1 < len(out):
			i++
			out[i] = mask(out[i])
		}
	}
	return out
}

// mask hides a secret: a URL's password, any other secret whole.
func mask(v string) string {
	if v == "" {
		return v
	}
	if strings.Contains(v, "://") {
		return broker.RedactURL(v)
	}
	return "xxxxx"
}
