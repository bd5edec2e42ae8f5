package engine

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/sink"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// fuzzMaxInput bounds a fuzz input: the byte-by-byte run costs one
// callback per octet. It stays below MaxPipelineBacklog (64 KiB): the
// 421 for too much pipelined input depends on how much arrived while the
// sink was busy, so it is the one reply that may rightly depend on timing.
const fuzzMaxInput = 16 << 10

// The replies to an input are bounded: out <= greeting + fuzzOutputSlack
// + fuzzOutputFactor * in. The worst honest ratio is EHLO's multiline
// reply to "EHLO\n" (about 130 octets for 5); the slack is one closing
// reply (a 421) to a single octet.
const (
	fuzzOutputFactor = 40
	fuzzOutputSlack  = 128
)

// Fuzz modes: bits of the mode byte choose the configuration and the
// sink's behaviour; every run of one input uses the same.
const (
	modeDeferred   = 1 << iota // the sink completes on the next step, not inside Submit
	modeSinkFails              // every second message fails at the sink
	modeNormalize              // Config.NormalizeBareEOL
	modeSmall                  // MaxMessageSize 200, MaxRecipients 3
	modeHangUp                 // also: the client hangs up right after its last byte
	modeFewErrors              // MaxErrors 3
	modeShutdown               // the sink's failure is 421 (closes) instead of 451
	modeTinyBudget             // MaxInFlightBytes 600: bodies run out of memory
	modeProxy                  // the connection comes from a trusted load balancer: PROXY header first
	modePolicy                 // a client policy: 2 messages per session, recipients @d.test, 203.0.113.66 denied
)

// fuzzPolicy is a deterministic ClientPolicy: the same input meets the
// same answers in every run.
type fuzzPolicy struct{ messages int }

var fuzzDenied = netip.MustParseAddr("203.0.113.66")

func (p *fuzzPolicy) ClientAllowed(ip netip.Addr) bool          { return ip != fuzzDenied }
func (p *fuzzPolicy) TakeConnection(netip.Addr, time.Time) bool { return true }
func (p *fuzzPolicy) TakeMessage(netip.Addr, time.Time) bool    { p.messages++; return p.messages <= 2 }
func (p *fuzzPolicy) RecipientAllowed(addr []byte) bool {
	return bytes.HasSuffix(addr, []byte("@d.test"))
}

func fuzzConfig(mode uint16) Config {
	ss := &smtptest.Recorder{Deferred: mode&modeDeferred != 0}
	if fail := fuzzFailure(mode); fail != nil {
		// Every second message fails.
		ss.Verdict = func(n int) error {
			if n%2 == 0 {
				return fail
			}
			return nil
		}
	}
	cfg := Config{Sink: ss, NormalizeBareEOL: mode&modeNormalize != 0}
	if mode&modeSmall != 0 {
		cfg.MaxMessageSize = 200
		cfg.MaxRecipients = 3
	}
	if mode&modeFewErrors != 0 {
		cfg.MaxErrors = 3
	}
	if mode&modeTinyBudget != 0 {
		cfg.MaxInFlightBytes = 600
	}
	if mode&modeProxy != 0 {
		cfg.TrustedProxies = []netip.Prefix{netip.PrefixFrom(memRemote.Addr(), 32)}
	}
	if mode&modePolicy != 0 {
		cfg.Policy = &fuzzPolicy{}
	}
	return cfg
}

// fuzzFailure is the verdict of the sink's failing messages in mode, nil
// when none fail.
func fuzzFailure(mode uint16) error {
	switch {
	case mode&modeShutdown != 0:
		return sink.ErrShuttingDown
	case mode&modeSinkFails != 0:
		return sink.ErrBusy
	}
	return nil
}

// chunks cuts input where split says: chunk i is 1+split[i%len(split)]
// octets long. An empty split is one chunk.
func chunks(input, split []byte) [][]byte {
	if len(split) == 0 {
		return [][]byte{input}
	}
	var out [][]byte
	for i := 0; len(input) > 0; i++ {
		n := min(1+int(split[i%len(split)]), len(input))
		out = append(out, input[:n])
		input = input[n:]
	}
	return out
}

