package broker

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// timedRecorder records each outcome with the time it arrived.
type timedRecorder struct {
	*recorder
	mu    sync.Mutex
	at    map[string]time.Time
	oks   []time.Time // when each 250 came
	slots chan struct{}
}

func newTimedRecorder(inFlight int) *timedRecorder {
	return &timedRecorder{recorder: newRecorder(), at: map[string]time.Time{}, slots: make(chan struct{}, inFlight)}
}

func (r *timedRecorder) Complete(m *sink.Message, err error) {
	now := time.Now()
	r.mu.Lock()
	r.at[m.QueueID] = now
	if err == nil {
		r.oks = append(r.oks, now)
	}
	r.mu.Unlock()
	r.recorder.Complete(m, err)
	select {
	case <-r.slots:
	default:
	}
}

// firstOKAfter is when the first 250 after t came, or the zero time.
func (r *timedRecorder) firstOKAfter(t time.Time) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := sort.Search(len(r.oks), func(i int) bool { return r.oks[i].After(t) })
	if i == len(r.oks) {
		return time.Time{}
	}
	return r.oks[i]
}

// TestCutShorterThanWindowNoTempfail cuts the connection to RabbitMQ
// repeatedly under load, and once keeps it down for a second: every
// message is answered 250 (none 451: every outage is shorter than the
// retry window), every one of them is in the queue, and the duplicates
// (messages republished after their first publish was stored but its
// confirm lost with the connection) are no more than Stats.Republished.
func TestCutShorterThanWindowNoTempfail(t *testing.T) {
	p := newProxy(t)
	cfg := testConfig(t, proxyURL(p))
	cfg.Window = 64
	cfg.PublishRetryWindow = 10 * time.Second
	b := newReadyBroker(t, cfg)

	const (
		maxMessages = 100000 // a bound; the load runs until the faults are over
		inFlight    = 300    // SMTP sessions, each waiting for its reply
	)
	rec := newTimedRecorder(inFlight)
	body := testBody(2048)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	sent := 0
	go func() {
		defer wg.Done()
		for ; sent < maxMessages; sent++ {
			select {
			case <-stop:
				return
			case rec.slots <- struct{}{}:
			}
			b.Submit(newMessage(rec, fmt.Sprintf("QRCUT%06d", sent), "a@example.org", []string{"b@example.com"}, body))
		}
	}()
	var faults []time.Time
	for i := 0; i < 5; i++ {
		time.Sleep(300 * time.Millisecond)
		faults = append(faults, time.Now())
		p.Cut()
	}
	time.Sleep(300 * time.Millisecond)
	faults = append(faults, time.Now())
	p.Down() // refused for a second: longer than the reconnect backoff, shorter than the window
	time.Sleep(time.Second)
	if err := p.Up(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := b.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}

	rec.recorder.mu.Lock()
	confirmed, tempfailed := map[string]bool{}, 0
	for id, rs := range rec.results {
		if len(rs) != 1 {
			t.Errorf("%s completed %d times", id, len(rs))
		}
		if rs[0] == nil {
			confirmed[id] = true
		} else {
			tempfailed++
		}
	}
	completed := len(rec.results)
	rec.recorder.mu.Unlock()
	if completed != sent {
		t.Fatalf("%d messages submitted, %d completed", sent, completed)
	}
	inQueue, badBody := map[string]int{}, 0
	for _, d := range consume(t, cfg.Queue, len(confirmed), 500*time.Millisecond, 30*time.Second) {
		inQueue[d.MessageId]++
		if !bytes.Equal(d.Body, body) {
			badBody++ // a republish must send the body it kept, whole
		}
	}
	if badBody != 0 {
		t.Errorf("%d messages in the queue with a body other than the one submitted", badBody)
	}
	lost, dups := 0, 0
	for id := range confirmed {
		if inQueue[id] == 0 {
			lost++
		}
	}
	for _, n := range inQueue {
		dups += n - 1
	}
	st := b.Stats()
	var resume []string
	for _, f := range faults {
		if ok := rec.firstOKAfter(f.Add(time.Millisecond)); !ok.IsZero() {
			resume = append(resume, ok.Sub(f).Round(time.Millisecond).String())
		}
	}
	t.Logf("submitted %d: 250 %d, 451 %d; lost %d; in the queue %d, duplicates %d; deferred %d, retried %d, republished %d, lost publishes %d, reconnects %d",
		sent, len(confirmed), tempfailed, lost, len(inQueue), dups, st.Deferred, st.Retried, st.Republished, st.Lost, st.Connects-1)
	t.Logf("fault to the next 250 (5 cuts, then 1 s down): %v", resume)
	if tempfailed != 0 {
		t.Errorf("%d messages answered 451 although every outage was shorter than the retry window", tempfailed)
	}
	if lost != 0 {
		t.Errorf("%d messages confirmed to the client are not in the queue", lost)
	}
	if uint64(dups) > st.Republished {
		t.Errorf("%d duplicates in the queue, but only %d republishes counted as possible duplicates", dups, st.Republished)
	}
	// A cut can land while the worker is still declaring on its new
	// connection (a busy machine reconnects slower than the 300 ms between
	// cuts): that is a failed connect, not a disconnect, so neither count
	// reaches the number of faults every time.
	if st.Disconnects+st.ConnectFailures < 6 || st.Connects < 5 || st.Deferred == 0 {
		t.Errorf("the faults did not take: %+v", st)
	}
}

