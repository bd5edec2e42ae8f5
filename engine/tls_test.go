package engine

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// TestSTARTTLSMessage: EHLO offers STARTTLS, the upgrade, EHLO again
// (now with AUTH and without STARTTLS), one message, and exactly what
// reaches the sink.
func TestSTARTTLSMessage(t *testing.T) {
	ts := startTLSServer(t, Config{})
	c := dial(t, ts.plain)
	c.send("EHLO client.test\r\n")
	ehlo := c.reply()
	if ehlo[len(ehlo)-1] != "250 STARTTLS" || strings.Contains(strings.Join(ehlo, "|"), "AUTH") {
		t.Fatalf("EHLO in the clear: %q, want STARTTLS last and no AUTH", ehlo)
	}
	c.do("STARTTLS", "220 2.0.0 Ready to start TLS")
	st := c.startTLS(ts.clientTLS())
	c.send("EHLO client.test\r\n")
	ehlo = c.reply()
	if ehlo[len(ehlo)-1] != "250 AUTH PLAIN LOGIN" || strings.Contains(strings.Join(ehlo, "|"), "STARTTLS") {
		t.Fatalf("EHLO over TLS: %q, want AUTH PLAIN LOGIN last and no STARTTLS (RFC 3207 §4.2)", ehlo)
	}
	c.do("STARTTLS", "503 5.5.1 TLS already active")
	c.do("MAIL FROM:<a@client.test>", "250 2.1.0")
	c.do("RCPT TO:<b@mx.test>", "250 2.1.5")
	c.do("DATA", "354 ")
	c.send("Subject: hi\r\n\r\n..dot\r\n.\r\n")
	c.expect("250 2.0.0 OK queued as ")
	c.do("QUIT", "221 2.0.0")
	c.expectClosed()

	msgs := ts.rec.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages, want 1", len(msgs))
	}
	m := msgs[0]
	wantVersion, wantCipher := tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite)
	if m.TLSVersion != wantVersion || m.TLSCipher != wantCipher || m.AuthUser != "" {
		t.Errorf("message TLS %q %q auth %q, want %q %q and no user", m.TLSVersion, m.TLSCipher, m.AuthUser, wantVersion, wantCipher)
	}
	wantTrace := "Received: from client.test ([127.0.0.1])\r\n\tby mx.test (lsmtp) with ESMTPS (" + wantVersion + " " + wantCipher + ") id " + m.QueueID + "\r\n\tfor <b@mx.test>;"
	if !strings.HasPrefix(m.Data, wantTrace) {
		t.Errorf("Received: header\n%q\nwant it to start\n%q", m.Data, wantTrace)
	}
	if got := m.Content(); got != "Subject: hi\r\n\r\n.dot\r\n" {
		t.Errorf("content %q", got)
	}
	waitFor(t, func() bool { return ts.srv.Stats().Open.Load() == 0 })
	if n := ts.srv.Stats().TLS.Handshakes[1].Load() + ts.srv.Stats().TLS.Handshakes[0].Load(); n != 1 {
		t.Errorf("handshakes counted %d, want 1", n)
	}
}

// TestSTARTTLSResetsState: nothing said before the handshake counts
// after it (RFC 3207 §4.2), STARTTLS inside a transaction is refused.
func TestSTARTTLSResetsState(t *testing.T) {
	ts := startTLSServer(t, Config{})
	c := dial(t, ts.plain)
	c.do("EHLO client.test", "250 ")
	c.do("STARTTLS now", "501 5.5.4")
	c.do("MAIL FROM:<a@client.test>", "250 2.1.0")
	c.do("STARTTLS", "503 5.5.1 STARTTLS not allowed during a mail transaction")
	c.do("RSET", "250 2.0.0")
	c.do("STARTTLS", "220 2.0.0")
	c.startTLS(ts.clientTLS())
	c.do("MAIL FROM:<a@client.test>", "503 5.5.1 Send HELO or EHLO first")
	c.do("EHLO client.test", "250 ")
	c.do("RCPT TO:<b@mx.test>", "503 5.5.1 Need MAIL before RCPT")
	c.do("QUIT", "221 ")
}

