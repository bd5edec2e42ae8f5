package main

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/engine"
)

var update = flag.Bool("update", false, "rewrite lsmtp.example.yaml from `lsmtp config sample`")

// envMap is a lookupEnv over a map.
func envMap(m map[string]string) lookupEnv {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

var noEnv = envMap(nil)

// writeFile writes a configuration file into a fresh directory.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustLoad(t *testing.T, args []string, env lookupEnv) *config {
	t.Helper()
	c, err := loadConfig(args, env, io.Discard)
	if err != nil {
		t.Fatalf("loadConfig(%q): %v", args, err)
	}
	return c
}

func TestPrecedenceFlagEnvFileDefault(t *testing.T) {
	file := writeFile(t, "lsmtp.yaml", `
max-recipients: 200
max-conns: 7
idle-timeout: 6m
max-message-size: 10M
listen: [127.0.0.1:2526, "[::1]:2526"]
`)
	env := envMap(map[string]string{
		"LSMTP_MAX_CONNS":    "8",
		"LSMTP_IDLE_TIMEOUT": "7m",
	})
	c := mustLoad(t, []string{"--config", file, "--idle-timeout", "8m"}, env)
	o := c.o
	if o.eng.MaxRecipients != 200 || c.from["max-recipients"] != fromFile {
		t.Errorf("max-recipients = %d from %v, want 200 from the file", o.eng.MaxRecipients, c.from["max-recipients"])
	}
	if o.eng.MaxConns != 8 || c.from["max-conns"] != fromEnv {
		t.Errorf("max-conns = %d from %v, want 8 from the variable over the file's 7", o.eng.MaxConns, c.from["max-conns"])
	}
	if o.eng.IdleTimeout != 8*time.Minute || c.from["idle-timeout"] != fromFlag {
		t.Errorf("idle-timeout = %v from %v, want 8m from the flag over variable and file", o.eng.IdleTimeout, c.from["idle-timeout"])
	}
	if o.eng.MaxMessageSize != 10<<20 {
		t.Errorf("max-message-size = %d, want 10M from the file", o.eng.MaxMessageSize)
	}
	if want := []string{"127.0.0.1:2526", "[::1]:2526"}; !slices.Equal(o.eng.Listen, want) {
		t.Errorf("listen = %q, want %q", o.eng.Listen, want)
	}
	if o.eng.MaxErrors != 10 || c.from["max-errors"] != fromDefault {
		t.Errorf("max-errors = %d from %v, want the default 10", o.eng.MaxErrors, c.from["max-errors"])
	}
}

func TestListsComeWholeFromOneSource(t *testing.T) {
	file := writeFile(t, "lsmtp.yaml", "listen: [127.0.0.1:1, 127.0.0.1:2]\namqp-url: [amqp://a/, amqp://b/]\n")
	env := envMap(map[string]string{"LSMTP_LISTEN": "127.0.0.1:3, 127.0.0.1:4", "LSMTP_AMQP_URL": "amqp://c/"})
	cases := []struct {
		args      []string
		env       lookupEnv
		listen    []string
		amqpURLs  []string
		listenSrc source
	}{
		{[]string{"--config", file}, noEnv, []string{"127.0.0.1:1", "127.0.0.1:2"}, []string{"amqp://a/", "amqp://b/"}, fromFile},
		{[]string{"--config", file}, env, []string{"127.0.0.1:3", "127.0.0.1:4"}, []string{"amqp://c/"}, fromEnv},
		{[]string{"--config", file, "--listen", "127.0.0.1:5", "--amqp-url", "amqp://d/", "--amqp-url", "amqp://e/"}, env,
			[]string{"127.0.0.1:5"}, []string{"amqp://d/", "amqp://e/"}, fromFlag},
	}
	for _, tc := range cases {
		c := mustLoad(t, tc.args, tc.env)
		if !slices.Equal(c.o.eng.Listen, tc.listen) || c.from["listen"] != tc.listenSrc {
			t.Errorf("%q: listen = %q from %v, want %q from %v", tc.args, c.o.eng.Listen, c.from["listen"], tc.listen, tc.listenSrc)
		}
		if !slices.Equal(c.o.brk.URLs, tc.amqpURLs) {
			t.Errorf("%q: amqp-url = %q, want %q", tc.args, c.o.brk.URLs, tc.amqpURLs)
		}
	}
}

func TestConfigFileFromVariable(t *testing.T) {
	file := writeFile(t, "lsmtp.yaml", "max-errors: 3\n")
	c := mustLoad(t, nil, envMap(map[string]string{"LSMTP_CONFIG": file}))
	if c.o.eng.MaxErrors != 3 {
		t.Errorf("max-errors = %d, want 3 from the file named by $LSMTP_CONFIG", c.o.eng.MaxErrors)
	}
}

