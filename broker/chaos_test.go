package broker

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/sink"
)

// limitedCompletion records into a recorder and frees a slot of the
// producer's in-flight limit.
type limitedCompletion struct {
	rec   *recorder
	slots chan struct{}
}

func (c limitedCompletion) Complete(m *sink.Message, err error) {
	c.rec.Complete(m, err)
	<-c.slots
}

// TestCutUnderLoad cuts the connection repeatedly while messages flow:
// every message completed with nil must be in the queue; messages
// answered 451 may or may not be (their client would send them again).
// None is answered twice, none is lost, and duplicates in the queue are
// counted.
func TestCutUnderLoad(t *testing.T) {
	p := newProxy(t)
	cfg := testConfig(t, proxyURL(p))
	cfg.Window = 64
	b := newReadyBroker(t, cfg)

	const (
		maxMessages = 6000
		cuts        = 6
		cutEvery    = 250 * time.Millisecond
		inFlight    = 300
	)
	rec := newRecorder()
	done := limitedCompletion{rec: rec, slots: make(chan struct{}, inFlight)}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	sent := 0
	go func() {
		defer wg.Done()
		body := testBody(2048)
		deadline := time.Now().Add(15 * time.Second)
		for ; sent < maxMessages && time.Now().Before(deadline); sent++ {
			select {
			case <-stop:
				return
			case done.slots <- struct{}{}:
			}
			if !b.Ready() {
				time.Sleep(2 * time.Millisecond) // a client backing off
			}
			b.Submit(newMessage(done, fmt.Sprintf("QCUT%06d", sent), "a@example.org", []string{"b@example.com"}, body))
		}
	}()
	var cutDone int
	for i := 0; i < cuts; i++ {
		time.Sleep(cutEvery)
		cutDone += p.Cut()
	}
	close(stop)
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := b.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}

	rec.mu.Lock()
	confirmed := map[string]bool{}
	for id, rs := range rec.results {
		if len(rs) != 1 {
			t.Errorf("%s completed %d times", id, len(rs))
		}
		if rs[0] == nil {
			confirmed[id] = true
		}
	}
	completed := len(rec.results)
	rec.mu.Unlock()
	if completed != sent {
		t.Fatalf("%d messages submitted, %d completed", sent, completed)
	}
	if len(confirmed) == 0 {
		t.Fatal("no message confirmed")
	}

	inQueue := map[string]int{}
	for _, d := range consume(t, cfg.Queue, len(confirmed), 500*time.Millisecond, 30*time.Second) {
		inQueue[d.MessageId]++
	}
	lost, dups, unconfirmedStored := 0, 0, 0
	for id := range confirmed {
		if inQueue[id] == 0 {
			lost++
		}
	}
	for id, n := range inQueue {
		if n > 1 {
			dups += n - 1
		}
		if !confirmed[id] {
			unconfirmedStored++
		}
	}
	st := b.Stats()
	t.Logf("submitted %d, confirmed %d, failed %d (rejected while down %d, taken without a channel %d, unconfirmed publishes lost %d, timed out %d), connections cut %d, reconnects %d",
		sent, len(confirmed), completed-len(confirmed), st.RejectedDown, st.NoChannel, st.Lost, st.TimedOut, cutDone, st.Connects-1)
	t.Logf("in the queue: %d messages; duplicates %d; stored though answered 451: %d", len(inQueue), dups, unconfirmedStored)
	if lost != 0 {
		t.Errorf("%d messages confirmed to the client are not in the queue", lost)
	}
	if st.Connects < 2 {
		t.Errorf("never reconnected (%d connects)", st.Connects)
	}
}