// TestSTARTTLSPipelinedInjection is CVE-2011-0411: commands pipelined
// behind STARTTLS in the same packet were sent in the clear, where anyone
// on the path could have put them. None may run after the handshake.
func TestSTARTTLSPipelinedInjection(t *testing.T) {
	ts := startTLSServer(t, Config{})
	c := dial(t, ts.plain)
	c.do("EHLO client.test", "250 ")
	c.send("STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@mx.test>\r\nDATA\r\n")
	c.expect("220 2.0.0 Ready to start TLS")
	c.startTLS(ts.clientTLS())
	// The first reply after the handshake is the one to our EHLO: no
	// 250s (or 503s) for the injected commands come before it.
	c.send("EHLO client.test\r\n")
	lines := c.reply()
	if lines[0] != "250-mx.test" {
		t.Fatalf("first reply after the handshake %q, want EHLO's", lines)
	}
	c.do("RCPT TO:<b@mx.test>", "503 5.5.1 Need MAIL before RCPT")
	c.do("QUIT", "221 ")
	c.expectClosed()
	want := int64(len("MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@mx.test>\r\nDATA\r\n"))
	if got := ts.srv.Stats().TLS.DiscardedBytes.Load(); got != want {
		t.Errorf("discarded %d octets, want %d", got, want)
	}
	if n := len(ts.rec.Messages()); n != 0 {
		t.Errorf("%d messages recorded, want none", n)
	}
}

// TestImplicitTLS: a --listen-tls connection starts with the handshake;
// the greeting follows it (RFC 8314 §3.3).
func TestImplicitTLS(t *testing.T) {
	ts := startTLSServer(t, Config{})
	c := dialTLS(t, ts.implicit, ts.clientTLS())
	c.send("EHLO client.test\r\n")
	if ehlo := c.reply(); ehlo[len(ehlo)-1] != "250 AUTH PLAIN LOGIN" {
		t.Fatalf("EHLO: %q", ehlo)
	}
	c.do("STARTTLS", "503 5.5.1 TLS already active")
	c.do("MAIL FROM:<>", "250 2.1.0")
	c.do("RCPT TO:<b@mx.test>", "250 2.1.5")
	c.send("BDAT 6 LAST\r\nx\r\ny\r")
	c.send("\n")
	c.expect("250 2.0.0 OK queued as ")
	c.do("QUIT", "221 ")
	msgs := ts.rec.Messages()
	if len(msgs) != 1 || msgs[0].Content() != "x\r\ny\r\n" || msgs[0].TLSVersion == "" {
		t.Fatalf("messages %+v", msgs)
	}
}