func TestDeclareSpellings(t *testing.T) {
	cases := []struct {
		args []string
		file string
		want bool
	}{
		{nil, "", true},
		{[]string{"--declare=false"}, "", false},
		{[]string{"--no-declare"}, "", false},
		{nil, "declare: false\n", false},
		{nil, "no-declare: true\n", false},
		{[]string{"--declare"}, "declare: false\n", true},   // the flag wins
		{[]string{"--declare"}, "no-declare: true\n", true}, // also over the alias
	}
	for _, tc := range cases {
		args := tc.args
		if tc.file != "" {
			args = append([]string{"--config", writeFile(t, "f.yaml", tc.file)}, args...)
		}
		c := mustLoad(t, args, noEnv)
		if c.o.brk.Declare != tc.want {
			t.Errorf("%q with file %q: declare = %v, want %v", tc.args, tc.file, c.o.brk.Declare, tc.want)
		}
	}
}

// TestProblemsNameKeyAndPlace feeds bad files and checks each problem
// names the file, the line, the key and what is wrong.
func TestProblemsNameKeyAndPlace(t *testing.T) {
	cases := []struct {
		name, file string
		want       []string // each a substring of one problem, in order
	}{
		{"unknown key", "max-recipient: 5\n", []string{"f.yaml:1: max-recipient: unknown key (did you mean max-recipients?)"}},
		{"underscores", "max_conns: 5\n", []string{"f.yaml:1: max_conns: unknown key (did you mean max-conns?)"}},
		{"config inside", "config: other.yaml\n", []string{"f.yaml:1: config: unknown key"}},
		{"bad size", "max-message-size: 25Q\n", []string{`f.yaml:1: max-message-size: "25Q" is not a size`}},
		{"negative size", "max-message-size: -1\n", []string{`f.yaml:1: max-message-size: "-1" is not a size`}},
		{"bad duration", "idle-timeout: 5 minutes\n", []string{`f.yaml:1: idle-timeout: "5 minutes" is not a duration`}},
		{"bad int", "max-conns: many\n", []string{`f.yaml:1: max-conns: "many" is not a whole number`}},
		{"bad bool", "normalize-bare-eol: yes\n", []string{`f.yaml:1: normalize-bare-eol: "yes": want true or false`}},
		{"list for scalar", "max-recipients: [1, 2]\n", []string{"f.yaml:1: max-recipients: takes one value, not a list"}},
		{"mapping value", "listen: {a: b}\n", []string{"f.yaml:1: listen: takes a value or a list of values, not a mapping"}},
		{"no value", "hostname:\n", []string{"f.yaml:1: hostname: no value"}},
		{"twice", "max-conns: 1\nmax-conns: 2\n", []string{"f.yaml:2: max-conns: given twice (first on line 1)"}},
		{"not a mapping", "- listen\n", []string{"f.yaml:1: want a mapping"}},
		{"yaml syntax", "listen: [127.0.0.1:25\n", []string{"f.yaml: yaml:"}},
		{"message above in-flight", "max-message-size: 2G\n", []string{
			"f.yaml:1: max-message-size: 2G is more than max-in-flight-bytes (1G)"}},
		{"in-flight below message", "max-in-flight-bytes: 10M\n", []string{
			"max-message-size (default): 25M is more than max-in-flight-bytes (10M)"}},
		{"short line", "max-line-length: 100\n", []string{"f.yaml:1: max-line-length: 100 is below the 512 octets"}},
		{"negative conns", "max-conns: -1\n", []string{"f.yaml:1: max-conns: must not be negative"}},
		{"zero recipients", "max-recipients: 0\n", []string{"f.yaml:1: max-recipients: must be more than 0"}},
		{"negative timeout", "data-timeout: -1s\n", []string{"f.yaml:1: data-timeout: must be more than 0"}},
		{"listen not host:port", "listen: [127.0.0.1]\n", []string{`f.yaml:1: listen: "127.0.0.1": want host:port`}},
		{"bad sink", "sink: kafka\n", []string{`f.yaml:1: sink: "kafka": want amqp, nats or null`}},
		{"bad level", "log-level: loud\n", []string{`f.yaml:1: log-level: "loud"`}},
		{"bad cidr", "trusted-proxy: [10.0.0.1/8]\n", []string{`f.yaml:1: trusted-proxy: "10.0.0.1/8" has bits set past its prefix length (did you mean 10.0.0.0/8?)`}},
		{"not a cidr", "trusted-proxy: [lb.example]\n", []string{`f.yaml:1: trusted-proxy: "lb.example" is not a CIDR prefix`}},
		{"xclient from anywhere", "xclient-from: [0.0.0.0/0]\n", []string{`f.yaml:1: xclient-from: 0.0.0.0/0 trusts every address`}},
		{"bad url scheme", "amqp-url: [http://rabbit/]\n", []string{`f.yaml:1: amqp-url: http://rabbit/: scheme "http": want amqp or amqps`}},
		{"url without host", "amqp-url: [\"amqp:///vhost\"]\n", []string{`amqp-url: amqp:///vhost: no host`}},
		{"password alone", "amqp-password: s3cret\n", []string{"f.yaml:1: amqp-password: set without amqp-username"}},
		{"queue type", "queue-type: stream\n", []string{`f.yaml:1: queue-type: "stream": want quorum or classic`}},
		{"workers", "amqp-workers: 0\n", []string{"f.yaml:1: amqp-workers: 0: want 1..64"}},
		{"all at once", "max-conns: -1\nsink: x\nbogus: 1\nmax-errors: lots\n", []string{
			"f.yaml:3: bogus: unknown key",
			`f.yaml:4: max-errors: "lots" is not a whole number`,
			`f.yaml:2: sink: "x": want amqp, nats or null`,
			"f.yaml:1: max-conns: must not be negative",
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, "f.yaml", tc.file)
			_, err := loadConfig([]string{"--config", path}, noEnv, io.Discard)
			var p problems
			if !errors.As(err, &p) {
				t.Fatalf("err = %v, want problems", err)
			}
			// Paths are reported as given; strip the directory.
			got := strings.ReplaceAll(p.Error(), filepath.Dir(path)+string(filepath.Separator), "")
			lines := strings.Split(got, "\n")
			if len(lines) != len(tc.want) {
				t.Fatalf("%d problems, want %d:\n%s", len(lines), len(tc.want), got)
			}
			for i, w := range tc.want {
				if !strings.Contains(lines[i], w) {
					t.Errorf("problem %d = %q, want it to contain %q", i, lines[i], w)
				}
			}
		})
	}
}

