package bench

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSMTP is a minimal SMTP server for the client's tests: it records
// every connection's input and answers with fixed replies.
type fakeSMTP struct {
	ln       net.Listener
	greeting string // default "220 fake ESMTP"
	caps     []string
	final    string // reply to the end of a message; default "250 2.0.0 queued"

	mu          sync.Mutex
	transcripts [][]byte
	clients     map[string]int // connections per client IP
	messages    int
	wg          sync.WaitGroup
}

func newFakeSMTP(t *testing.T, configure func(*fakeSMTP)) *fakeSMTP {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSMTP{ln: ln, greeting: "220 fake ESMTP", final: "250 2.0.0 queued"}
	if configure != nil {
		configure(f)
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				f.serve(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); f.wg.Wait() })
	return f
}

func (f *fakeSMTP) addr() string { return f.ln.Addr().String() }

// recorder tees what the client sends into the connection's transcript.
type teeReader struct {
	r   io.Reader
	f   *fakeSMTP
	idx int
}

func (t *teeReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	t.f.mu.Lock()
	t.f.transcripts[t.idx] = append(t.f.transcripts[t.idx], p[:n]...)
	t.f.mu.Unlock()
	return n, err
}

func (f *fakeSMTP) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	f.mu.Lock()
	idx := len(f.transcripts)
	f.transcripts = append(f.transcripts, nil)
	if f.clients == nil {
		f.clients = map[string]int{}
	}
	if host, _, err := net.SplitHostPort(c.RemoteAddr().String()); err == nil {
		f.clients[host]++
	}
	f.mu.Unlock()
	r := bufio.NewReader(&teeReader{r: c, f: f, idx: idx})
	w := bufio.NewWriter(c)
	reply := func(s string) {
		w.WriteString(s + "\r\n")
		// RFC 2920: answer a pipelined group when its input is used up.
		if r.Buffered() == 0 {
			w.Flush()
		}
	}
	reply(f.greeting)
	if !strings.HasPrefix(f.greeting, "2") {
		return
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.ToUpper(strings.TrimSpace(line))
		switch {
		case strings.HasPrefix(cmd, "EHLO"):
			lines := append([]string{"fake"}, f.caps...)
			for i, l := range lines {
				sep := "-"
				if i == len(lines)-1 {
					sep = " "
				}
				w.WriteString("250" + sep + l + "\r\n")
			}
			w.Flush()
		case strings.HasPrefix(cmd, "MAIL"), strings.HasPrefix(cmd, "RCPT"):
			reply("250 2.1.0 ok")
		case cmd == "DATA":
			reply("354 go ahead")
			var body bytes.Buffer
			for !bytes.HasSuffix(body.Bytes(), []byte("\r\n.\r\n")) {
				b, err := r.ReadByte()
				if err != nil {
					return
				}
				body.WriteByte(b)
			}
			f.count()
			reply(f.final)
		case strings.HasPrefix(cmd, "BDAT"):
			fields := strings.Fields(cmd)
			n, _ := strconv.Atoi(fields[1])
			if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
				return
			}
			f.count()
			reply(f.final)
		case cmd == "QUIT":
			w.WriteString("221 2.0.0 bye\r\n")
			w.Flush()
			return
		default:
			reply("500 5.5.1 what")
		}
	}
}

func (f *fakeSMTP) count() {
	f.mu.Lock()
	f.messages++
	f.mu.Unlock()
}

func (f *fakeSMTP) transcript(i int) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if i >= len(f.transcripts) {
		return ""
	}
	return string(f.transcripts[i])
}