// TestAuth: PLAIN and LOGIN, with and without an initial response, good
// and bad, and every refusal with its RFC 4954 code.
func TestAuth(t *testing.T) {
	ts := startTLSServer(t, Config{MaxErrors: 100})
	conf := ts.clientTLS()
	for _, tc := range []struct {
		name  string
		steps [][2]string // client line, reply prefix
		user  string      // authenticated as, "" for none
	}{
		{"plain initial response", [][2]string{{"AUTH PLAIN " + plainB64("", "alice", alicePass), "235 2.7.0"}}, "alice"},
		{"plain authzid same user", [][2]string{{"AUTH PLAIN " + plainB64("bob", "bob", bobPass), "235 2.7.0"}}, "bob"},
		{"plain after 334", [][2]string{{"AUTH PLAIN", "334 "}, {plainB64("", "bob", bobPass), "235 2.7.0"}}, "bob"},
		{"login", [][2]string{{"AUTH LOGIN", "334 VXNlcm5hbWU6"}, {b64("alice"), "334 UGFzc3dvcmQ6"}, {b64(alicePass), "235 2.7.0"}}, "alice"},
		{"login initial response", [][2]string{{"auth login " + b64("alice"), "334 UGFzc3dvcmQ6"}, {b64(alicePass), "235 2.7.0"}}, "alice"},
		{"plain wrong password", [][2]string{{"AUTH PLAIN " + plainB64("", "alice", "guess"), "535 5.7.8"}}, ""},
		{"plain unknown user", [][2]string{{"AUTH PLAIN " + plainB64("", "mallory", alicePass), "535 5.7.8"}}, ""},
		{"login wrong password", [][2]string{{"AUTH LOGIN " + b64("bob"), "334 "}, {b64(alicePass), "535 5.7.8"}}, ""},
		{"plain other authzid", [][2]string{{"AUTH PLAIN " + plainB64("bob", "alice", alicePass), "535 5.7.8"}}, ""},
		{"plain NUL-split identity", [][2]string{{"AUTH PLAIN " + b64("\x00alice\x00"+alicePass+"\x00x"), "535 5.7.8"}}, ""},
		{"plain two fields", [][2]string{{"AUTH PLAIN " + b64("alice\x00"+alicePass), "535 5.7.8"}}, ""},
		{"plain user past 255", [][2]string{{"AUTH PLAIN", "334 "}, {plainB64("", strings.Repeat("u", 256), alicePass), "535 5.7.8"}}, ""},
		{"login user past 255", [][2]string{{"AUTH LOGIN", "334 "}, {b64(strings.Repeat("u", 256)), "334 "}, {b64(alicePass), "535 5.7.8"}}, ""},
		{"malformed base64", [][2]string{{"AUTH PLAIN %%%", "501 5.5.2"}}, ""},
		{"malformed base64 after 334", [][2]string{{"AUTH LOGIN", "334 "}, {"not base64!", "501 5.5.2"}}, ""},
		{"cancel", [][2]string{{"AUTH PLAIN", "334 "}, {"*", "501 5.0.0"}}, ""},
		{"cancel login password", [][2]string{{"AUTH LOGIN", "334 "}, {b64("alice"), "334 "}, {"*", "501 5.0.0"}}, ""},
		{"unknown mechanism", [][2]string{{"AUTH CRAM-MD5", "504 5.5.4"}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialStartTLS(t, ts.plain, conf)
			c.do("EHLO client.test", "250 ")
			for _, s := range tc.steps {
				c.do(s[0], s[1])
			}
			if tc.user == "" {
				c.do("NOOP", "250 2.0.0") // back at commands
				c.do("QUIT", "221 ")
				return
			}
			c.do("AUTH PLAIN "+plainB64("", "alice", alicePass), "503 5.5.1 Already authenticated")
			c.do("MAIL FROM:<a@client.test>", "250 2.1.0")
			c.do("AUTH LOGIN", "503 5.5.1") // RFC 4954 §4: not inside a transaction
			c.do("RCPT TO:<b@mx.test>", "250 2.1.5")
			c.do("DATA", "354 ")
			c.send("x\r\n.\r\n")
			c.expect("250 2.0.0")
			c.do("QUIT", "221 ")
			msgs := ts.rec.Messages()
			m := msgs[len(msgs)-1]
			if m.AuthUser != tc.user || !strings.Contains(m.Data, " with ESMTPSA (TLS") {
				t.Errorf("auth user %q, Received %q", m.AuthUser, m.Data)
			}
		})
	}
}

// TestAuthInTheClear: 538 before TLS, whatever the line holds; the
// password is never checked there.
func TestAuthInTheClear(t *testing.T) {
	ts := startTLSServer(t, Config{})
	c := dial(t, ts.plain)
	c.do("EHLO client.test", "250 ")
	c.do("AUTH PLAIN "+plainB64("", "alice", alicePass), "538 5.7.11")
	c.do("AUTH LOGIN", "538 5.7.11")
	c.do("QUIT", "221 ")
	st := &ts.srv.Stats().TLS
	if st.Auth[AuthCleartext].Load() != 2 || st.Auth[AuthOK].Load() != 0 {
		t.Errorf("auth results cleartext %d ok %d", st.Auth[AuthCleartext].Load(), st.Auth[AuthOK].Load())
	}
}

// TestAuthLineTooLong: a response line past authLineMax is 500 5.5.6 and
// the session stays in step.
func TestAuthLineTooLong(t *testing.T) {
	ts := startTLSServer(t, Config{})
	c := dialStartTLS(t, ts.plain, ts.clientTLS())
	c.do("EHLO client.test", "250 ")
	c.do("AUTH PLAIN", "334 ")
	c.do(strings.Repeat("QUFB", authLineMax/4+1), "500 5.5.6")
	c.do("NOOP", "250 2.0.0")
}