func TestProblemsNeverShowPasswords(t *testing.T) {
	path := writeFile(t, "f.yaml", "amqp-url: [\"amqp://user:s3cret@rabbit:notaport/\", \"http://user:s3cret@rabbit/\"]\n")
	_, err := loadConfig([]string{"--config", path}, noEnv, io.Discard)
	if err == nil {
		t.Fatal("no error for bad URLs")
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Errorf("problems show the password:\n%v", err)
	}
	if n := strings.Count(err.Error(), "amqp-url:"); n != 2 {
		t.Errorf("%d amqp-url problems, want 2:\n%v", n, err)
	}
}

func TestVariableProblems(t *testing.T) {
	_, err := loadConfig(nil, envMap(map[string]string{"LSMTP_MAX_CONNS": "many", "LSMTP_MAX_MESSAGE_SIZE": "1T"}), io.Discard)
	for _, w := range []string{`$LSMTP_MAX_CONNS: "many" is not a whole number`, `$LSMTP_MAX_MESSAGE_SIZE: "1T" is not a size`} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("err = %v, want it to contain %q", err, w)
		}
	}
	_, err = loadConfig(nil, envMap(map[string]string{"LSMTP_MAX_LINE_LENGTH": "80"}), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "$LSMTP_MAX_LINE_LENGTH: 80 is below") {
		t.Errorf("err = %v, want the variable named", err)
	}
}

func TestFileValueOverriddenIsStillChecked(t *testing.T) {
	path := writeFile(t, "f.yaml", "max-conns: many\n")
	_, err := loadConfig([]string{"--config", path, "--max-conns", "5"}, noEnv, io.Discard)
	if err == nil || !strings.Contains(err.Error(), `max-conns: "many" is not a whole number`) {
		t.Errorf("err = %v, want the file's bad value reported though the flag overrides it", err)
	}
}

func TestEmptyFileIsDefaults(t *testing.T) {
	for _, content := range []string{"", "# only a comment\n", "---\n"} {
		c := mustLoad(t, []string{"--config", writeFile(t, "f.yaml", content)}, noEnv)
		if c.o.eng.MaxRecipients != 100 {
			t.Errorf("%q: max-recipients = %d, want the default", content, c.o.eng.MaxRecipients)
		}
	}
}

// render is the whole configuration in the sample rendering: every
// value, secrets included, no sources.
func render(t *testing.T, c *config) string {
	t.Helper()
	var b strings.Builder
	for _, o := range c.opts {
		if o.section != "" {
			b.WriteString(o.name + ": " + o.render(renderSample) + "\n")
		}
	}
	return b.String()
}

