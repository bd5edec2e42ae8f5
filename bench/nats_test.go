package bench

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/lsmtp/lsmtp/internal/natstest"
)

// TestNATSCeilingPublish: every publish the ceiling counts as
// acknowledged is in the stream, with its own Nats-Msg-Id (no
// duplicate dropped), the given header and body.
func TestNATSCeilingPublish(t *testing.T) {
	test := natstest.Unique(t)
	stream, subject := test.Stream, test.Subject+".ceiling"
	natstest.CreateStream(t, stream, 0, subject)
	nc, err := nats.Connect(natstest.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	body := []byte("Received: from x\r\n\r\nbody\r\n")
	res, err := NATSCeilingPublish(ctx, js, subject, body, nats.Header{"smtp-sender": {"a@example.org"}}, 8, 300*time.Millisecond)
	if err != nil || res.Acked == 0 || res.Failed != 0 {
		t.Fatalf("got %+v, %v; want acknowledged publishes and no failure", res, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if int64(info.State.Msgs) != res.Acked {
		t.Errorf("stream holds %d messages, the ceiling counted %d acknowledged", info.State.Msgs, res.Acked)
	}
	m, err := st.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Data) != string(body) || m.Header.Get("smtp-sender") != "a@example.org" || !strings.HasPrefix(m.Header.Get(jetstream.MsgIDHeader), "ceiling-") {
		t.Errorf("last message: header %v, body %q", m.Header, m.Data)
	}
	if res.Rate() <= 0 {
		t.Errorf("rate %v", res.Rate())
	}
}

func TestNATSReportMarkdown(t *testing.T) {
	rep := &NATSReport{
		Config: NATSConfig{Pairs: 2, Sessions: 1000, PerConn: 100, Window: 10 * time.Second, Pending: 512},
		Runs: map[string][]NATSRun{
			NATSCeiling: {{Rate: 20000, Messages: 200000, BrokerCPUms: 0.02, BrokerSys: 1.5, ClientCPUms: 0.01, BusyCores: 1.9}, {Rate: 22000, Messages: 220000, BrokerCPUms: 0.02, BrokerSys: 1.5, ClientCPUms: 0.01, BusyCores: 1.9}},
			NATSLsmtp:   {{Rate: 18000, Messages: 180000, LsmtpCPUms: 0.03, BrokerCPUms: 0.02, BrokerSys: -1, ClientCPUms: 0.02, BusyCores: 1.95}, {Rate: 17600, Messages: 176000, LsmtpCPUms: 0.03, BrokerCPUms: 0.02, BrokerSys: -1, ClientCPUms: 0.02, BusyCores: 1.95}},
			NATSAMQP:    {{Rate: 9000, Messages: 90000, LsmtpCPUms: 0.05, BrokerCPUms: 0.08, BrokerSys: -1, ClientCPUms: 0.02, BusyCores: 1.95}, {Rate: 9000, Messages: 90000, LsmtpCPUms: 0.05, BrokerCPUms: 0.08, BrokerSys: -1, ClientCPUms: 0.02, Check: "1 4xx", BusyCores: 1.95}},
		},
		BodySize: 2400, Headers: []string{"Nats-Msg-Id"},
	}
	md := rep.Markdown()
	for _, want := range []string{
		"## lsmtp → NATS JetStream\n",
		"| raw nats.go async publish (ceiling) | nats-server | 21,000 (20,000–22,000) | – | – | 0.020 | 1.50 | 0.010 | 1.90 |\n",
		// 17,800 ÷ 21,000; the pairs: 18,000 ÷ 20,000 and 17,600 ÷ 22,000.
		"| lsmtp `--sink nats` | nats-server | 17,800 (17,600–18,000) | **0.85** (0.80–0.90) | 0.030 | 0.020 | – | 0.020 | 1.95 |\n",
		"| lsmtp `--sink amqp` (see notes) | RabbitMQ | 9,000 | **0.43** (0.41–0.45) | 0.050 | 0.080 | – | 0.020 | 1.95 |\n",
		"the ceiling 30 µs (nats-server and publisher); lsmtp → JetStream 70 µs (lsmtp, nats-server and the load generator). " +
			"Where the cores are the limit (see *busy*), that alone caps lsmtp at 0.43 of the ceiling.\n",
		"Target: lsmtp → JetStream ≥ 0.85 of the ceiling: **missed** (0.848).\n", // 0.8476: missed, though 0.85 when rounded
		"headers `Nats-Msg-Id`",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}