// TestRequireTLS: MAIL before STARTTLS is 530 5.7.0.
func TestRequireTLS(t *testing.T) {
	ts := startTLSServer(t, Config{RequireTLS: true})
	c := dial(t, ts.plain)
	c.do("EHLO client.test", "250 ")
	c.do("MAIL FROM:<a@client.test>", "530 5.7.0 Must issue a STARTTLS command first")
	c.do("STARTTLS", "220 ")
	c.startTLS(ts.clientTLS())
	c.do("EHLO client.test", "250 ")
	c.do("MAIL FROM:<a@client.test>", "250 2.1.0")
}

// TestSubmissionNeedsAuth: on --listen-submission, MAIL needs AUTH.
func TestSubmissionNeedsAuth(t *testing.T) {
	ts := startTLSServer(t, Config{})
	c := dial(t, ts.submit)
	c.do("EHLO client.test", "250 ")
	c.do("MAIL FROM:<a@client.test>", "530 5.7.0 Authentication required")
	c.do("STARTTLS", "220 ")
	c.startTLS(ts.clientTLS())
	c.do("EHLO client.test", "250 ")
	c.do("MAIL FROM:<a@client.test>", "530 5.7.0 Authentication required")
	c.do("AUTH PLAIN "+plainB64("", "alice", alicePass), "235 2.7.0")
	c.do("MAIL FROM:<a@client.test>", "250 2.1.0")
	// --listen is unchanged.
	p := dial(t, ts.plain)
	p.do("EHLO client.test", "250 ")
	p.do("MAIL FROM:<a@client.test>", "250 2.1.0")
}

// TestRequireAuth: --require-auth applies to every listener.
func TestRequireAuth(t *testing.T) {
	ts := startTLSServer(t, Config{RequireAuth: true})
	c := dialTLS(t, ts.implicit, ts.clientTLS())
	c.do("EHLO client.test", "250 ")
	c.do("MAIL FROM:<a@client.test>", "530 5.7.0 Authentication required")
	c.do("AUTH LOGIN "+b64("bob"), "334 ")
	c.do(b64(bobPass), "235 2.7.0")
	c.do("MAIL FROM:<a@client.test>", "250 2.1.0")
}

// TestHandshakeGarbage: plaintext where a ClientHello belongs, on the
// implicit-TLS listener and after STARTTLS: closed, counted, nothing
// executed.
func TestHandshakeGarbage(t *testing.T) {
	ts := startTLSServer(t, Config{})
	conn := rawDial(t, ts.implicit)
	_, _ = conn.Write([]byte("EHLO client.test\r\nMAIL FROM:<a@b.test>\r\n"))
	got, _ := io.ReadAll(conn)
	if len(got) > 0 && got[0] != 0x15 { // at most a TLS alert record
		t.Errorf("server sent %q, want nothing but a TLS alert", got)
	}
	c := dial(t, ts.plain)
	c.do("EHLO client.test", "250 ")
	c.do("STARTTLS", "220 ")
	c.send("MAIL FROM:<a@b.test>\r\n")
	c.expectClosed()
	st := &ts.srv.Stats().TLS
	waitFor(t, func() bool { return st.HandshakeFailed[HandshakeBad].Load() == 2 })
	waitFor(t, func() bool { return ts.srv.Stats().Open.Load() == 0 })
}

// TestHandshakeStalled: a client that connects and says nothing is
// closed after HandshakeTimeout.
func TestHandshakeStalled(t *testing.T) {
	ts := startTLSServer(t, Config{HandshakeTimeout: 200 * time.Millisecond})
	conn := rawDial(t, ts.implicit)
	buf := make([]byte, 1)
	if _, err := conn.Read(buf); err != io.EOF {
		t.Fatalf("read %v, want EOF (closed by the server)", err)
	}
	st := &ts.srv.Stats().TLS
	waitFor(t, func() bool { return st.HandshakeFailed[HandshakeTimeout].Load() == 1 })
	waitFor(t, func() bool { return ts.srv.Stats().Open.Load() == 0 })
}