// fuzzRun is the outcome of feeding one input to a fresh session.
type fuzzRun struct {
	h      *memHarness
	sink   *smtptest.Recorder
	hungUp bool // the client left without waiting for the last answers
}

// runSession feeds parts one callback each and then, unless hangUp, lets
// the session finish what it has (sink verdicts, wakes) before the client
// leaves. The session is always closed at the end, as OnClose would.
func runSession(t *testing.T, mode uint16, parts [][]byte, hangUp bool) fuzzRun {
	cfg := fuzzConfig(mode)
	ss := cfg.Sink.(*smtptest.Recorder)
	h := newMemHarness(t, cfg, false)
	for _, p := range parts {
		h.send(p)
	}
	if !hangUp {
		h.settle()
	}
	h.close()
	// A broker answers even for a client that left; the session must give
	// the in-flight bytes back then.
	ss.CompletePending()
	return fuzzRun{h: h, sink: ss, hungUp: hangUp}
}

func FuzzSession(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add([]byte(s.dialog), s.split, s.mode)
	}
	f.Fuzz(func(t *testing.T, input, split []byte, mode uint16) {
		if len(input) > fuzzMaxInput {
			return
		}
		run := runSession(t, mode, chunks(input, split), false)
		checkRun(t, run, input)

		// Split invariance: TCP may cut the stream anywhere; the replies
		// and the messages must not depend on where.
		whole := runSession(t, mode, [][]byte{input}, false)
		checkRun(t, whole, input)
		bytewise := runSession(t, mode, chunks(input, []byte{0}), false)
		checkRun(t, bytewise, input)
		want := normalize(run)
		for name, other := range map[string]fuzzRun{"one chunk": whole, "byte by byte": bytewise} {
			if got := normalize(other); got != want {
				t.Fatalf("mode %#x: %s differs from the fuzzed split %q:\n%s\nwant\n%s", mode, name, split, got, want)
			}
		}

		if mode&modeHangUp != 0 {
			hung := runSession(t, mode, chunks(input, split), true)
			checkRun(t, hung, input)
		}
	})
}

// checkRun asserts what holds for every run whatever the input.
func checkRun(t *testing.T, run fuzzRun, input []byte) {
	t.Helper()
	h, ss := run.h, run.sink
	out := h.transcript
	if limit := len(h.srv.settings().replies.greeting) + fuzzOutputSlack + fuzzOutputFactor*len(input); len(out) > limit {
		t.Fatalf("%d octets of replies to %d octets of input (limit %d)", len(out), len(input), limit)
	}
	lines, err := replyLines(out)
	if err != nil {
		t.Fatalf("malformed replies: %v\ntranscript %q", err, out)
	}

	// Every verdict of the sink was answered, in order: 250 with the
	// queue ID the sink stored, or the sink's temporary error. Only a
	// client that hung up may miss the answer, to the last message.
	var answers []string
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "250 2.0.0 OK queued as "):
			answers = append(answers, strings.TrimPrefix(l, "250 2.0.0 OK queued as "))
		case strings.HasPrefix(l, "451 4.3.2 System busy"):
			answers = append(answers, "busy")
		case strings.HasPrefix(l, "421 4.3.2 Service shutting down"):
			answers = append(answers, "shutdown")
		}
	}
	var verdicts []string
	for _, m := range ss.Messages() {
		switch m.Err {
		case nil:
			verdicts = append(verdicts, m.QueueID)
		case sink.ErrBusy:
			verdicts = append(verdicts, "busy")
		case sink.ErrShuttingDown:
			verdicts = append(verdicts, "shutdown")
		default:
			t.Fatalf("unexpected sink verdict %v", m.Err)
		}
	}
	missing := len(verdicts) - len(answers)
	if missing < 0 || missing > 1 || (missing == 1 && !run.hungUp) {
		t.Fatalf("the sink gave %d verdicts %q, the client got %d answers %q (hung up: %v)",
			len(verdicts), verdicts, len(answers), answers, run.hungUp)
	}
	for i, a := range answers {
		if verdicts[i] != a {
			t.Fatalf("answer %d is %q, the sink's verdict was %q", i, a, verdicts[i])
		}
	}
	queued := 0
	for _, a := range answers {
		if a != "busy" && a != "shutdown" {
			queued++
		}
	}
	if n := h.srv.stats.MessagesBy(OutcomeAccepted); n != int64(queued) {
		t.Fatalf("stats count %d accepted messages, the client was told of %d", n, queued)
	}

	// Bounded: what the sink got fits the size limit plus our header.
	for _, m := range ss.Messages() {
		if int64(len(m.Content())) > h.srv.settings().MaxMessageSize {
			t.Fatalf("the sink got a body of %d octets, limit %d", len(m.Content()), h.srv.settings().MaxMessageSize)
		}
		if !strings.HasPrefix(m.Data, "Received: from ") {
			t.Fatalf("message without our Received: header: %q", m.Data)
		}
	}
	if n := h.srv.stats.InFlightBytes.Load(); n != 0 {
		t.Fatalf("%d in-flight octets still counted after the session closed and the sink answered", n)
	}
	// The connection counts (global and per client address, moved to the
	// real client by a PROXY header) are given back.
	h.srv.perIPMu.Lock()
	perIP := len(h.srv.perIP)
	h.srv.perIPMu.Unlock()
	if open := h.srv.stats.Open.Load(); open != 0 || perIP != 0 {
		t.Fatalf("after close: %d connections open, %d client addresses counted", open, perIP)
	}
}

