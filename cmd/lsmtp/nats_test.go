package main

import (
	"io"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/metrics/metricstest"
	"github.com/lsmtp/lsmtp/internal/natstest"
)

// TestMetricsAndReadinessAgainstNATS: with --sink nats, /readyz follows
// the NATS connection and the broker metrics count what JetStream
// acknowledged, as they do for RabbitMQ.
func TestMetricsAndReadinessAgainstNATS(t *testing.T) {
	proxy := natstest.Proxy(t)
	names := natstest.Unique(t)
	n, _, _ := startNode(t, []string{
		"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--event-loops", "1",
		"--sink", "nats", "--nats-url", natstest.ProxyURL(proxy),
		"--nats-stream", names.Stream, "--nats-subject", names.Subject + ".in",
		"--amqp-reconnect-min", "20ms", "--amqp-reconnect-max", "200ms",
	})
	admin := "http://" + n.adminAddr.String()
	waitFor(t, "/readyz 200 once connected", 10*time.Second, func() bool { return readyz(admin) == 200 })
	before := metricstest.Scrape(t, admin+"/metrics")
	const count = 3
	sendNumbered(t, smtpAddr(n), count, "PubAck")
	after := metricstest.Scrape(t, admin+"/metrics")
	for _, ch := range []struct {
		what      string
		got, want float64
	}{
		{"accepted messages", after.Value("lsmtp_messages_total", "result", "accepted", "reason", "accepted") -
			before.Value("lsmtp_messages_total", "result", "accepted", "reason", "accepted"), count},
		{"broker confirmed", after.Value("lsmtp_broker_confirmed_total") - before.Value("lsmtp_broker_confirmed_total"), count},
		{"broker connected", after.Value("lsmtp_broker_connected"), 1},
		{"duplicates", after.Value("lsmtp_broker_duplicates_total"), 0},
	} {
		if ch.got != ch.want {
			t.Errorf("%s: %v, want %v", ch.what, ch.got, ch.want)
		}
	}
	if got := natstest.Count(t, names.Stream); got != count {
		t.Errorf("%d messages in the stream, want %d", got, count)
	}
	proxy.Down()
	waitFor(t, "/readyz 503 with NATS gone", 10*time.Second, func() bool { return readyz(admin) == 503 })
	if err := proxy.Up(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "/readyz 200 with NATS back", 10*time.Second, func() bool { return readyz(admin) == 200 })
	if v := metricstest.Scrape(t, admin+"/metrics").Value("lsmtp_broker_reconnects_total"); v < 1 {
		t.Errorf("lsmtp_broker_reconnects_total = %v, want >= 1", v)
	}
}

// TestNATSOptions: the nats-* options reach the broker's Config, and its
// problems are named after them.
func TestNATSOptions(t *testing.T) {
	c, err := loadConfig([]string{"--sink", "nats", "--nats-url", "nats://a:4222", "--nats-url", "nats://b:4222",
		"--nats-stream", "S", "--nats-subject", "x.{domain}", "--nats-max-bytes", "1G", "--nats-replicas", "3",
		"--nats-max-pending", "512", "--nats-workers", "1", "--nats-declare=false"}, noEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	b := c.o.brk
	if len(b.NATSURLs) != 2 || b.NATSStream != "S" || b.NATSSubject != "x.{domain}" || b.NATSMaxBytes != 1<<30 ||
		b.NATSReplicas != 3 || b.NATSMaxPending != 512 || b.NATSWorkers != 1 || b.NATSDeclare || c.o.sink != "nats" {
		t.Errorf("config: %+v", b)
	}
	_, err = loadConfig([]string{"--sink", "nats", "--nats-subject", "a.{domain}.b", "--nats-token", "t", "--nats-user", "u"}, noEnv, io.Discard)
	p, _ := err.(problems)
	want := []string{
		`--nats-user: give one kind of NATS credentials: nats-user and nats-password, nats-token or nats-creds`,
		`--nats-subject: "a.{domain}.b": {domain} must be the last token, once (as in lsmtp.inbound.{domain})`,
	}
	if len(p) != len(want) {
		t.Fatalf("problems %q, want %q", p, want)
	}
	for i := range want {
		if p[i] != want[i] {
			t.Errorf("problem %d = %q, want %q", i, p[i], want[i])
		}
	}
}