// TestOldTLSRefused: a client that speaks at most TLS 1.1 gets no
// session; with TLSMinVersion 1.3, neither does a TLS 1.2 client.
func TestOldTLSRefused(t *testing.T) {
	for _, tc := range []struct {
		min    string
		client uint16
	}{{"1.2", tls.VersionTLS11}, {"1.3", tls.VersionTLS12}} {
		ts := startTLSServer(t, Config{TLSMinVersion: tc.min})
		conf := ts.clientTLS()
		conf.MinVersion, conf.MaxVersion = tls.VersionTLS10, tc.client
		conn := rawDial(t, ts.implicit)
		if err := tls.Client(conn, conf).Handshake(); err == nil {
			t.Errorf("min %s: a %s client completed a handshake", tc.min, tls.VersionName(tc.client))
		}
		st := &ts.srv.Stats().TLS
		waitFor(t, func() bool { return st.HandshakeFailed[HandshakeVersion].Load() == 1 })
	}
}

// TestHandshakeFlood: clients that open TLS connections and stall hold
// at most MaxHandshakes handshakes; past that they are closed (busy), and
// a plaintext client is served all along.
func TestHandshakeFlood(t *testing.T) {
	ts := startTLSServer(t, Config{MaxHandshakes: 4, HandshakeTimeout: 3 * time.Second, MaxConnsPerIP: 100})
	var conns []net.Conn
	for range 12 {
		conns = append(conns, rawDial(t, ts.implicit))
	}
	st := &ts.srv.Stats().TLS
	waitFor(t, func() bool { return st.HandshakeFailed[HandshakeBusy].Load() == 8 })
	c := dial(t, ts.plain)
	c.do("EHLO canary.test", "250 ")
	c.do("QUIT", "221 ")
	for _, conn := range conns {
		conn.Close()
	}
	waitFor(t, func() bool { return ts.srv.Stats().Open.Load() == 0 })
}

// TestAuthBruteForce: a thousand wrong passwords from one address. Each
// session is closed at MaxErrors; the address's failures add up across
// sessions, and so does its delay.
func TestAuthBruteForce(t *testing.T) {
	if testing.Short() {
		t.Skip("a thousand bcrypt checks")
	}
	ts := startTLSServer(t, Config{AuthFailDelay: 20 * time.Microsecond})
	conf := ts.clientTLS()
	const sessions, perSession = 100, 10 // MaxErrors is 10
	for i := range sessions {
		c := dialStartTLS(t, ts.plain, conf)
		c.do("EHLO client.test", "250 ")
		for j := range perSession {
			c.send(fmt.Sprintf("AUTH PLAIN %s\r\n", plainB64("", "alice", fmt.Sprint("guess", i, j))))
			c.expect("535 5.7.8")
		}
		c.expect("421 4.7.0 mx.test Too many errors")
		c.expectClosed()
		c.conn.Close()
	}
	if n := ts.srv.tls.fails.failures(ts.srv.keyOf(mustAddr("127.0.0.1"))); n != sessions*perSession {
		t.Errorf("failures remembered %d, want %d", n, sessions*perSession)
	}
	if n := ts.srv.Stats().TLS.Auth[AuthFailed].Load(); n != sessions*perSession {
		t.Errorf("failed AUTH counted %d", n)
	}
	// The right password still works, and forgets the failures.
	c := dialStartTLS(t, ts.plain, conf)
	c.do("EHLO client.test", "250 ")
	c.do("AUTH PLAIN "+plainB64("", "alice", alicePass), "235 2.7.0")
	if n := ts.srv.tls.fails.failures(ts.srv.keyOf(mustAddr("127.0.0.1"))); n != 0 {
		t.Errorf("failures after a success %d", n)
	}
}

// TestFailDelay: the delay doubles with each failure up to 32 × base,
// and an address's failures are forgotten after failMemory.
func TestFailDelay(t *testing.T) {
	var f failTracker
	f.init()
	ip, now, base := mustAddr("192.0.2.1"), time.Now(), 10*time.Millisecond
	var got []time.Duration
	for range 8 {
		got = append(got, f.add(ip, now, base))
	}
	want := []time.Duration{10, 20, 40, 80, 160, 320, 320, 320}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("delays %v, want %v ms", got, want)
		}
	}
	if d := f.add(ip, now.Add(failMemory+time.Second), base); d != base {
		t.Errorf("after %v quiet: %v, want %v", failMemory, d, base)
	}
}