// replyLines splits a transcript into reply lines and checks each:
// three digits 2xx-5xx, then ' ' (last line) or '-' (more follow, same
// code), then printable ASCII, then CRLF (RFC 5321 §4.2).
func replyLines(out []byte) ([]string, error) {
	if len(out) == 0 {
		return nil, nil
	}
	if !bytes.HasSuffix(out, []byte("\r\n")) {
		return nil, fmt.Errorf("does not end in CRLF")
	}
	lines := strings.Split(string(out[:len(out)-2]), "\r\n")
	cont := ""
	for i, l := range lines {
		if len(l) < 4 || l[0] < '2' || l[0] > '5' || l[1] < '0' || l[1] > '9' || l[2] < '0' || l[2] > '9' {
			return nil, fmt.Errorf("line %d %q: no reply code", i, l)
		}
		if l[3] != ' ' && l[3] != '-' {
			return nil, fmt.Errorf("line %d %q: code not followed by SP or '-'", i, l)
		}
		if cont != "" && l[:3] != cont {
			return nil, fmt.Errorf("line %d %q: continues a %s reply with another code", i, l, cont)
		}
		cont = ""
		if l[3] == '-' {
			cont = l[:3]
		}
		for _, c := range []byte(l[4:]) {
			if (c < 0x20 && c != '\t') || c > 0x7e {
				return nil, fmt.Errorf("line %d %q: octet %#x in the text", i, l, c)
			}
		}
	}
	if cont != "" {
		return nil, fmt.Errorf("the last reply %s has no last line", cont)
	}
	return lines, nil
}

// normalize renders a run so that two runs of one input compare equal:
// queue IDs (random per server) become their index at the sink.
func normalize(run fuzzRun) string {
	var pairs []string
	for i, m := range run.sink.Messages() {
		pairs = append(pairs, m.QueueID, fmt.Sprintf("<qid%d>", i))
	}
	r := strings.NewReplacer(pairs...)
	var b strings.Builder
	fmt.Fprintf(&b, "transcript %q\nclosed %v\n", r.Replace(string(run.h.transcript)), run.h.closed)
	for i, m := range run.sink.Messages() {
		m.QueueID = ""
		m.Data = r.Replace(m.Data)
		fmt.Fprintf(&b, "message %d: %+v\n", i, m)
	}
	return b.String()
}

type fuzzSeed struct {
	dialog string
	split  []byte
	mode   uint16
}

