package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/broker"
	"github.com/lsmtp/lsmtp/codec"
	"github.com/lsmtp/lsmtp/engine"
	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// postfixBin finds the postfix command, or skips the test; in CI
// (CI=true) it must be there, as .ci/run installs it.
func postfixBin(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("postfix")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/postfix"); serr == nil {
			bin, err = "/usr/sbin/postfix", nil
		}
	}
	switch {
	case err != nil && os.Getenv("CI") == "true":
		t.Fatalf("postfix not found in CI: %v", err)
	case err != nil:
		t.Skipf("postfix not installed (apt-get install postfix): %v", err)
	case os.Geteuid() != 0:
		t.Skip("postfix's master runs as root")
	}
	return bin
}

// postfix is a Postfix instance of the test's own: its configuration
// and queue in a directory of their own, its smtpd on a free loopback
// port, never the system instance nor port 25.
type postfix struct {
	t         *testing.T
	bin, etc  string
	dir       string
	smtpdAddr string
}

// startPostfix starts Postfix relaying everything to relay with
// smtp_tls_security_level=encrypt; extra lines go to main.cf. It is
// stopped when the test ends.
func startPostfix(t *testing.T, relay string, extra ...string) *postfix {
	t.Helper()
	bin := postfixBin(t)
	owner, err := user.Lookup("postfix")
	if err != nil {
		t.Fatalf("postfix user: %v", err)
	}
	uid, _ := strconv.Atoi(owner.Uid)
	// Not t.TempDir: Postfix's daemons run as the postfix user and must
	// reach the queue through every parent directory.
	dir, err := os.MkdirTemp("", "lsmtp-postfix-")
	mustT(t, err)
	mustT(t, os.Chmod(dir, 0o755))
	p := &postfix{t: t, bin: bin, dir: dir, etc: filepath.Join(dir, "etc"), smtpdAddr: closedPort(t)}
	for _, d := range []string{"etc", "spool", "data"} {
		mustT(t, os.Mkdir(filepath.Join(dir, d), 0o755))
	}
	mustT(t, os.Chown(filepath.Join(dir, "data"), uid, -1))
	main := fmt.Sprintf(`compatibility_level = 3.6
queue_directory = %[1]s/spool
data_directory = %[1]s/data
maillog_file = %[1]s/maillog
maillog_file_prefixes = %[1]s
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.test
mydomain = postfix.test
myorigin = postfix.test
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [%[2]s]:%[3]s
smtp_tls_security_level = encrypt
smtp_tls_loglevel = 1
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
biff = no
%[4]s
`, dir, hostOf(relay), portOf(relay), strings.Join(extra, "\n"))
	// Only what relaying needs, nothing chrooted.
	master := p.smtpdAddr + ` inet n - n - - smtpd
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
`
	mustT(t, os.WriteFile(filepath.Join(p.etc, "main.cf"), []byte(main), 0o644))
	mustT(t, os.WriteFile(filepath.Join(p.etc, "master.cf"), []byte(master), 0o644))
	if out, err := exec.Command(bin, "-c", p.etc, "start").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		t.Fatalf("postfix start: %v %s\n%s", err, out, p.log())
	}
	t.Cleanup(p.stop)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, _, err := smtptest.Dial(p.smtpdAddr, time.Second)
		if err == nil {
			c.Close()
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("postfix smtpd not answering on %s: %v\n%s", p.smtpdAddr, err, p.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// log is Postfix's own log so far, for failure messages.
func (p *postfix) log() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "maillog"))
	return string(b)
}