// TestCertReload: a new pair is picked up on Reload; a bad one keeps the
// old certificate in force and is counted.
func TestCertReload(t *testing.T) {
	ts := startTLSServer(t, Config{})
	serialSeen := func() string {
		conn := rawDial(t, ts.implicit)
		conf := ts.clientTLS()
		conf.InsecureSkipVerify = true
		tc := tls.Client(conn, conf)
		mustf(t, tc.Handshake(), "handshake")
		defer tc.Close()
		return tc.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	cfg := ts.srv.Config()
	if got := serialSeen(); got != ts.cert.Serial.String() {
		t.Fatalf("serial %s, want %s", got, ts.cert.Serial)
	}
	if exp := ts.srv.Stats().TLS.CertExpiry.Load(); exp != ts.cert.NotAfter.Unix() {
		t.Errorf("expiry %d, want %d", exp, ts.cert.NotAfter.Unix())
	}
	// A broken certificate file: the old pair stays.
	mustf(t, os.WriteFile(cfg.TLSCert, []byte("not a certificate"), 0o600), "write")
	if _, err := ts.srv.Reload(cfg); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if got := serialSeen(); got != ts.cert.Serial.String() {
		t.Errorf("after a bad reload serial %s, want the old %s", got, ts.cert.Serial)
	}
	if n := ts.srv.Stats().TLS.CertReloadFailures.Load(); n != 1 {
		t.Errorf("reload failures %d, want 1", n)
	}
	// A new good pair in the same files.
	next := smtptest.WriteCert(t, t.TempDir(), "rsa")
	for src, dst := range map[string]string{next.CertFile: cfg.TLSCert, next.KeyFile: cfg.TLSKey} {
		b, _ := os.ReadFile(src)
		mustf(t, os.WriteFile(dst, b, 0o600), "write")
	}
	if _, err := ts.srv.Reload(cfg); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if got := serialSeen(); got != next.Serial.String() {
		t.Errorf("after reload serial %s, want %s", got, next.Serial)
	}
}

// TestTLSSessionsDrain: Shutdown reaches sessions on TLS goroutines too.
func TestTLSSessionsDrain(t *testing.T) {
	ts := startTLSServer(t, Config{})
	c := dialStartTLS(t, ts.plain, ts.clientTLS())
	c.do("EHLO client.test", "250 ")
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ctx, cancel := contextWithTimeout(2 * time.Second)
		defer cancel()
		_ = ts.srv.Shutdown(ctx)
	}()
	c.expect("421 4.3.2")
	wg.Wait()
}