func runClient(t *testing.T, cfg LoadConfig) *LoadResult {
	t.Helper()
	if cfg.Warmup == 0 {
		cfg.Warmup = time.Millisecond
	}
	if cfg.Ramp == 0 {
		cfg.Ramp = time.Millisecond
	}
	if cfg.Drain == 0 {
		cfg.Drain = 3 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

const (
	wantEHLO = "EHLO bench.lsmtp.test\r\n"
	wantMAIL = "MAIL FROM:<bench@lsmtp.test>\r\n"
	wantRCPT = "RCPT TO:<rcpt1@lsmtp.test>\r\n"
	wantDATA = "DATA\r\n"
	wantQUIT = "QUIT\r\n"
)

// The paper's mode: one message per connection, every command on its own.
func TestClientPlainDialogue(t *testing.T) {
	f := newFakeSMTP(t, nil)
	res := runClient(t, LoadConfig{Targets: []string{f.addr()}, Sessions: 1, Count: 2})
	msg := string(Message(2048))
	want := wantEHLO + wantMAIL + wantRCPT + wantDATA + msg + ".\r\n" + wantQUIT
	if got := f.transcript(0); got != want {
		t.Fatalf("first connection sent\n%q\nwant\n%q", got, want)
	}
	if res.OK < 2 || res.Conns < 2 {
		t.Errorf("ok=%d over %d connections, want at least 2 over 2", res.OK, res.Conns)
	}
	if res.Errors+res.Tempfail+res.Permfail != 0 {
		t.Errorf("errors=%d tempfail=%d permfail=%d, want none (%v)", res.Errors, res.Tempfail, res.Permfail, res.ErrKinds)
	}
}

func TestMessageSize(t *testing.T) {
	for _, size := range []int{200, 2048, 2049, 100000} {
		m := Message(size)
		if len(m) != size {
			t.Errorf("Message(%d) is %d octets", size, len(m))
		}
		if !bytes.HasSuffix(m, []byte("\r\n")) || bytes.Contains(m, []byte("\n.")) {
			t.Errorf("Message(%d) must end in CRLF and have no line starting with a dot", size)
		}
	}
}

// With k messages per connection and pipelining, each body carries the
// next MAIL, RCPT and DATA, and the last one QUIT (RFC 2920 §3.1).
func TestClientPipelinedPerConnection(t *testing.T) {
	f := newFakeSMTP(t, func(f *fakeSMTP) { f.caps = []string{"PIPELINING", "8BITMIME"} })
	res := runClient(t, LoadConfig{Targets: []string{f.addr()}, Sessions: 1, PerConn: 3, Pipelining: true, Count: 3})
	body := string(Message(2048)) + ".\r\n"
	group := wantMAIL + wantRCPT + wantDATA
	want := wantEHLO + group + body + group + body + group + body + wantQUIT
	if got := f.transcript(0); got != want {
		t.Fatalf("first connection sent\n%q\nwant\n%q", got, want)
	}
	if res.OK < 3 {
		t.Errorf("ok=%d, want at least 3", res.OK)
	}
}

// BDAT LAST carries the message without dot-stuffing or final dot.
func TestClientChunkingDialogue(t *testing.T) {
	f := newFakeSMTP(t, func(f *fakeSMTP) { f.caps = []string{"PIPELINING", "CHUNKING"} })
	runClient(t, LoadConfig{Targets: []string{f.addr()}, Sessions: 1, Pipelining: true, Chunking: true, Count: 1})
	msg := string(Message(2048))
	want := wantEHLO + wantMAIL + wantRCPT + "BDAT 2048 LAST\r\n" + msg + wantQUIT
	if got := f.transcript(0); got != want {
		t.Fatalf("first connection sent\n%q\nwant\n%q", got, want)
	}
}

// A server that does not offer PIPELINING gets one command at a time.
func TestClientFallsBackWithoutPipelining(t *testing.T) {
	f := newFakeSMTP(t, nil)
	res := runClient(t, LoadConfig{Targets: []string{f.addr()}, Sessions: 1, Pipelining: true, Chunking: true, Count: 1})
	if res.NoPipe == 0 || res.NoChunk == 0 {
		t.Errorf("NoPipe=%d NoChunk=%d, want both counted", res.NoPipe, res.NoChunk)
	}
	if res.OK < 1 {
		t.Errorf("ok=%d, want at least 1", res.OK)
	}
}

// Only a final 2xx counts: a 451 after the body is a tempfail, after which
// the session leaves (even with messages left for the connection) and
// comes back after a pause.
func TestClientTempfailIsNotSuccess(t *testing.T) {
	f := newFakeSMTP(t, func(f *fakeSMTP) { f.final = "451 4.3.0 try later" })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := Run(ctx, LoadConfig{Targets: []string{f.addr()}, Sessions: 2, PerConn: 10, Duration: 200 * time.Millisecond, Warmup: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.OK != 0 || res.WindowOK != 0 || res.Latency.N != 0 {
		t.Errorf("ok=%d window=%d samples=%d, want no successes", res.OK, res.WindowOK, res.Latency.N)
	}
	if res.Tempfail == 0 {
		t.Error("no tempfail counted")
	}
	if res.Tempfail > res.Conns {
		t.Errorf("%d tempfails over %d connections, want at most one per connection", res.Tempfail, res.Conns)
	}
	// 2 sessions, a retry delay of 100 ms, about 200 ms of run.
	if res.Conns > 10 {
		t.Errorf("%d connections: the sessions did not pause after the 4xx", res.Conns)
	}
}

// A refused greeting is an error, and the session tries again later.
func TestClientGreetingRefused(t *testing.T) {
	f := newFakeSMTP(t, func(f *fakeSMTP) { f.greeting = "421 4.7.0 too many connections" })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := Run(ctx, LoadConfig{Targets: []string{f.addr()}, Sessions: 1, Duration: 350 * time.Millisecond, Warmup: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.OK != 0 {
		t.Errorf("ok=%d, want 0", res.OK)
	}
	if res.Errors < 2 || res.Conns < 2 {
		t.Errorf("errors=%d over %d connections, want retries after the 421 (%v)", res.Errors, res.Conns, res.ErrKinds)
	}
}

// The dialogues' round trips: every client flight but the last waits for
// the server, after the connect and the greeting; latency is at least
// that many round trips, counted from the connect. (No upper bound on
// time: a busy machine only adds to it.)
func TestClientRoundTrips(t *testing.T) {
	const rtt = 50 * time.Millisecond
	f := newFakeSMTP(t, func(f *fakeSMTP) { f.caps = []string{"PIPELINING", "CHUNKING"} })
	for _, tt := range []struct {
		name    string
		cfg     LoadConfig
		flights int64   // per connection
		minRTT  float64 // to the final 2xx
	}{
		{"plain", LoadConfig{}, 6, 7},                                    // EHLO MAIL RCPT DATA body QUIT
		{"pipelining", LoadConfig{Pipelining: true}, 3, 5},               // EHLO, MAIL+RCPT+DATA, body+QUIT
		{"chunking", LoadConfig{Pipelining: true, Chunking: true}, 2, 4}, // EHLO, MAIL+RCPT+BDAT+QUIT
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.Targets, cfg.Sessions, cfg.RTT, cfg.Count = []string{f.addr()}, 1, rtt, 1
			res := runClient(t, cfg)
			// The session may have begun another connection before the
			// run stopped; it finishes it.
			if res.Conns < 1 || res.Flights != tt.flights*res.Conns || res.Errors != 0 {
				t.Errorf("%d flights over %d connections (errors %d), want %d per connection", res.Flights, res.Conns, res.Errors, tt.flights)
			}
			if want := float64(2 + tt.flights); res.RoundTrips != want {
				t.Errorf("RoundTrips = %v, want %v (connect, greeting, flights)", res.RoundTrips, want)
			}
			if res.Latency.N == 0 {
				t.Fatal("no latency samples")
			}
			if lo := time.Duration(tt.minRTT * float64(rtt)); res.Latency.P50 < lo {
				t.Errorf("latency p50 %v, want at least %v", res.Latency.P50, lo)
			}
		})
	}
}

// Past PerSource sessions per client address, sessions bind to
// 127.0.0.2, 127.0.0.3, ...: each address has its own ephemeral ports
// towards the server.
func TestClientSpreadsSourceAddresses(t *testing.T) {
	f := newFakeSMTP(t, nil)
	runClient(t, LoadConfig{Targets: []string{f.addr()}, Sessions: 5, PerSource: 2, Count: 5})
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ip := range []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"} {
		if f.clients[ip] == 0 {
			t.Errorf("no connection from %s; clients %v", ip, f.clients)
		}
	}
	if len(f.clients) != 3 {
		t.Errorf("clients %v, want 127.0.0.1, .2 and .3 only", f.clients)
	}
}

func TestLoopbackSources(t *testing.T) {
	got := loopbackSources(30000, 16000)
	// The kernel's choice, then 127.0.0.2, plus a spare.
	if len(got) != 3 || got[0].IsValid() || got[1].String() != "127.0.0.2" || got[2].String() != "127.0.0.3" {
		t.Errorf("loopbackSources(30000, 16000) = %v", got)
	}
	many := loopbackSources(255, 1)
	if last := many[len(many)-1].String(); len(many) != 256 || last != "127.0.1.0" {
		t.Errorf("source %d is %s, want 127.0.1.0 (addresses carry into the third octet)", len(many)-1, last)
	}
}

func TestRunCommand(t *testing.T) {
	got := RunCommand(LoadConfig{Targets: []string{"127.0.0.1:2526", "127.0.0.1:2527"}, Sessions: 30000, RTT: PaperRTT,
		PerConn: 10, Pipelining: true, Chunking: true, Duration: 10 * time.Second})
	want := "lsmtp-bench run -target 127.0.0.1:2526,127.0.0.1:2527 -sessions 30000 -rtt 315ms -per-conn 10 -chunking -duration 10s"
	if got != want {
		t.Errorf("RunCommand = %q, want %q", got, want)
	}
}
