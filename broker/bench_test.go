package broker

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/valyala/bytebufferpool"

	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// benchSize is the message size of the publish benchmarks.
const benchSize = 2048

// benchConfig is the default configuration (quorum queue, 2 workers,
// window 256, the envelope as trace fields) on the benchmark's own
// exchange and queue.
func benchConfig(b *testing.B) Config {
	cfg := testConfig(b, rabbittest.URL)
	cfg.Envelope = DefaultConfig().Envelope
	cfg.Logger = slog.New(slog.DiscardHandler) // keeps the benchmark output parsable
	return cfg
}

// purge empties the queue between rounds so that RabbitMQ's memory stays flat.
func purge(b *testing.B, queue string) {
	if _, err := rabbittest.AdminChannel(b).QueuePurge(queue, false); err != nil {
		b.Fatalf("purge %s: %v", queue, err)
	}
}

// BenchmarkPublishCeiling is what a plain amqp091-go publisher gets from
// RabbitMQ with the broker's settings: 2 KB persistent messages, 2
// channels in confirm mode with 256 unconfirmed each, mandatory, one
// topic exchange and a quorum queue. BenchmarkBrokerSink is measured
// against it.
func BenchmarkPublishCeiling(b *testing.B) {
	cfg := benchConfig(b)
	conn, err := amqp.Dial(rabbittest.URL)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	if err := declare(conn, &cfg, slog.Default()); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	res, err := runCeiling(context.Background(), conn, &cfg, cfg.Exchange, cfg.RoutingKey, benchSize, b.N, time.Hour)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	if res.confirmed != int64(b.N) {
		b.Fatalf("%d of %d confirmed", res.confirmed, b.N)
	}
	b.ReportMetric(res.rate(), "msgs/s")
	purge(b, cfg.Queue)
}

// benchCompletion hands a completed message back to the producer.
type benchCompletion struct {
	free   chan *sink.Message
	failed *atomic.Int64
}

func (c benchCompletion) Complete(m *sink.Message, err error) {
	if err != nil {
		c.failed.Add(1)
	}
	c.free <- m
}

// BenchmarkBrokerSink pushes b.N messages of 2 KB through Submit, as the
// engine does (one bytebufferpool buffer per message, reused Message
// structs), and waits for every confirm. allocs/op is per message,
// amqp091-go's included.
//
// cpu-µs/msg is this process's CPU (user and system, getrusage) per
// message: the sink's own cost, RabbitMQ's not included. The cork=off
// variant writes every publish as amqp091-go flushes it (cork.go).
func BenchmarkBrokerSink(b *testing.B) {
	for _, env := range []string{EnvelopeTrace, EnvelopeHeaders} {
		b.Run(env, func(b *testing.B) { benchmarkBrokerSink(b, env) })
	}
	b.Run("trace-cork=off", func(b *testing.B) {
		corking = false
		defer func() { corking = true }()
		benchmarkBrokerSink(b, EnvelopeTrace)
	})
}

// writeCalls is this process's write system calls so far (syscw of
// /proc/self/io); 0 where there is none.
func writeCalls(b *testing.B) int64 {
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "syscw: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

func benchmarkBrokerSink(b *testing.B, env string) {
	cfg := benchConfig(b)
	cfg.Envelope = env
	benchmarkSink(b, cfg, false)
	purge(b, cfg.Queue)
}

// benchmarkSink pushes b.N messages through a broker of cfg; uniqueIDs
// gives each its own queue ID (one allocation more per message), which a
// broker that deduplicates by it needs.
func benchmarkSink(b *testing.B, cfg Config, uniqueIDs bool) {
	br, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer br.Close(context.Background())
	waitReady(b, br, 5*time.Second)

	body := testBody(benchSize)
	// At most as many messages in flight as the ring holds: the engine
	// would answer the rest 451 4.3.2, which is not what is measured here.
	inFlight := cfg.RingSize
	var failed atomic.Int64
	done := benchCompletion{free: make(chan *sink.Message, inFlight), failed: &failed}
	for i := 0; i < inFlight; i++ {
		done.free <- &sink.Message{
			QueueID:    "QBENCH0000000001",
			Sender:     []byte("sender@example.org"),
			Recipients: [][]byte{[]byte("rcpt@example.com")},
			ClientIP:   "127.0.0.1",
			ClientPort: 40000,
			Helo:       []byte("client.example.org"),
			Size:       benchSize,
			Body:       sink.Body8BitMIME,
			Done:       done,
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu0, w0 := time.Now(), cpuTime(b), writeCalls(b)
	for i := 0; i < b.N; i++ {
		m := <-done.free
		if uniqueIDs {
			m.QueueID = "QBENCH" + strconv.Itoa(i)
		}
		m.Received = time.Now()
		m.Data = bytebufferpool.Get()
		m.Data.Write(body)
		br.Submit(m)
	}
	for i := 0; i < inFlight; i++ {
		<-done.free
	}
	elapsed, cpu, writes := time.Since(start), cpuTime(b)-cpu0, writeCalls(b)-w0
	b.StopTimer()
	if n := failed.Load(); n != 0 {
		b.Fatalf("%d messages failed: %+v", n, br.Stats())
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/msg")
	b.ReportMetric(float64(writes)/float64(b.N), "writes/msg")
}