// TestTLSAsyncSink: the sink's verdict comes back later; the wake reaches
// the TLS goroutine and pipelined commands wait their turn.
func TestTLSAsyncSink(t *testing.T) {
	ts := startTLSServer(t, Config{Sink: &smtptest.Recorder{Async: true, Delay: 50 * time.Millisecond}})
	c := dialTLS(t, ts.implicit, ts.clientTLS())
	c.do("EHLO client.test", "250 ")
	c.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.expect("354 ")
	c.send("x\r\n.\r\nNOOP\r\nQUIT\r\n")
	c.expect("250 2.0.0 OK queued as ")
	c.expect("250 2.0.0 OK")
	c.expect("221 ")
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// prependConn writes head in front of the first Write: a load balancer's
// PROXY header in the same packet as the ClientHello.
type prependConn struct {
	net.Conn
	head []byte
}

func (p *prependConn) Write(b []byte) (int, error) {
	if p.head != nil {
		_, err := p.Conn.Write(append(p.head, b...))
		p.head = nil
		return len(b), err
	}
	return p.Conn.Write(b)
}

// TestImplicitTLSBehindProxy: on --listen-tls, a trusted load balancer's
// PROXY header comes first, then the ClientHello, in one packet or two.
func TestImplicitTLSBehindProxy(t *testing.T) {
	ts := startTLSServer(t, Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	for i, samePacket := range []bool{true, false} {
		header := fmt.Sprintf("PROXY TCP4 192.0.2.%d 127.0.0.2 5555 465\r\n", 10+i)
		c := dialNoGreeting(t, ts.implicit)
		if samePacket {
			c.conn = &prependConn{Conn: c.conn, head: []byte(header)}
		} else {
			c.send(header)
		}
		c.startTLS(ts.clientTLS())
		c.expect("220 mx.test ESMTP")
		c.do("EHLO client.test", "250 ")
		c.do("MAIL FROM:<a@client.test>", "250 2.1.0")
		c.do("RCPT TO:<b@mx.test>", "250 2.1.5")
		c.do("DATA", "354 ")
		c.send("x\r\n.\r\n")
		c.expect("250 2.0.0")
		c.do("QUIT", "221 ")
		m := waitMessages(t, ts.rec, i+1)[i]
		if want := fmt.Sprintf("192.0.2.%d", 10+i); m.ClientIP != want || m.TLSVersion == "" {
			t.Errorf("same packet %v: client %q TLS %q, want %s over TLS", samePacket, m.ClientIP, m.TLSVersion, want)
		}
	}
}

// TestFilesReloadWhenChanged: without a SIGHUP, a changed certificate
// and a changed auth file are picked up at the next look (once a minute;
// the test moves the clock of the look, not the files).
func TestFilesReloadWhenChanged(t *testing.T) {
	ts := startTLSServer(t, Config{})
	cfg := ts.srv.Config()
	next := smtptest.WriteCert(t, t.TempDir(), "ecdsa")
	for src, dst := range map[string]string{next.CertFile: cfg.TLSCert, next.KeyFile: cfg.TLSKey} {
		b, _ := os.ReadFile(src)
		mustf(t, os.WriteFile(dst, b, 0o600), "write")
	}
	// Not yet due: the old certificate still.
	conf := &tls.Config{ServerName: "mx.test", RootCAs: next.Pool}
	if err := tls.Client(rawDial(t, ts.implicit), conf).Handshake(); err == nil {
		t.Fatalf("the new certificate was used before the files were looked at again")
	}
	ts.srv.tls.certs.nextCheck.Store(0)
	if err := tls.Client(rawDial(t, ts.implicit), conf).Handshake(); err != nil {
		t.Fatalf("after the look, handshake with the new certificate: %v", err)
	}

	// The auth file: carol replaces alice.
	h, err := HashPassword([]byte("carol-pw"), "bcrypt")
	mustf(t, err, "hash")
	mustf(t, os.WriteFile(cfg.AuthFile, []byte("carol:"+h+"\n"), 0o600), "write")
	ts.srv.tls.auth.nextCheck.Store(0)
	c := dialStartTLS(t, ts.plain, conf)
	c.do("EHLO client.test", "250 ")
	c.do("AUTH PLAIN "+plainB64("", "alice", alicePass), "535 5.7.8")
	c.do("AUTH PLAIN "+plainB64("", "carol", "carol-pw"), "235 2.7.0")

	// A broken auth file keeps carol.
	mustf(t, os.WriteFile(cfg.AuthFile, []byte("carol:not-a-hash\n"), 0o600), "write")
	ts.srv.tls.auth.nextCheck.Store(0)
	c = dialStartTLS(t, ts.plain, conf)
	c.do("EHLO client.test", "250 ")
	c.do("AUTH PLAIN "+plainB64("", "carol", "carol-pw"), "235 2.7.0")
	if n := ts.srv.Stats().TLS.AuthFileReloadFailures.Load(); n != 1 {
		t.Errorf("auth file reload failures %d, want 1", n)
	}
}

// TestAuthPromptDrain guards the 334 prompt against Shutdown: a client
// that never answers it gets the 421 4.3.2 and the close at once, as a
// session between commands does (AUTH is never inside a transaction,
// RFC 4954 §4), rather than outliving even a forced shutdown.
func TestAuthPromptDrain(t *testing.T) {
	ts := startTLSServer(t, Config{})
	c := dialStartTLS(t, ts.plain, ts.clientTLS())
	c.do("EHLO client.test", "250 ")
	c.do("AUTH PLAIN", "334 ")
	ctx, cancel := contextWithTimeout(5 * time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- ts.srv.Shutdown(ctx) }()
	c.expect("421 4.3.2")
	c.expectClosed()
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v (the drain waited for its deadline)", err)
	}
}

// TestReloadWhileFilesReload guards the loggers of the certificate and
// auth stores: Reload sets them while TLS sessions reload the files and
// warn through them. Run with -race; without it the test only shows that
// both go on answering.
func TestReloadWhileFilesReload(t *testing.T) {
	ts := startTLSServer(t, Config{})
	cfg := ts.srv.Config()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := ts.srv.Reload(cfg); err != nil {
				t.Errorf("Reload: %v", err)
				return
			}
		}
	}()
	// Broken files: each look at them warns through the store's logger,
	// and the credentials and certificate in force stay.
	mustf(t, os.WriteFile(cfg.AuthFile, []byte("broken line\n"), 0o600), "write")
	mustf(t, os.WriteFile(cfg.TLSCert, []byte("not a certificate"), 0o600), "write")
	for range 20 {
		ts.srv.tls.auth.nextCheck.Store(0)
		ts.srv.tls.certs.nextCheck.Store(0)
		c := dialStartTLS(t, ts.plain, ts.clientTLS())
		c.do("EHLO client.test", "250 ")
		c.do("AUTH PLAIN "+plainB64("", "alice", alicePass), "235 2.7.0")
		c.do("QUIT", "221 ")
		dialTLS(t, ts.implicit, ts.clientTLS()).do("QUIT", "221 ")
	}
	close(stop)
	<-done
}