// stop stops the instance and waits for its master to go before its
// directory is removed.
func (p *postfix) stop() {
	pidFile := filepath.Join(p.dir, "spool", "pid", "master.pid")
	b, _ := os.ReadFile(pidFile)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if out, err := exec.Command(p.bin, "-c", p.etc, "stop").CombinedOutput(); err != nil {
		p.t.Errorf("postfix stop: %v %s", err, out)
	}
	for deadline := time.Now().Add(10 * time.Second); pid > 0 && syscall.Kill(pid, 0) == nil; {
		if time.Now().After(deadline) {
			p.t.Errorf("postfix master %d still running 10 s after stop", pid)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	if p.t.Failed() {
		p.t.Logf("postfix log:\n%s", p.log())
	}
	os.RemoveAll(p.dir)
}

// reconfigure changes main.cf settings and reloads.
func (p *postfix) reconfigure(settings ...string) {
	p.t.Helper()
	args := append([]string{"-c", p.etc, "-e"}, settings...)
	if out, err := exec.Command(filepath.Join(filepath.Dir(p.bin), "postconf"), args...).CombinedOutput(); err != nil {
		p.t.Fatalf("postconf %v: %v %s", settings, err, out)
	}
	if out, err := exec.Command(p.bin, "-c", p.etc, "reload").CombinedOutput(); err != nil {
		p.t.Fatalf("postfix reload: %v %s", err, out)
	}
}

func hostOf(addr string) string { h, _, _ := strings.Cut(addr, ":"); return h }
func portOf(addr string) string { _, p, _ := strings.Cut(addr, ":"); return p }

func mustT(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// postfixMessage is one message injected into Postfix's smtpd.
type postfixMessage struct {
	name    string
	from    string
	rcpt    string
	params  string // MAIL parameters
	content []byte
	bdat    bool // sent to Postfix in BDAT chunks of 8 KiB (its smtpd offers CHUNKING)

	postfixID string // Postfix's queue ID, from its 250
}

// relayedBody is the smtp-body lsmtp must see: Postfix's smtp client
// says BODY=8BITMIME for a message that came in with it.
func (m *postfixMessage) relayedBody() string {
	if strings.Contains(m.params, "BODY=8BITMIME") {
		return "8BITMIME"
	}
	return "7BIT"
}

// inject sends m to Postfix's smtpd and notes the queue ID it gave.
func (p *postfix) inject(m *postfixMessage) {
	p.t.Helper()
	c, _, err := smtptest.Dial(p.smtpdAddr, ioTimeout)
	mustT(p.t, err)
	defer c.Close()
	if _, err := c.Expect("EHLO client.test", 250); err != nil {
		p.t.Fatal(err)
	}
	if _, err := c.Expect("MAIL FROM:<"+m.from+">"+m.params, 250); err != nil {
		p.t.Fatal(err)
	}
	if _, err := c.Expect("RCPT TO:<"+m.rcpt+">", 250); err != nil {
		p.t.Fatal(err)
	}
	var final smtptest.Reply
	if m.bdat {
		for rest := m.content; ; {
			n := min(len(rest), 8<<10)
			mustT(p.t, c.WriteBDAT(rest[:n], n == len(rest)))
			final, err = c.Read()
			mustT(p.t, err)
			if rest = rest[n:]; len(rest) == 0 || final.Code != 250 {
				break
			}
		}
	} else {
		if _, err := c.Expect("DATA", 354); err != nil {
			p.t.Fatal(err)
		}
		mustT(p.t, c.WriteData(m.content))
		final, err = c.Read()
		mustT(p.t, err)
	}
	// "250 2.0.0 Ok: queued as ID", after BDAT "Ok: N bytes queued as ID".
	id := postfixQueued.FindStringSubmatch(final.Last())
	if final.Code != 250 || id == nil {
		p.t.Fatalf("%s: Postfix answered %q", m.name, final.String())
	}
	m.postfixID = id[1]
	if _, err := c.Expect("QUIT", 221); err != nil {
		p.t.Fatal(err)
	}
}

var postfixQueued = regexp.MustCompile(`^250 2\.0\.0 Ok: (?:[0-9]+ bytes )?queued as ([0-9A-Za-z]+)$`)

// postfixReceived is the one trace field Postfix's smtpd adds (its
// smtpd_received_header), for a client that said EHLO client.test from
// 127.0.0.1 in the clear, with one recipient. The date is Postfix's
// clock; the rest is exact.
func postfixReceived(m *postfixMessage) *regexp.Regexp {
	with := "ESMTP"
	return regexp.MustCompile(`^Received: from client\.test \(localhost \[127\.0\.0\.1\]\)\r\n` +
		`\tby postfix\.test \(Postfix\) with ` + with + ` id ` + regexp.QuoteMeta(m.postfixID) + `\r\n` +
		`\tfor <` + regexp.QuoteMeta(m.rcpt) + `>; [A-Z][a-z]{2}, [ 0-9]{2} [A-Z][a-z]{2} [0-9]{4} [0-9:]{8} [+-][0-9]{4} \([A-Z]+\)\r\n`)
}

// lsmtpReceived is ours on top, for Postfix's smtp client relaying over
// TLS 1.3 (RFC 3848 ESMTPS).
func lsmtpReceived(m *postfixMessage) *regexp.Regexp {
	return regexp.MustCompile(`^Received: from postfix\.test \(\[127\.0\.0\.1\]\)\r\n` +
		`\tby ` + regexp.QuoteMeta(serverName) + ` \(lsmtp\) with ESMTPS \(TLS 1\.3 TLS_[A-Z0-9_]+\) id [0-9A-Za-z]+\r\n` +
		`\tfor <` + regexp.QuoteMeta(m.rcpt) + `>;\r\n\t[A-Z][a-z]{2}, [0-9]{2} [A-Z][a-z]{2} [0-9]{4} [0-9:]{8} [+-][0-9]{4}\r\n`)
}

// TestPostfixRelaysOverTLS: a real Postfix relays to lsmtp with
// smtp_tls_security_level=encrypt, first with lsmtp's EHLO as it is
// (CHUNKING offered), then with CHUNKING discarded from it
// (smtp_discard_ehlo_keywords). Messages go into Postfix by DATA and by
// BDAT. What reaches RabbitMQ is the message as sent, byte for byte,
// under exactly two trace fields: Postfix's Received: and ours, which
// says ESMTPS over TLS 1.3, as do the AMQP headers.
func TestPostfixRelaysOverTLS(t *testing.T) {
	postfixBin(t)
	bc := brokerConfig(t, rabbittest.URL)
	bc.Envelope = broker.EnvelopeHeaders // the body is the message and its trace fields only
	cert := smtptest.WriteCert(t, t.TempDir(), "ecdsa")
	st := startStack(t, bc, true, func(ec *engine.Config) {
		ec.TLSCert, ec.TLSKey = cert.CertFile, cert.KeyFile
		ec.RequireTLS = true // nothing reaches the queue in the clear
	})
	pf := startPostfix(t, st.addr)

	body := func(name, extra string) []byte {
		// Every header cleanup would otherwise add is there, so that
		// Postfix adds nothing but its Received:.
		return []byte("From: Sender <sender@client.test>\r\nTo: <rcpt@dest.test>\r\n" +
			"Date: Mon, 01 Dec 2025 10:00:00 +0000\r\nMessage-ID: <" + name + "@client.test>\r\n" +
			"Subject: " + name + "\r\nMIME-Version: 1.0\r\n\r\n" + extra)
	}
	big := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_\r\n", 3000) // 198 KB, BDAT and DATA chunks across records
	runs := []struct {
		name     string
		settings []string
		msgs     []*postfixMessage
	}{
		{"chunking offered", nil, []*postfixMessage{
			{name: "small", content: body("small", "one line\r\n")},
			{name: "dots", content: body("dots", ".leading dot\r\n..two\r\n.\r\nnot the end\r\n")},
			{name: "bdat-big", bdat: true, content: body("bdat-big", big)},
		}},
		{"chunking discarded", []string{"smtp_discard_ehlo_keywords = chunking"}, []*postfixMessage{
			{name: "8bit", params: " BODY=8BITMIME", content: body("8bit", "caf\xc3\xa9 na\xc3\xafve\r\n")},
			{name: "bdat-small", bdat: true, content: body("bdat-small", "chunked into Postfix\r\n")},
		}},
	}
	stats := st.srv.Stats()
	for _, run := range runs {
		t.Run(run.name, func(t *testing.T) {
			pf.t = t
			if run.settings != nil {
				pf.reconfigure(run.settings...)
			}
			dataBefore, bdatBefore := commands(stats, codec.VerbDATA), commands(stats, codec.VerbBDAT)
			byID := map[string]*postfixMessage{}
			for _, m := range run.msgs {
				m.from, m.rcpt = "sender@client.test", "rcpt@dest.test"
				pf.inject(m)
				byID["<"+m.name+"@client.test>"] = m
			}
			got := consume(t, bc.Queue, len(run.msgs), 300*time.Millisecond, 15*time.Second)
			if len(got) != len(run.msgs) {
				t.Fatalf("%d messages in the queue, want %d", len(got), len(run.msgs))
			}
			for _, d := range got {
				msgID := messageID(d.Body)
				m := byID[msgID]
				if m == nil {
					t.Fatalf("message %q in the queue was not sent", msgID)
				}
				delete(byID, msgID)
				rest := d.Body
				for _, re := range []*regexp.Regexp{lsmtpReceived(m), postfixReceived(m)} {
					loc := re.FindIndex(rest)
					if loc == nil {
						t.Fatalf("%s: trace field %q not found at\n%q", m.name, re, head(rest))
					}
					rest = rest[loc[1]:]
				}
				if !bytes.Equal(rest, m.content) {
					t.Errorf("%s: %d octets under the trace fields, want the %d sent:\n%q\nwant\n%q", m.name, len(rest), len(m.content), head(rest), head(m.content))
				}
				h := d.Headers
				if h["smtp-tls-version"] != "TLS 1.3" || h["smtp-helo"] != "postfix.test" || h["smtp-sender"] != m.from {
					t.Errorf("%s: headers tls %q helo %q sender %q", m.name, h["smtp-tls-version"], h["smtp-helo"], h["smtp-sender"])
				}
				if want := m.relayedBody(); h["smtp-body"] != want {
					t.Errorf("%s: smtp-body %q, want %s", m.name, h["smtp-body"], want)
				}
			}
			// Postfix's smtp client speaks DATA (it has no BDAT of its
			// own, CHUNKING offered or not); either way each message
			// came in one transaction.
			data, bdat := commands(stats, codec.VerbDATA)-dataBefore, commands(stats, codec.VerbBDAT)-bdatBefore
			n := int64(len(run.msgs))
			switch {
			case run.settings != nil && (data != n || bdat != 0):
				t.Errorf("CHUNKING discarded: %d DATA and %d BDAT commands for %d messages, want DATA only", data, bdat, n)
			case data != n && (data != 0 || bdat < n):
				t.Errorf("%d DATA and %d BDAT commands for %d messages, want one or the other per message", data, bdat, n)
			}
			t.Logf("lsmtp saw %d DATA and %d BDAT commands for %d messages", data, bdat, len(run.msgs))
		})
	}
	if !strings.Contains(pf.log(), "TLS connection established to 127.0.0.1") {
		t.Errorf("Postfix's log has no TLS connection to lsmtp:\n%s", pf.log())
	}
}

// commands is how many times v was answered, any reply.
func commands(st *engine.Stats, v codec.Verb) int64 {
	var n int64
	for i := range st.Commands[v] {
		n += st.Commands[v][i].Load()
	}
	return n
}

// messageID is the Message-ID field's value in a message.
func messageID(msg []byte) string {
	for _, line := range strings.Split(string(msg), "\r\n") {
		if v, ok := strings.CutPrefix(line, "Message-ID: "); ok {
			return v
		}
		if line == "" {
			break
		}
	}
	return ""
}
