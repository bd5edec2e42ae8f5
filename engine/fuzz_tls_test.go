package engine

import (
	"bytes"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/lsmtp/lsmtp/internal/sink"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// FuzzTLSSession drives the STARTTLS transition and the AUTH exchange:
// clear is what the client sends in the clear, secure what it sends once
// the handshake is done. The harness plays the loop and the hand-off: at
// the STARTTLS 220 everything left of clear is dropped, as handOff drops
// gnet's buffer and the handshake would fail on the rest, and the session
// goes on over a TLS connection that needs no handshake.
func FuzzTLSSession(f *testing.F) {
	dir := f.TempDir()
	crt := smtptest.WriteCert(f, dir, "ecdsa")
	users := writeAuthFile(f, dir)
	cfg := func() Config {
		return Config{TLSCert: crt.CertFile, TLSKey: crt.KeyFile, AuthFile: users, AuthFailDelay: time.Nanosecond,
			Sink: &smtptest.Recorder{}}
	}
	plain := plainB64("", "alice", alicePass)
	for _, s := range []struct{ clear, secure string }{
		{"EHLO a\r\nSTARTTLS\r\n", "EHLO a\r\nAUTH PLAIN " + plain + "\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n"},
		{"EHLO a\r\nSTARTTLS\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<c@d>\r\nDATA\r\n", "RCPT TO:<c@d>\r\nDATA\r\nQUIT\r\n"},
		{"EHLO a\r\nAUTH PLAIN " + plain + "\r\nMAIL FROM:<a@b>\r\nSTARTTLS\r\n", ""},
		{"EHLO a\r\nSTARTTLS x\r\nSTARTTLS\r\n", "EHLO a\r\nSTARTTLS\r\nAUTH LOGIN\r\n" + b64("alice") + "\r\n" + b64(alicePass) + "\r\nAUTH PLAIN\r\n"},
		{"EHLO a\r\nSTARTTLS\r\n", "EHLO a\r\nAUTH LOGIN\r\n*\r\nAUTH PLAIN\r\n%%%\r\nAUTH PLAIN =\r\nAUTH XX\r\nAUTH PLAIN " + b64("\x00alice\x00x\x00y") + "\r\n"},
		{"EHLO a\r\nSTARTTLS\r\n", "EHLO a\r\nAUTH PLAIN\r\n" + strings.Repeat("A", authLineMax+10) + "\r\nNOOP\r\n"},
	} {
		f.Add([]byte(s.clear), []byte(s.secure), []byte{3, 0, 17})
	}
	f.Fuzz(func(t *testing.T, clear, secure, split []byte) {
		if len(clear)+len(secure) > fuzzMaxInput/4 {
			return
		}
		run := runTLSSession(t, cfg(), chunks(clear, split), chunks(secure, split))
		run.check(t, len(clear)+len(secure))
		whole := runTLSSession(t, cfg(), [][]byte{clear}, [][]byte{secure})
		whole.check(t, len(clear)+len(secure))
		if got, want := whole.normalized(), run.normalized(); got != want {
			t.Fatalf("one chunk differs from split %q:\n%s\nwant\n%s", split, got, want)
		}
	})
}

// tlsRun is one fuzzed session: the replies before and after the
// hand-off, and the sink's messages.
type tlsRun struct {
	h             *memHarness
	sink          *smtptest.Recorder
	before, after []byte
	handedOff     bool
	beforeMsgs    int // messages the sink had at the hand-off
}

func runTLSSession(t *testing.T, cfg Config, clear, secure [][]byte) *tlsRun {
	h := newMemHarness(t, cfg, false)
	run := &tlsRun{h: h, sink: cfg.Sink.(*smtptest.Recorder)}
	step := func(b []byte) {
		if h.closed {
			return
		}
		h.conn.feed(b)
		h.callbacks++
		action := h.sess.onTraffic(h.conn, h.now)
		h.take(h.conn.out)
		h.conn.out = h.conn.out[:0]
		if action != gnet.Close {
			return
		}
		if !h.sess.sec.startTLS || run.handedOff {
			h.close()
			return
		}
		// The hand-off: gnet's buffer is dropped unread, the handshake
		// completes.
		run.handedOff = true
		run.before = append([]byte(nil), h.transcript...)
		run.beforeMsgs = len(run.sink.Messages())
		h.conn.in, h.conn.r = h.conn.in[:0], 0
		h.sess.tls.Store(&tlsConn{sess: h.sess})
		h.sess.established(&tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256}, h.now)
		h.take(h.sess.out)
		h.sess.out = h.sess.out[:0]
	}
	for _, b := range clear {
		if !run.handedOff {
			step(b)
		}
	}
	if run.handedOff {
		for _, b := range secure {
			step(b)
		}
		run.after = h.transcript[len(run.before):]
	} else {
		run.before = h.transcript
	}
	h.close()
	return run
}