// TestReloadCannotDropTheFilesOfListenersThatStay guards Reload's order:
// the TLS and submission listeners stay until a restart, so a reload
// that takes away the certificate or the auth file with them is refused,
// not left with listeners that have neither.
func TestReloadCannotDropTheFilesOfListenersThatStay(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Config)
	}{
		{"tls-cert", func(c *Config) {
			c.TLSCert, c.TLSKey, c.AuthFile, c.ListenTLS, c.ListenSubmission = "", "", "", nil, nil
		}},
		{"auth-file", func(c *Config) { c.AuthFile, c.ListenSubmission = "", nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startTLSServer(t, Config{})
			cfg := ts.srv.Config()
			tc.edit(&cfg)
			if _, err := ts.srv.Reload(cfg); err == nil {
				t.Errorf("a reload without %s passed while its listeners stay", tc.name)
			}
			// The running configuration is untouched: submission still
			// takes STARTTLS and AUTH.
			c := dialStartTLS(t, ts.submit, ts.clientTLS())
			c.do("EHLO client.test", "250 ")
			c.do("AUTH PLAIN "+plainB64("", "alice", alicePass), "235 2.7.0")
			c.do("MAIL FROM:<a@b.test>", "250 2.1.0")
		})
	}
}

// TestTLSInputBufferChargedAndShrunk guards the input buffer of a TLS
// session (tlsConn.in): grown for a long line it counts in
// SessionBuffers whole, not only by its unread octets, and once the line
// is read it goes back to the initial size, so that nothing stays held
// uncounted past Config.MaxSessionBuffers.
func TestTLSInputBufferChargedAndShrunk(t *testing.T) {
	ts := startTLSServer(t, Config{})
	held := &ts.srv.Stats().SessionBuffers
	c := dialStartTLS(t, ts.plain, ts.clientTLS())
	c.do("EHLO client.test", "250 ")
	c.do("AUTH PLAIN", "334 ")
	// A partial response line of 8200 octets (under authLineMax): the
	// buffer doubles twice, to 16 KiB.
	c.send(strings.Repeat("A", 8200))
	const grown = 4*tlsInitialBuffer - tlsInitialBuffer
	waitFor(t, func() bool { return held.Load() >= grown })
	c.send("\r\n")
	c.expect("535 5.7.8") // no NULs: no PLAIN response
	c.do("NOOP", "250 ")
	waitFor(t, func() bool { return held.Load() < tlsInitialBuffer })
}
