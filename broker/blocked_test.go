package broker

import (
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// TestConnectionBlocked raises RabbitMQ's memory alarm so that it sends
// connection.blocked: new messages are answered 451 at once until it sends
// connection.unblocked. The alarm blocks every publisher on the node, so
// the test runs only when asked to (LSMTP_TEST_BLOCKED=1) and always
// restores the watermark.
func TestConnectionBlocked(t *testing.T) {
	if os.Getenv("LSMTP_TEST_BLOCKED") == "" {
		t.Skip("blocks every publisher of the shared RabbitMQ node; run with LSMTP_TEST_BLOCKED=1")
	}
	cfg := testConfig(t, rabbittest.URL)
	cfg.ConfirmTimeout = time.Second
	cfg.PublishRetryWindow = 0 // asserts the immediate 451s while blocked; with a window messages wait for the unblock
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	// RabbitMQ notifies only connections that have published.
	rec := newRecorder()
	b.Submit(newMessage(rec, "QBEFORE", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	rec.wait(t, 1, 10*time.Second)
	if err := rec.result(t, "QBEFORE"); err != nil {
		t.Fatalf("before the alarm: %v", err)
	}
	setWatermark := func(v string) {
		out, err := exec.Command("rabbitmqctl", "set_vm_memory_high_watermark", v).CombinedOutput()
		if err != nil {
			t.Errorf("rabbitmqctl set_vm_memory_high_watermark %s: %v\n%s", v, err, out)
		}
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			setWatermark("0.4")
		}
	}
	defer restore()
	setWatermark("0.0000001")
	// RabbitMQ blocks (and says so) when the connection next publishes:
	// that message waits for a confirm that cannot come and is answered
	// 451 after ConfirmTimeout.
	b.Submit(newMessage(rec, "QPROBE", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	waitFor(t, 10*time.Second, "connection.blocked", func() bool { return b.Stats().Blocked })
	rec.wait(t, 2, 5*time.Second)
	if err := rec.result(t, "QPROBE"); err != sink.ErrUnavailable {
		t.Errorf("message published into the block: %v, want %v", err, sink.ErrUnavailable)
	}

	b.Submit(newMessage(rec, "QBLOCKED", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	if err := rec.result(t, "QBLOCKED"); err != sink.ErrUnavailable {
		t.Fatalf("while blocked: %v, want %v", err, sink.ErrUnavailable)
	}
	restore()
	waitFor(t, 10*time.Second, "connection.unblocked", func() bool { return !b.Stats().Blocked })
	b.Submit(newMessage(rec, "QAFTER", "a@example.org", []string{"b@example.com"}, []byte("x\r\n")))
	rec.wait(t, 4, 10*time.Second)
	if err := rec.result(t, "QAFTER"); err != nil {
		t.Fatalf("after unblock: %v", err)
	}
	if st := b.Stats(); st.RejectedBlocked != 1 {
		t.Errorf("stats: %+v", st)
	}
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(within); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
