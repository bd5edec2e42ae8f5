package broker

import (
	"sync"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// holdOne is a completion that holds the completion of one message until
// its gate opens, so that the worker completing it stays busy.
type holdOne struct {
	rec     *recorder
	id      string
	entered chan struct{}
	gate    chan struct{}
	once    sync.Once
}

func (c *holdOne) Complete(m *sink.Message, err error) {
	if m.QueueID == c.id {
		c.once.Do(func() { close(c.entered) })
		<-c.gate
	}
	c.rec.Complete(m, err)
}

// TestWakeOfEndingSessionPassesOn: a message submitted while the first
// worker is still marked open but its channel has just closed wakes that
// worker; when its session ends, the wake-up passes on to the other open
// worker at once, rather than waiting in the ring for the first worker's
// new channel (here 3 s of backoff away).
func TestWakeOfEndingSessionPassesOn(t *testing.T) {
	p := newProxy(t)
	cfg := testConfig(t, proxyURL(p))
	cfg.Workers, cfg.Window = 2, 8
	cfg.PublishRetryWindow = 0 // no deferral kick to rescue the message
	cfg.ReconnectMin, cfg.ReconnectMax = 3*time.Second, 3*time.Second
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	for deadline := time.Now().Add(5 * time.Second); !(b.workers[0].open.Load() && b.workers[1].open.Load()); {
		if time.Now().After(deadline) {
			t.Fatal("the workers did not open")
		}
		time.Sleep(time.Millisecond)
	}
	rec := newRecorder()
	held := &holdOne{rec: rec, id: "W0", entered: make(chan struct{}), gate: make(chan struct{})}

	// W0 is confirmed but its ack held; W1 goes to an exchange that is
	// gone, so worker 0's channel is closed (404) right behind that ack.
	p.HoldReplies()
	b.Submit(newMessage(held, "W0", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	time.Sleep(300 * time.Millisecond)
	if err := rabbittest.AdminChannel(t).ExchangeDelete(cfg.Exchange, false, false); err != nil {
		t.Fatal(err)
	}
	b.Submit(newMessage(rec, "W1", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	time.Sleep(300 * time.Millisecond)
	declareTopology(t, cfg)
	p.Resume()
	select {
	case <-held.entered: // worker 0 is inside W0's completion, still open
	case <-time.After(5 * time.Second):
		t.Fatal("worker 0 did not settle W0")
	}
	time.Sleep(100 * time.Millisecond) // the channel.close has arrived
	b.Submit(newMessage(rec, "W2", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	start := time.Now()
	close(held.gate)
	rec.wait(t, 3, 10*time.Second)
	if took := time.Since(start); took > time.Second {
		t.Errorf("W2 waited %v in the ring while worker 1 was open", took)
	}
	if err := rec.result(t, "W2"); err != nil {
		t.Errorf("W2: %v, want nil", err)
	}
}