// fuzzSeeds are realistic dialogs, and the attacks we know of.
func fuzzSeeds() []fuzzSeed {
	const (
		ehlo = "EHLO client.test\r\n"
		env  = "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"
		msg  = "From: a@b.test\r\nSubject: hi\r\n\r\nbody\r\n..stuffed\r\n.\r\n"
	)
	long := strings.Repeat("x", 600)
	var seeds []fuzzSeed
	add := func(mode uint16, split []byte, dialog ...string) {
		seeds = append(seeds, fuzzSeed{strings.Join(dialog, ""), split, mode})
	}
	// One command per packet, as a careful client sends.
	add(0, nil, ehlo, env, "DATA\r\n", msg, "QUIT\r\n")
	add(0, []byte{17, 21, 19, 5}, ehlo, env, "DATA\r\n", msg, "QUIT\r\n")
	add(modeDeferred, []byte{3}, "HELO client.test\r\n", env, "DATA\r\n", msg, "RSET\r\nQUIT\r\n")
	// Pipelined (RFC 2920): two transactions back to back, sink async.
	add(modeDeferred, nil, ehlo, env, "DATA\r\n", msg, env, "RCPT TO:<e@f.test>\r\nDATA\r\n", msg, "QUIT\r\n")
	add(modeDeferred|modeSinkFails, []byte{40, 7}, ehlo, env, "DATA\r\n", msg, env, "DATA\r\n", msg, env, "DATA\r\n", msg, "QUIT\r\n")
	add(modeShutdown, nil, ehlo, env, "DATA\r\n", msg, env, "DATA\r\n", msg, env, "DATA\r\n", msg, "QUIT\r\n")
	// BDAT (RFC 3030), chunk octets that look like commands.
	add(0, nil, ehlo, "MAIL FROM:<a@b.test> BODY=BINARYMIME\r\nRCPT TO:<c@d.test>\r\n", "BDAT 5\r\nhel\r\nBDAT 4 LAST\r\nlo\r\n", "QUIT\r\n")
	add(modeDeferred, []byte{2}, ehlo, env, "BDAT 3\r\nabcBDAT 0 LAST\r\n", env, "BDAT 12 LAST\r\nRSET\r\nQUIT\r\nQUIT\r\n")
	add(0, nil, ehlo, "MAIL FROM:<bad address>\r\nRCPT TO:<c@d.test>\r\nBDAT 19 LAST\r\nMAIL FROM:<x@y.z>\r\nNOOP\r\n")
	add(modeSmall, nil, ehlo, env, "BDAT 150\r\n", strings.Repeat("b", 150), "BDAT 100\r\n", strings.Repeat("c", 100), "BDAT 2 LAST\r\nzz", env, "DATA\r\n")
	add(0, nil, ehlo, env, "BDAT 1\r\nxDATA\r\nRSET\r\n")
	add(modeTinyBudget, nil, ehlo, env, "BDAT 700 LAST\r\n", strings.Repeat("q", 700), env, "DATA\r\n", strings.Repeat("r", 700), "\r\n.\r\nQUIT\r\n")
	// SMTP smuggling: only CRLF.CRLF ends DATA.
	for _, end := range []string{"\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n", "\r\n.\r\r\n"} {
		for _, mode := range []uint16{0, modeNormalize} {
			add(mode, nil, ehlo, env, "DATA\r\n", "Subject: x\r\n\r\nbody", end,
				"MAIL FROM:<smuggled@evil.test>\r\nRCPT TO:<v@d.test>\r\nDATA\r\nsmuggled\r\n.\r\nNOOP\r\n")
		}
	}
	// Limits: size, recipients, errors, line length.
	add(modeSmall, nil, ehlo, env, "DATA\r\n", strings.Repeat("y", 198), "\r\nRSET\r\n", long, "\r\n.\r\nNOOP\r\n")
	add(modeSmall, nil, ehlo, "MAIL FROM:<a@b.test> SIZE=201\r\nMAIL FROM:<a@b.test> SIZE=200\r\n",
		"RCPT TO:<1@d.test>\r\nRCPT TO:<2@d.test>\r\nRCPT TO:<3@d.test>\r\nRCPT TO:<4@d.test>\r\nDATA\r\nx\r\n.\r\n")
	add(modeFewErrors, nil, "FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")
	add(0, []byte{255, 255, 255}, "NOOP ", long, "\r\nNOOP ", strings.Repeat("a", 505), "\r\nNOOP ", strings.Repeat("b", 5000), "\r\nNOOP\r\n")
	add(0, nil, "NOOP ", strings.Repeat("a", 506), "\r\nNOOP ", strings.Repeat("a", 505), "\n", "EHLO\n")
	// Odd but legal, and odd and not.
	add(0, nil, "ehlo c\nmail from:<a@b.test>\nrcpt to:<Postmaster>\ndata\nx\n.\n\r\n.\r\nquit\n")
	add(0, nil, ehlo, "MAIL FROM:<jö@bü.test> SMTPUTF8\r\nRCPT TO:<ü@d.test>\r\nDATA\r\nSubject: ü\r\n\r\n\xff\xfe\x00\r\n.\r\n")
	add(0, nil, ehlo, "MAIL FROM:<a@b.test> BODY=BINARYMIME\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
	add(0, nil, "VRFY x\r\nHELP\r\nEXPN y\r\nSTARTTLS\r\nAUTH PLAIN\r\nRSET\r\nDATA\r\nRCPT TO:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\n")
	add(0, nil, "HELO (evil)\x01\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n.\r\n")
	add(0, nil, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	add(0, nil, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
	add(0, nil, "\r\n\r\n\x00\r\n")
	add(modeHangUp|modeDeferred, nil, ehlo, env, "DATA\r\n", msg, "NOOP\r\n")
	add(modeHangUp, nil, ehlo, env, "DATA\r\nhalf a message\r\n")
	// Behind a load balancer (PROXY protocol v1 and v2), with a policy.
	v1 := "PROXY TCP4 198.51.100.1 192.0.2.1 40001 25\r\n"
	v2 := "\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc6\x33\x64\x01\xc0\x00\x02\x01\x9c\x41\x00\x19"
	add(modeProxy, nil, v1, ehlo, env, "DATA\r\n", msg, "QUIT\r\n")
	add(modeProxy, []byte{10}, v2, ehlo, env, "BDAT 4 LAST\r\nabcdQUIT\r\n")
	add(modeProxy|modePolicy, nil, "PROXY TCP4 203.0.113.66 192.0.2.1 40001 25\r\n", ehlo)
	add(modeProxy, nil, "PROXY UNKNOWN\r\n", ehlo, "QUIT\r\n")
	add(modeProxy, nil, "PROXY TCP6 2001:db8::1 2001:db8::2 40001 25\r\n", ehlo, env, "DATA\r\n", msg)
	add(modeProxy, nil, "PROXY TCP4 198.51.100.1\r\n", ehlo)
	add(0, nil, v1, ehlo)
	// XCLIENT from the trusted balancer, and from a client that may not.
	add(modeProxy, nil, v1, ehlo, "XCLIENT ADDR=192.0.2.9 NAME=c.test HELO=mx.test LOGIN=a\r\n", ehlo, env, "DATA\r\n", msg, "QUIT\r\n")
	add(modeProxy|modePolicy, nil, v1, "XCLIENT ADDR=203.0.113.66\r\n", ehlo)
	add(modeProxy, []byte{6}, v1, ehlo, "MAIL FROM:<a@b.test>\r\nXCLIENT ADDR=IPV6:2001:db8::1\r\nRSET\r\n",
		"XCLIENT ADDR=IPV6:2001:db8::1 PORT=1 HELO=a+20b\r\nXCLIENT LOGIN=x+0D+0A\r\nXCLIENT ADDR=[UNAVAILABLE] PORT=7\r\n", ehlo, env, "BDAT 1 LAST\r\nxQUIT\r\n")
	add(0, nil, ehlo, "XCLIENT ADDR=192.0.2.9\r\n", env, "DATA\r\n", msg)
	add(modePolicy, nil, ehlo, "MAIL FROM:<a@b.test>\r\nRCPT TO:<x@other.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n", msg,
		env, "DATA\r\n", msg, env, "DATA\r\n", msg, "QUIT\r\n")
	return seeds
}
