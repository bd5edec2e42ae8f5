package broker

import (
	"fmt"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/rabbittest"
)

// TestChannelReopensUnderSteadyLoad: every worker's channel failed on a live
// connection; once the cause is gone, a steady trickle of messages must
// not keep the workers from reopening their channels.
func TestChannelReopensUnderSteadyLoad(t *testing.T) {
	for _, tc := range []struct {
		workers int
		gap     time.Duration
	}{{1, 20 * time.Millisecond}, {2, 20 * time.Millisecond}} {
		t.Run(fmt.Sprintf("workers%d_gap%s", tc.workers, tc.gap), func(t *testing.T) { checkChannelRetry(t, tc.workers, tc.gap) })
	}
}

func checkChannelRetry(t *testing.T, workers int, gap time.Duration) {
	cfg := testConfig(t, rabbittest.URL)
	cfg.Declare = false
	cfg.ReconnectMin = 100 * time.Millisecond
	cfg.ReconnectMax = 2 * time.Second
	cfg.Workers = workers
	cfg.PublishRetryWindow = 0 // the outage's messages must fail fast, as the load below expects
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	rec := newRecorder()
	// Fail every worker's channel (no exchange: 404 closes the channel).
	n := 0
	for deadline := time.Now().Add(5 * time.Second); b.liveChannels.Load() > 0; n++ {
		if time.Now().After(deadline) {
			t.Fatal("channels did not fail")
		}
		b.Submit(newMessage(rec, fmt.Sprintf("QF%d", n), "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
		rec.wait(t, n+1, 10*time.Second)
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("all channels failed after %d messages", n)
	// The outage lasts a little longer, under the same steady load.
	for start := time.Now(); time.Since(start) < 1500*time.Millisecond; n++ {
		b.Submit(newMessage(rec, fmt.Sprintf("QF%d", n), "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
		rec.wait(t, n+1, 10*time.Second)
		time.Sleep(gap)
	}
	declareTopology(t, cfg)
	ok := 0
	start := time.Now()
	for time.Since(start) < 4*time.Second {
		id := fmt.Sprintf("QL%d", n)
		b.Submit(newMessage(rec, id, "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
		n++
		rec.wait(t, n, 10*time.Second)
		if rec.result(t, id) == nil {
			ok++
			break
		}
		time.Sleep(gap)
	}
	t.Logf("accepted=%d after %s, liveChannels=%d stats=%+v", ok, time.Since(start), b.liveChannels.Load(), b.Stats())
	if ok == 0 {
		t.Fatal("a message every 20 ms kept every worker from reopening its channel for 4 s (retry is 200 ms..2 s)")
	}
}
