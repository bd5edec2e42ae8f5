package broker

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// spoolBench is a broker with a spool whose RabbitMQ (through p) is down.
func spoolBench(b *testing.B) (*Broker, Config, func() error) {
	p := newProxy(b)
	cfg := testConfig(b, proxyURL(p))
	cfg.Logger = slog.New(slog.DiscardHandler)
	cfg.SpoolDir = b.TempDir()
	br := startBroker(b, cfg)
	waitReady(b, br, 5*time.Second) // declares the queue
	takeDown(br, p)
	return br, cfg, p.Up
}

// sessions submits n messages of benchSize from 200 sessions, each
// waiting for its reply before the next, and fails on any 4xx.
func sessions(b *testing.B, br *Broker, n int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	body := testBody(benchSize)
	for s := 0; s < 200; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				if err := send(br, fmt.Sprintf("Q%015d", i), "bench@example.org", body); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// BenchmarkSpoolDown is the hand-off with RabbitMQ down: every message
// is spooled (group-committed fsync) and answered from there, by 200
// sessions at once. fsyncs/msg is what the group commit saves.
func BenchmarkSpoolDown(b *testing.B) {
	br, _, _ := spoolBench(b)
	b.ResetTimer()
	start := time.Now()
	sessions(b, br, b.N)
	b.StopTimer()
	st := br.Stats()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
	b.ReportMetric(float64(st.SpoolFsyncs)/float64(st.Spooled), "fsyncs/msg")
}

// BenchmarkSpoolReplay spools b.N messages with RabbitMQ down, then
// measures how fast they are published and removed once it is back.
func BenchmarkSpoolReplay(b *testing.B) {
	br, cfg, up := spoolBench(b)
	sessions(b, br, b.N)
	b.ResetTimer()
	start := time.Now()
	if err := up(); err != nil {
		b.Fatal(err)
	}
	for br.Stats().SpoolMessages > 0 {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
	purge(b, cfg.Queue)
}