// TestSampleFile keeps lsmtp.example.yaml in step with the flags: it is
// exactly what `lsmtp config sample` prints (go test -update rewrites
// it), it lists every key, and loading it changes nothing.
func TestSampleFile(t *testing.T) {
	const path = "../../deploy/lsmtp.example.yaml"
	var out, errb bytes.Buffer
	if code := mainExit([]string{"config", "sample"}, noEnv, &out, &errb); code != 0 {
		t.Fatalf("config sample: exit %d: %s", code, errb.String())
	}
	if *update {
		if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	committed, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(committed, out.Bytes()) {
		t.Fatalf("lsmtp.example.yaml differs from `lsmtp config sample`; run go test ./cmd/lsmtp -run TestSampleFile -update")
	}
	defaults := mustLoad(t, nil, noEnv)
	for _, o := range defaults.opts {
		if o.section == "" {
			continue
		}
		if !regexpKey(string(committed), o.name) {
			t.Errorf("the sample does not list %s", o.name)
		}
	}
	fromSample := mustLoad(t, []string{"--config", path}, noEnv)
	if a, b := render(t, defaults), render(t, fromSample); a != b {
		t.Errorf("loading the sample changes the configuration:\ndefaults:\n%s\nsample:\n%s", a, b)
	}
}

// regexpKey reports whether key stands at the start of a line, maybe
// commented out.
func regexpKey(doc, key string) bool {
	for _, line := range strings.Split(doc, "\n") {
		if strings.HasPrefix(strings.TrimPrefix(line, "# "), key+":") {
			return true
		}
	}
	return false
}

// TestPrintRoundTrip prints an effective configuration built from all
// sources and loads the output as a file: the same configuration comes
// back, and the secrets are masked.
func TestPrintRoundTrip(t *testing.T) {
	file := writeFile(t, "f.yaml", "max-recipients: 150\ntrusted-proxy: [10.0.0.0/8, 192.0.2.7]\nhostname: mx.example.com\nnode: n1\n")
	env := envMap(map[string]string{"LSMTP_MAX_CONNS": "77", "LSMTP_AMQP_URL": "amqp://u:pw1@r1/,amqp://u:pw2@r2/"})
	args := []string{"--config", file, "--greet-delay", "2s", "--sink", "null", "--admin-listen", "", "--amqp-username", "lsmtp", "--amqp-password", "hunter2"}
	var out, errb bytes.Buffer
	if code := mainExit(append([]string{"config", "print"}, args...), env, &out, &errb); code != 0 {
		t.Fatalf("config print: exit %d: %s", code, errb.String())
	}
	printed := out.String()
	for _, secret := range []string{"hunter2", "pw1", "pw2"} {
		if strings.Contains(printed, secret) {
			t.Errorf("config print shows the secret %q:\n%s", secret, printed)
		}
	}
	for _, want := range []string{
		"max-recipients: 150   # file\n",
		"max-conns: 77   # env $LSMTP_MAX_CONNS\n",
		"greet-delay: 2s   # flag\n",
		"trusted-proxy: [10.0.0.0/8, 192.0.2.7/32]   # file\n",
		"amqp-password: xxxxx   # flag\n",
		"amqp-url: [amqp://u:xxxxx@r1/, amqp://u:xxxxx@r2/]   # env $LSMTP_AMQP_URL\n",
		`admin-listen: ""   # flag` + "\n",
	} {
		if !strings.Contains(printed, want) {
			t.Errorf("config print lacks %q:\n%s", want, printed)
		}
	}

	want := mustLoad(t, args, env)
	got := mustLoad(t, []string{"--config", writeFile(t, "printed.yaml", printed)}, noEnv)
	// Masked values come back masked; everything else as it was.
	want.o.brk.Password = "xxxxx"
	for i, u := range want.o.brk.URLs {
		want.o.brk.URLs[i] = strings.NewReplacer("pw1", "xxxxx", "pw2", "xxxxx").Replace(u)
	}
	if a, b := render(t, want), render(t, got); a != b {
		t.Errorf("printed configuration loads differently:\nwant:\n%s\ngot:\n%s", a, b)
	}
}

func TestConfigCommand(t *testing.T) {
	good := writeFile(t, "good.yaml", "max-recipients: 120\n")
	bad := writeFile(t, "bad.yaml", "max-recipients: -5\nmax-line-length: 10\n")
	warn := writeFile(t, "warn.yaml", "max-recipients: 5\n")
	cases := []struct {
		args       []string
		code       int
		stdout     string
		stderr     []string
		noStderrOf string
	}{
		{[]string{"config", "check", "--config", good}, 0, good + ": configuration ok\n", nil, ""},
		{[]string{"--config", good, "config", "check"}, 0, good + ": configuration ok\n", nil, ""},
		{[]string{"config", "check"}, 0, "configuration ok (no file)\n", nil, ""},
		{[]string{"config", "check", "--config", bad}, 1, "", []string{
			"bad.yaml:1: max-recipients: must be more than 0",
			"bad.yaml:2: max-line-length: 10 is below the 512 octets",
			"configuration has 2 problem(s)",
		}, ""},
		{[]string{"config", "check", "--config", warn}, 0, warn + ": configuration ok\n", []string{"warning: " + warn + ":1: max-recipients: 5 is below the 100"}, ""},
		{[]string{"config", "check", "--config", filepath.Join(t.TempDir(), "missing.yaml")}, 1, "", []string{"no such file"}, ""},
		{[]string{"config", "check", "--no-such-flag"}, 2, "", []string{"flag provided but not defined: -no-such-flag"}, ""},
		{[]string{"config", "frobnicate"}, 2, "", []string{`config "frobnicate": want check, print or sample`}, ""},
		{[]string{"config", "check", "extra"}, 2, "", []string{`unexpected argument "extra"`}, ""},
	}
	for _, tc := range cases {
		var out, errb bytes.Buffer
		code := mainExit(tc.args, noEnv, &out, &errb)
		if code != tc.code {
			t.Errorf("%q: exit %d, want %d (stderr %q)", tc.args, code, tc.code, errb.String())
		}
		if tc.code == 0 && out.String() != tc.stdout {
			t.Errorf("%q: stdout %q, want %q", tc.args, out.String(), tc.stdout)
		}
		for _, w := range tc.stderr {
			if !strings.Contains(errb.String(), w) {
				t.Errorf("%q: stderr %q lacks %q", tc.args, errb.String(), w)
			}
		}
	}
}

func TestRunRefusesBadConfiguration(t *testing.T) {
	var out, errb bytes.Buffer
	code := mainExit([]string{"--max-line-length", "100", "--sink", "null"}, noEnv, &out, &errb)
	if code != exitProblems || !strings.Contains(errb.String(), "lsmtp: --max-line-length: 100 is below the 512 octets") {
		t.Errorf("exit %d, stderr %q; want 1 and the problem", code, errb.String())
	}
}

func TestSizes(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "512": 512, "1K": 1024, "25M": 25 << 20, "25MB": 25 << 20, "2GiB": 2 << 30, " 3k ": 3 << 10} {
		if n, err := parseSize(in); err != nil || n != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, n, err, want)
		}
	}
	for _, in := range []string{"", "M", "1T", "-1", "1.5M", "99999999999G"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
	for n, want := range map[int64]string{0: "0", 1000: "1000", 1024: "1K", 25 << 20: "25M", 1 << 30: "1G", 1<<30 + 1: "1073741825"} {
		if got := engine.FormatSize(n); got != want {
			t.Errorf("engine.FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestPackageProblemsNameTheOption: the engine, the broker and the client
// controls check their own bounds; each problem comes back named after
// the option that set the field, fields in the text spelt as options too.
func TestPackageProblemsNameTheOption(t *testing.T) {
	env := envMap(map[string]string{"LSMTP_MAX_CONNS": "many"})
	_, err := loadConfig([]string{"--max-conns", "5", "--conn-rate", "-1", "--msg-burst", "5", "--hostname", "mx (main)",
		"--exchange", "", "--routing-key", "in.{domain}", "--amqp-reconnect-max", "1ms", "--trusted-proxy", "10.0.0.0/8"}, env, io.Discard)
	var p problems
	if !errors.As(err, &p) {
		t.Fatalf("err = %v, want problems", err)
	}
	want := []string{
		`$LSMTP_MAX_CONNS: "many" is not a whole number`, // checked though the flag wins
		`--hostname: "mx (main)" cannot stand in a greeting`,
		"--conn-rate: -1 is not a finite number >= 0",
		"--msg-burst: 5 is set but msg-rate is 0 (unlimited)",
		"--routing-key: a {domain} routing key needs a named exchange",
		"--amqp-reconnect-max: 1ms is less than amqp-reconnect-min (100ms)",
	}
	if len(p) != len(want) {
		t.Fatalf("%d problems, want %d:\n%v", len(p), len(want), err)
	}
	for i, w := range want {
		if !strings.Contains(p[i], w) {
			t.Errorf("problem %d = %q, want it to contain %q", i, p[i], w)
		}
	}
}