func (r *tlsRun) check(t *testing.T, inputLen int) {
	t.Helper()
	h := r.h
	if limit := len(h.srv.settings().replies.greeting) + fuzzOutputSlack + fuzzOutputFactor*inputLen; len(h.transcript) > limit {
		t.Fatalf("%d octets of replies to %d octets of input", len(h.transcript), inputLen)
	}
	before, err := replyLines(r.before)
	if err != nil {
		t.Fatalf("replies in the clear: %v: %q", err, r.before)
	}
	after, err := replyLines(r.after)
	if err != nil {
		t.Fatalf("replies over TLS: %v: %q", err, r.after)
	}
	// In the clear: never a 334 or a 235 (RFC 4954 §4), and the 220
	// to STARTTLS is the last thing said (RFC 3207 §4.2).
	for _, l := range before {
		if strings.HasPrefix(l, "334 ") || strings.HasPrefix(l, "235 ") {
			t.Fatalf("AUTH progressed in the clear: %q", l)
		}
	}
	if r.handedOff && !bytes.HasSuffix(r.before, []byte("220 2.0.0 Ready to start TLS\r\n")) {
		t.Fatalf("replies after the STARTTLS 220 in the clear: %q", r.before)
	}
	authed := false
	for _, l := range after {
		authed = authed || strings.HasPrefix(l, "235 ")
		if strings.HasPrefix(l, "220 2.0.0 Ready to start TLS") {
			t.Fatalf("STARTTLS accepted twice")
		}
	}
	for i, m := range r.sink.Messages() {
		secure := i >= r.beforeMsgs && r.handedOff
		if (m.TLSVersion != "") != secure || (m.AuthUser != "" && (!secure || !authed)) {
			t.Fatalf("message %d: TLS %q, user %q; secure %v, authenticated %v", i, m.TLSVersion, m.AuthUser, secure, authed)
		}
	}
	if n := h.srv.stats.InFlightBytes.Load(); n != 0 {
		t.Fatalf("%d in-flight octets still counted", n)
	}
	if open := h.srv.stats.Open.Load(); open != 0 {
		t.Fatalf("%d connections still counted", open)
	}
}

// normalized is the transcript with queue IDs replaced by their index.
func (r *tlsRun) normalized() string {
	s := string(r.h.transcript)
	for i, m := range r.sink.Messages() {
		s = strings.ReplaceAll(s, m.QueueID, string(rune('A'+i)))
	}
	return s
}

// TestTLSHarness checks the fuzz harness on a dialog whose outcome is
// known: the hand-off happens, the pipelined MAIL is dropped, AUTH works
// and the message carries both facts.
func TestTLSHarness(t *testing.T) {
	dir := t.TempDir()
	crt := smtptest.WriteCert(t, dir, "ecdsa")
	cfg := Config{TLSCert: crt.CertFile, TLSKey: crt.KeyFile, AuthFile: writeAuthFile(t, dir), AuthFailDelay: time.Nanosecond,
		Sink: &smtptest.Recorder{}}
	run := runTLSSession(t, cfg, [][]byte{[]byte("EHLO a\r\nSTARTTLS\r\nMAIL FROM:<evil@x>\r\n")},
		[][]byte{[]byte("EHLO a\r\nAUTH PLAIN " + plainB64("", "alice", alicePass) + "\r\nRCPT TO:<c@d>\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\n")})
	run.check(t, 1000)
	after := string(run.after)
	for _, want := range []string{"250 AUTH PLAIN LOGIN\r\n235 2.7.0", "503 5.5.1 Need MAIL before RCPT", "250 2.0.0 OK queued as "} {
		if !strings.Contains(after, want) {
			t.Errorf("replies over TLS lack %q:\n%s", want, after)
		}
	}
	if msgs := run.sink.Messages(); len(msgs) != 1 || msgs[0].AuthUser != "alice" || msgs[0].TLSVersion != "TLS 1.3" {
		t.Errorf("messages %+v", msgs)
	}
}

// TestTLSSessionAllocs: with a certificate and an auth file loaded, a
// session in the clear still takes commands without allocating, EHLO
// (now offering STARTTLS) included; so does one after the hand-off.
func TestTLSSessionAllocs(t *testing.T) {
	dir := t.TempDir()
	crt := smtptest.WriteCert(t, dir, "ecdsa")
	cfg := Config{TLSCert: crt.CertFile, TLSKey: crt.KeyFile, AuthFile: writeAuthFile(t, dir), Sink: &sink.Null{}}
	batch := []byte("EHLO client.test\r\nNOOP\r\n" + allocEnvelope + "RSET\r\n")
	for _, secure := range []bool{false, true} {
		h := newMemHarness(t, cfg, false)
		if secure {
			h.sess.tls.Store(&tlsConn{sess: h.sess})
			h.sess.established(&tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256}, h.now)
		}
		h.pass(batch)
		want := "250 STARTTLS\r\n"
		if secure {
			want = "250 AUTH PLAIN LOGIN\r\n"
		}
		if !strings.Contains(string(h.transcript), want) {
			t.Fatalf("secure %v: EHLO reply lacks %q: %q", secure, want, h.transcript)
		}
		h.discard = true
		if n := testing.AllocsPerRun(200, func() { h.pass(batch) }); n != 0 && !raceEnabled {
			t.Errorf("secure %v: %v allocations per batch, want 0", secure, n)
		}
		if h.closed {
			t.Errorf("secure %v: closed", secure)
		}
	}
}
