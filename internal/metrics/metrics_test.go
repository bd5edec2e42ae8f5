package metrics_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http/httptest"
	"net/smtp"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/lsmtp/lsmtp/broker"
	"github.com/lsmtp/lsmtp/engine"
	"github.com/lsmtp/lsmtp/internal/hist"
	"github.com/lsmtp/lsmtp/internal/metrics"
	"github.com/lsmtp/lsmtp/internal/metrics/metricstest"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// countingConn counts the octets a client writes.
type countingConn struct {
	net.Conn
	written *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

func dial(t *testing.T, addr string, written *atomic.Int64) *smtp.Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	c, err := smtp.NewClient(countingConn{conn, written}, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func send(c *smtp.Client, body string) error {
	if err := c.Mail("sender@example.com"); err != nil {
		return err
	}
	if err := c.Rcpt("rcpt@example.org"); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, body); err != nil {
		return err
	}
	return w.Close()
}

func replyCode(err error) int {
	var te *textproto.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

func startEngine(t *testing.T, cfg engine.Config) *engine.Server {
	t.Helper()
	cfg.Listen = []string{"127.0.0.1:0"}
	cfg.Sink = &sink.Null{}
	cfg.EventLoops = 1
	srv, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	if len(srv.Addrs()) == 0 {
		t.Fatalf("serve: %v", <-done)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	})
	return srv
}

// TestScrapeCountsWhatHappenedOnTheWire runs a real server, scrapes it,
// sends mail over SMTP and checks that each counter moved by exactly what
// was sent.
func TestScrapeCountsWhatHappenedOnTheWire(t *testing.T) {
	srv := startEngine(t, engine.Config{MaxMessageSize: 1024, MaxConnsPerIP: 1})
	reg := metrics.NewRegistry(metrics.NewCollector(metrics.Sources{Engine: srv.Stats(), Config: srv.Config}))
	hs := httptest.NewServer(metrics.Handler(reg))
	defer hs.Close()
	url := hs.URL + "/metrics"
	addr := srv.Addrs()[0].String()

	before := metricstest.Scrape(t, url)
	var written atomic.Int64
	c := dial(t, addr, &written)
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}

	// A second connection from the same IP is refused (max-conns-per-ip 1).
	if extra, err := net.Dial("tcp", addr); err == nil {
		buf := make([]byte, 512)
		extra.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _ := extra.Read(buf)
		extra.Close()
		if !bytes.HasPrefix(buf[:n], []byte("421 4.7.0")) {
			t.Fatalf("second connection got %q, want 421 4.7.0", buf[:n])
		}
	}

	const n = 7
	body := "Subject: metrics\r\n\r\nhello\r\n"
	for i := range n {
		if err := send(c, body); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	if err := send(c, strings.Repeat("x", 2000)+"\r\n"); replyCode(err) != 552 {
		t.Fatalf("oversized message: %v, want 552", err)
	}
	if err := c.Text.PrintfLine("FROB"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Text.ReadResponse(250); replyCode(err) != 500 {
		t.Fatalf("FROB: %v, want 500", err)
	}
	open := metricstest.Scrape(t, url)
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	var after metricstest.Samples
	for deadline := time.Now().Add(5 * time.Second); ; {
		after = metricstest.Scrape(t, url)
		if after.Value("lsmtp_connections_open") == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}

	delta := func(name string, labels ...string) float64 {
		return after.Value(name, labels...) - before.Value(name, labels...)
	}
	// msgSize: the body as the engine counts it, after dot-unstuffing.
	bodySize := float64(len(body))
	checks := []struct {
		what string
		got  float64
		want float64
	}{
		{"accepted connections", delta("lsmtp_connections_accepted_total"), 1},
		{"refused per IP", delta("lsmtp_connections_refused_total", "reason", "per_ip"), 1},
		{"refused max_conns", delta("lsmtp_connections_refused_total", "reason", "max_conns"), 0},
		{"open while connected", open.Value("lsmtp_connections_open"), 1},
		{"open after QUIT", after.Value("lsmtp_connections_open"), 0},
		{"EHLO 2xx", delta("lsmtp_commands_total", "verb", "EHLO", "class", "2xx"), 1},
		{"MAIL 2xx", delta("lsmtp_commands_total", "verb", "MAIL", "class", "2xx"), n + 1},
		{"RCPT 2xx", delta("lsmtp_commands_total", "verb", "RCPT", "class", "2xx"), n + 1},
		{"DATA 3xx", delta("lsmtp_commands_total", "verb", "DATA", "class", "3xx"), n + 1},
		{"unknown 5xx", delta("lsmtp_commands_total", "verb", "UNKNOWN", "class", "5xx"), 1},
		{"QUIT 2xx", delta("lsmtp_commands_total", "verb", "QUIT", "class", "2xx"), 1},
		{"accepted", delta("lsmtp_messages_total", "result", "accepted", "reason", "accepted"), n},
		{"too big", delta("lsmtp_messages_total", "result", "reject", "reason", "too_big"), 1},
		{"sink failed", delta("lsmtp_messages_total", "result", "tempfail", "reason", "sink_failed"), 0},
		{"size count", delta("lsmtp_message_size_bytes_count"), n},
		{"size sum", delta("lsmtp_message_size_bytes_sum"), n * bodySize},
		{"size <= 1024", delta("lsmtp_message_size_bytes_bucket", "le", "1024"), n},
		{"bytes received", delta("lsmtp_received_bytes_total"), float64(written.Load())},
		{"in flight after", after.Value("lsmtp_in_flight_bytes"), 0},
		{"in-flight limit", after.Value("lsmtp_in_flight_bytes_limit"), float64(engine.Defaults.MaxInFlightBytes)},
		{"session buffers after", after.Value("lsmtp_session_buffer_bytes"), 0},
		{"session buffer limit", after.Value("lsmtp_session_buffer_bytes_limit"), float64(engine.Defaults.MaxSessionBuffers)},
		{"session buffer closes", delta("lsmtp_session_buffer_closes_total"), 0},
		{"build info", after.Value("lsmtp_build_info", "version", "(devel)", "go_version", runtimeVersion(after)), 1},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.what, c.got, c.want)
		}
	}
	if _, ok := after.Get("process_open_fds"); !ok {
		t.Error("no process metrics")
	}
	if _, ok := after.Get("lsmtp_broker_connected"); ok {
		t.Error("broker metrics without a broker")
	}
}