// TestDownLongerThanWindow: with RabbitMQ unreachable for longer than
// the window, a message is answered 451 4.3.0 when its deadline passes,
// not at once: received + max(PublishRetryWindow, ConfirmTimeout).
func TestDownLongerThanWindow(t *testing.T) {
	for _, tc := range []struct {
		name            string
		window, confirm time.Duration
		want            time.Duration
	}{
		{"window", 1500 * time.Millisecond, 500 * time.Millisecond, 1500 * time.Millisecond},
		{"confirm timeout longer", 300 * time.Millisecond, 1200 * time.Millisecond, 1200 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newProxy(t)
			cfg := testConfig(t, proxyURL(p))
			cfg.PublishRetryWindow, cfg.ConfirmTimeout = tc.window, tc.confirm
			b := startBroker(t, cfg)
			waitReady(t, b, readyWait)
			p.Down()
			waitFor(t, 5*time.Second, "disconnect", func() bool { return !b.Ready() })
			rec := newTimedRecorder(10)
			start := time.Now()
			const n = 10
			for i := 0; i < n; i++ {
				b.Submit(newMessage(rec, fmt.Sprintf("QLONG%d", i), "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
			}
			rec.wait(t, n, tc.want+5*time.Second)
			for i := 0; i < n; i++ {
				id := fmt.Sprintf("QLONG%d", i)
				if err := rec.result(t, id); err != sink.ErrUnavailable {
					t.Errorf("%s: %v, want %v", id, err, sink.ErrUnavailable)
				}
				took := rec.at[id].Sub(start)
				if took < tc.want || took > tc.want+500*time.Millisecond {
					t.Errorf("%s: answered after %s, want %s (the deadline) to %s", id, took, tc.want, tc.want+500*time.Millisecond)
				}
			}
			if st := b.Stats(); st.Expired != n || st.Failed != n || st.RejectedDown != 0 {
				t.Errorf("stats: %+v", st)
			}
			if err := p.Up(); err != nil {
				t.Fatal(err)
			}
			waitReady(t, b, readyWait)
			b.Submit(newMessage(rec, "QBACK", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
			rec.wait(t, n+1, 10*time.Second)
			if err := rec.result(t, "QBACK"); err != nil {
				t.Errorf("after the broker came back: %v", err)
			}
		})
	}
}

// TestNackRetried: a queue that is full (x-max-length with
// reject-publish) NACKs; the NACKed messages are republished with
// backoff, and once a consumer drains the queue, every message submitted
// is answered 250 within the window and stored once.
func TestNackRetried(t *testing.T) {
	cfg := testConfig(t, rabbittest.URL)
	cfg.QueueType = QueueClassic
	cfg.MaxLength = 5
	cfg.Overflow = "reject-publish"
	cfg.PublishRetryWindow = 10 * time.Second
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	rec := newTimedRecorder(0)
	const n = 20
	for i := 0; i < n; i++ {
		b.Submit(newMessage(rec, fmt.Sprintf("QNR%02d", i), "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	}
	// The queue holds 5; the others are NACKed and wait.
	waitFor(t, 5*time.Second, "NACKs", func() bool { return b.Stats().Nacked >= n-5 })
	time.Sleep(time.Second)
	rec.recorder.mu.Lock()
	early := rec.n
	rec.recorder.mu.Unlock()
	if early != 5 {
		t.Errorf("%d messages completed while the queue was full, want the 5 it holds", early)
	}
	got := consume(t, cfg.Queue, n, 500*time.Millisecond, 15*time.Second)
	rec.wait(t, n, 10*time.Second)
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("QNR%02d", i)
		if err := rec.result(t, id); err != nil {
			t.Errorf("%s: %v, want nil", id, err)
		}
	}
	seen := map[string]int{}
	for _, d := range got {
		seen[d.MessageId]++
	}
	st := b.Stats()
	t.Logf("consumed %d (%d distinct); nacked %d, retried %d, republished %d", len(got), len(seen), st.Nacked, st.Retried, st.Republished)
	if len(seen) != n || len(got) != n {
		t.Errorf("queue held %d messages, %d distinct, want %d once each (a NACKed message was not stored)", len(got), len(seen), n)
	}
	if st.Confirmed != n || st.Failed != 0 || st.Retried == 0 || st.Republished != 0 {
		t.Errorf("stats: %+v", st)
	}
}

// TestRingPressure: more messages at once than RingSize, with the only
// worker stalled: none is answered 451 4.3.2 while MaxWaiting (the
// engine's connection limit) covers them, every one is confirmed once
// RabbitMQ answers again, and one past MaxWaiting is ErrBusy.
func TestRingPressure(t *testing.T) {
	p := newProxy(t)
	cfg := testConfig(t, proxyURL(p))
	cfg.Workers, cfg.Window, cfg.RingSize = 1, 1, 2
	cfg.MaxWaiting = 64
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	rec := newRecorder()
	p.Stall()
	const n = 64
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("QP%02d", i)
		b.Submit(newMessage(rec, id, "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
		rec.mu.Lock()
		rs := rec.results[id]
		rec.mu.Unlock()
		if len(rs) != 0 {
			t.Fatalf("%s answered %v at once, with %d messages held and MaxWaiting %d", id, rs[0], i, cfg.MaxWaiting)
		}
	}
	// At the bound: the next one is more than the engine can have.
	b.Submit(newMessage(rec, "QPOVER", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	if err := rec.result(t, "QPOVER"); err != sink.ErrBusy {
		t.Errorf("message %d: %v, want %v", n+1, err, sink.ErrBusy)
	}
	time.Sleep(200 * time.Millisecond)
	p.Resume()
	rec.wait(t, n+1, 10*time.Second)
	for i := 0; i < n; i++ {
		if err := rec.result(t, fmt.Sprintf("QP%02d", i)); err != nil {
			t.Errorf("QP%02d: %v, want nil", i, err)
		}
	}
	if st := b.Stats(); st.RejectedBusy != 1 || st.Confirmed != n {
		t.Errorf("stats: %+v", st)
	}
}

// TestConfirmTimeoutRetried: RabbitMQ silent (stalled network) for longer
// than the confirm timeout but shorter than the window: the attempt times
// out, the message is published again, and once RabbitMQ answers the
// client gets 250, not 451; the republish is counted as a possible
// duplicate, and the queue holds the message (once or twice).
func TestConfirmTimeoutRetried(t *testing.T) {
	p := newProxy(t)
	cfg := testConfig(t, proxyURL(p))
	cfg.ConfirmTimeout = 300 * time.Millisecond
	cfg.PublishRetryWindow = 5 * time.Second
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	rec := newRecorder()
	p.Stall()
	b.Submit(newMessage(rec, "QSTALL", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	waitFor(t, 5*time.Second, "a confirm timeout", func() bool { return b.Stats().TimedOut > 0 })
	time.Sleep(700 * time.Millisecond)
	rec.mu.Lock()
	early := rec.n
	rec.mu.Unlock()
	if early != 0 {
		t.Fatalf("answered %v while RabbitMQ was silent for less than the window", rec.result(t, "QSTALL"))
	}
	p.Resume()
	rec.wait(t, 1, 5*time.Second)
	if err := rec.result(t, "QSTALL"); err != nil {
		t.Fatalf("after RabbitMQ answered again: %v, want nil", err)
	}
	st := b.Stats()
	if st.Republished == 0 || st.Confirmed != 1 || st.Failed != 0 {
		t.Errorf("stats: %+v", st)
	}
	got := consume(t, cfg.Queue, 1, 500*time.Millisecond, 5*time.Second)
	for _, d := range got {
		if d.MessageId != "QSTALL" {
			t.Errorf("unexpected message %q", d.MessageId)
		}
	}
	t.Logf("timed out %d, republished %d, stored %d times", st.TimedOut, st.Republished, len(got))
	if uint64(len(got)) > 1+st.Republished {
		t.Errorf("stored %d times, with %d republishes", len(got), st.Republished)
	}
}
