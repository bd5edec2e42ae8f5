package broker

import (
	"testing"

	"github.com/lsmtp/lsmtp/internal/sink"
)

// TestTimeoutKeepsOutOfOrderConfirm: a publisher whose confirms come in
// any order (NATS) may have the confirm of the second publish while the
// first never gets one. When the first times out (expire) or its session
// ends (failInFlight), the second is settled with the outcome it got, not
// as unknown: answered 250, not 451 (which would make the client send a
// message the stream holds again).
func TestTimeoutKeepsOutOfOrderConfirm(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(w *worker)
	}{
		{"expire", func(w *worker) { w.expire() }},
		{"failInFlight", func(w *worker) { w.failInFlight() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.URLs = []string{"amqp://guest:guest@127.0.0.1:1/"} // never dialled: the worker below runs alone
			cfg.PublishRetryWindow = 0
			cfg.Logger = newTestLogger(t)
			b := startBroker(t, cfg)
			w := newWorker(b, 99)
			rec := newRecorder()
			lost := newMessage(rec, "QLOST", "a@example.org", []string{"b@example.com"}, nil)
			acked := newMessage(rec, "QACKED", "a@example.org", []string{"b@example.com"}, nil)
			now := b.now()
			w.fifo.push(inflight{tag: 1, msg: lost, last: true, published: now, expiry: now})
			w.fifo.push(inflight{tag: 2, msg: acked, last: true, published: now, expiry: now})
			w.nextTag = 3
			w.settleTag(2, outAcked)
			if w.fifo.len() != 2 {
				t.Fatalf("settled ahead of the head: %d in the FIFO", w.fifo.len())
			}
			tc.end(w)
			if w.fifo.len() != 0 {
				t.Fatalf("%d publishes left in the FIFO", w.fifo.len())
			}
			if err := rec.result(t, "QLOST"); err != sink.ErrUnavailable {
				t.Errorf("the publish without a confirm: %v, want %v", err, sink.ErrUnavailable)
			}
			if err := rec.result(t, "QACKED"); err != nil {
				t.Errorf("the confirmed publish: %v, want nil (250)", err)
			}
		})
	}
}