// runtimeVersion finds the go_version label of lsmtp_build_info.
func runtimeVersion(s metricstest.Samples) string {
	for k := range s {
		if i := strings.Index(k, `go_version="`); strings.HasPrefix(k, "lsmtp_build_info{") && i >= 0 {
			rest := k[i+len(`go_version="`):]
			return rest[:strings.IndexByte(rest, '"')]
		}
	}
	return ""
}

// fixedBroker is a broker.Stats value for checking the mapping of every
// field to its series; the live broker is covered by cmd/lsmtp's test
// against RabbitMQ.
type fixedBroker struct{ st broker.Stats }

func (f fixedBroker) Stats() broker.Stats { return f.st }

func TestSpoolSeries(t *testing.T) {
	st := broker.Stats{
		Spool: true, SpoolTaking: true, SpoolMessages: 40, SpoolBytes: 4000, SpoolDiskBytes: 5000,
		SpoolOldestAge: 90 * time.Second, SpoolOverAge: true,
		Spooled: 50, Replayed: 10, SpoolFailed: 3, SpoolCorrupt: 2, SpoolRejected: 1, SpoolFsyncs: 7,
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewCollector(metrics.Sources{Broker: fixedBroker{st}}))
	s := gather(t, reg)
	want := map[string]float64{
		`lsmtp_spool_messages`:              40,
		`lsmtp_spool_bytes`:                 4000,
		`lsmtp_spool_disk_bytes`:            5000,
		`lsmtp_spool_oldest_age_seconds`:    90,
		`lsmtp_spool_over_max_age`:          1,
		`lsmtp_spool_taking`:                1,
		`lsmtp_spooled_total`:               50,
		`lsmtp_spool_replayed_total`:        10,
		`lsmtp_spool_failed_total`:          3,
		`lsmtp_spool_corrupt_records_total`: 2,
		`lsmtp_spool_rejected_total`:        1,
		`lsmtp_spool_fsyncs_total`:          7,
	}
	for k, v := range want {
		if got, ok := s[k]; !ok || got != v {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	// Without a spool, no spool series.
	reg = prometheus.NewRegistry()
	reg.MustRegister(metrics.NewCollector(metrics.Sources{Broker: fixedBroker{broker.Stats{}}}))
	if _, ok := gather(t, reg)[`lsmtp_spool_messages`]; ok {
		t.Error("spool series without a spool")
	}
}

func TestBrokerSeries(t *testing.T) {
	st := broker.Stats{
		Submitted: 100, Confirmed: 90, Failed: 7,
		Nacked: 1, Returned: 2, TimedOut: 3, Lost: 4, PublishErrors: 5, Expired: 6, NoChannel: 7,
		RejectedBusy: 11, RejectedDown: 12, RejectedBlocked: 13, RejectedShutdown: 14,
		Connects: 3, ConnectFailures: 21, Disconnects: 2, ChannelFailures: 22,
		Ready: true, Blocked: false, RingLen: 5, InFlight: 8,
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewCollector(metrics.Sources{Broker: fixedBroker{st}}))
	s := gather(t, reg)
	want := map[string]float64{
		`lsmtp_broker_submitted_total`:                                100,
		`lsmtp_broker_confirmed_total`:                                90,
		`lsmtp_broker_failed_total`:                                   7,
		`lsmtp_broker_publish_failures_total{reason="nack"}`:          1,
		`lsmtp_broker_publish_failures_total{reason="returned"}`:      2,
		`lsmtp_broker_publish_failures_total{reason="timeout"}`:       3,
		`lsmtp_broker_publish_failures_total{reason="lost"}`:          4,
		`lsmtp_broker_publish_failures_total{reason="publish_error"}`: 5,
		`lsmtp_broker_publish_failures_total{reason="expired"}`:       6,
		`lsmtp_broker_publish_failures_total{reason="no_channel"}`:    7,
		`lsmtp_broker_rejected_total{reason="busy"}`:                  11,
		`lsmtp_broker_rejected_total{reason="down"}`:                  12,
		`lsmtp_broker_rejected_total{reason="blocked"}`:               13,
		`lsmtp_broker_rejected_total{reason="shutdown"}`:              14,
		`lsmtp_broker_connects_total`:                                 3,
		`lsmtp_broker_reconnects_total`:                               2,
		`lsmtp_broker_connect_failures_total`:                         21,
		`lsmtp_broker_disconnects_total`:                              2,
		`lsmtp_broker_channel_failures_total`:                         22,
		`lsmtp_broker_connected`:                                      1,
		`lsmtp_broker_blocked`:                                        0,
		`lsmtp_broker_ring_depth`:                                     5,
		`lsmtp_broker_pending_messages`:                               8,
		`lsmtp_broker_awaiting_confirm_messages`:                      3,
	}
	for k, v := range want {
		if got, ok := s[k]; !ok || got != v {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	// Before the first connection there is no reconnect; a ring read
	// after pending never shows a negative backlog.
	reg = prometheus.NewRegistry()
	reg.MustRegister(metrics.NewCollector(metrics.Sources{Broker: fixedBroker{broker.Stats{RingLen: 3, InFlight: 2}}}))
	s = gather(t, reg)
	if s["lsmtp_broker_reconnects_total"] != 0 || s["lsmtp_broker_awaiting_confirm_messages"] != 0 {
		t.Errorf("reconnects %v, awaiting %v; want 0 and 0", s["lsmtp_broker_reconnects_total"], s["lsmtp_broker_awaiting_confirm_messages"])
	}
}

// latencyBroker also measures confirm latency, as metrics-needs asks of
// the broker package.
type latencyBroker struct {
	fixedBroker
	h *hist.Histogram
}

func (l latencyBroker) ConfirmLatency() *hist.Histogram { return l.h }

func TestConfirmLatencyExportedWhenTheBrokerMeasuresIt(t *testing.T) {
	h := hist.New(0.001, 0.01, 0.1)
	for _, v := range []float64{0.0005, 0.005, 0.005, 0.05, 2} {
		h.Observe(v)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewCollector(metrics.Sources{Broker: latencyBroker{h: h}}))
	s := gather(t, reg)
	want := map[string]float64{
		`lsmtp_broker_confirm_latency_seconds_bucket{le="0.001"}`: 1,
		`lsmtp_broker_confirm_latency_seconds_bucket{le="0.01"}`:  3,
		`lsmtp_broker_confirm_latency_seconds_bucket{le="0.1"}`:   4,
		`lsmtp_broker_confirm_latency_seconds_bucket{le="+Inf"}`:  5,
		`lsmtp_broker_confirm_latency_seconds_count`:              5,
		`lsmtp_broker_confirm_latency_seconds_sum`:                2.0605,
	}
	for k, v := range want {
		if got := s[k]; got != v {
			t.Errorf("%s = %v, want %v", k, got, v)
		}
	}
	reg = prometheus.NewRegistry()
	reg.MustRegister(metrics.NewCollector(metrics.Sources{Broker: fixedBroker{}}))
	if _, ok := gather(t, reg)["lsmtp_broker_confirm_latency_seconds_count"]; ok {
		t.Error("a latency histogram from a broker that does not measure it")
	}
}

func gather(t testing.TB, reg *prometheus.Registry) metricstest.Samples {
	t.Helper()
	var buf bytes.Buffer
	if err := encode(&buf, reg); err != nil {
		t.Fatal(err)
	}
	s, err := metricstest.Parse(&buf)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func encode(w io.Writer, reg *prometheus.Registry) error {
	fams, err := reg.Gather()
	if err != nil {
		return err
	}
	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, f := range fams {
		if err := enc.Encode(f); err != nil {
			return err
		}
	}
	return nil
}

// BenchmarkScrape is the cost of one scrape of lsmtp's own metrics (the
// collector plus text encoding), with every command counter non-zero and
// a broker; the Go and process collectors are left out.
func BenchmarkScrape(b *testing.B) {
	st := loadedStats(b)
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewCollector(metrics.Sources{
		Engine: st.Stats(), Config: st.Config,
		Broker: fixedBroker{broker.Stats{Submitted: 1e6, Confirmed: 1e6, Connects: 1, Ready: true}},
	}))
	b.ReportAllocs()
	for b.Loop() {
		if err := encode(io.Discard, reg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkScrapeHTTP is a whole /metrics request as Prometheus makes
// it, Go runtime and process metrics included.
func BenchmarkScrapeHTTP(b *testing.B) {
	st := loadedStats(b)
	reg := metrics.NewRegistry(metrics.NewCollector(metrics.Sources{Engine: st.Stats(), Config: st.Config}))
	h := metrics.Handler(reg)
	req := httptest.NewRequest("GET", "/metrics", nil)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatal(w.Code)
		}
	}
}

// loadedStats is a server (not serving) whose counters look like a busy
// node's: every verb in every class.
func loadedStats(b *testing.B) *engine.Server {
	srv, err := engine.New(engine.Config{Sink: &sink.Null{}})
	if err != nil {
		b.Fatal(err)
	}
	st := srv.Stats()
	for v := range st.Commands {
		for c := range st.Commands[v] {
			st.Commands[v][c].Add(int64(1000 * (v + c + 1)))
		}
	}
	for i := range 1000 {
		st.MessageSize.Observe(float64(i * 1000))
	}
	return srv
}
