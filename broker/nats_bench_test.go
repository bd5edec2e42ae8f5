package broker

import (
	"log/slog"
	"testing"

	"github.com/lsmtp/lsmtp/internal/natstest"
)

// BenchmarkNATSSink is BenchmarkBrokerSink for the NATS JetStream sink:
// b.N messages of 2 KB through Submit into the benchmark's own file
// stream (deleted afterwards), each with its own queue ID so that
// JetStream stores every one. allocs/op is per message, nats.go's
// included.
func BenchmarkNATSSink(b *testing.B) {
	for _, env := range []string{EnvelopeTrace, EnvelopeHeaders} {
		b.Run(env, func(b *testing.B) {
			cfg, _ := testNATSConfig(b, natstest.URL)
			cfg.Envelope = env
			cfg.Logger = slog.New(slog.DiscardHandler)
			benchmarkSink(b, cfg, true)
		})
	}
}
