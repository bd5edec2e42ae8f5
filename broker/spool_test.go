package broker

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/faultproxy"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// sender is one SMTP client sending its messages one after the other:
// the next only once the last was answered, as a session does.
type sender struct {
	name string
	ids  []string // answered 250, in order
	errs []error  // other answers
}

// syncDone is a Completion for one message at a time.
type syncDone chan error

func (d syncDone) Complete(_ *sink.Message, err error) { d <- err }

// send submits one message and waits for its answer.
func send(b *Broker, id, from string, body []byte) error {
	done := make(syncDone, 1)
	b.Submit(newMessage(done, id, from, []string{"rcpt@example.com"}, body))
	return <-done
}

// runSenders runs n senders of per messages each, concurrently.
func runSenders(t *testing.T, b *Broker, prefix string, n, per int, body []byte) []*sender {
	t.Helper()
	var wg sync.WaitGroup
	senders := make([]*sender, n)
	for s := range senders {
		snd := &sender{name: fmt.Sprintf("%s-s%03d@example.org", prefix, s)}
		senders[s] = snd
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				id := fmt.Sprintf("%s-%03d-%04d", prefix, s, i)
				if err := send(b, id, snd.name, body); err != nil {
					snd.errs = append(snd.errs, err)
					continue
				}
				snd.ids = append(snd.ids, id)
			}
		}()
	}
	wg.Wait()
	return senders
}

// checkDelivered checks that every 250 of senders is in got, each
// sender's in the order it was answered (by first delivery: a republish
// may add a later duplicate).
func checkDelivered(t *testing.T, senders []*sender, got map[string][]string) {
	t.Helper()
	for _, s := range senders {
		seen := got[s.name]
		first := map[string]int{}
		for i, id := range seen {
			if _, ok := first[id]; !ok {
				first[id] = i
			}
		}
		last := -1
		for _, id := range s.ids {
			at, ok := first[id]
			if !ok {
				t.Fatalf("%s answered 250 but is not in the queue", id)
			}
			if at < last {
				t.Fatalf("sender %s: %s delivered out of order", s.name, id)
			}
			last = at
		}
	}
}

// bySender consumes want messages (and any duplicates) and groups their
// message_ids by smtp-sender, in queue order.
func bySender(t *testing.T, queue string, want int) map[string][]string {
	t.Helper()
	got := map[string][]string{}
	for _, d := range consume(t, queue, want, 500*time.Millisecond, 60*time.Second) {
		from, _ := d.Headers[HeaderSender].(string)
		got[from] = append(got[from], d.MessageId)
	}
	return got
}

func spoolConfig(t *testing.T, url string) Config {
	cfg := testConfig(t, url)
	cfg.Window = 64
	cfg.PublishRetryWindow = 2 * time.Second
	cfg.ConfirmTimeout = 2 * time.Second
	cfg.SpoolDir = t.TempDir()
	return cfg
}

// smallDiskConfig is spoolConfig through p with the spool on an 8 MiB
// tmpfs and half-second deadlines: the disk fills after a few large
// messages, and one that then waits in memory is answered soon.
func smallDiskConfig(t *testing.T, p *faultproxy.Proxy) Config {
	cfg := spoolConfig(t, proxyURL(p))
	cfg.PublishRetryWindow = 500 * time.Millisecond
	cfg.ConfirmTimeout = 500 * time.Millisecond
	cfg.SpoolDir = filepath.Join(mountTmpfs(t, "8M"), "spool")
	return cfg
}

// startThenDown starts a broker on cfg, waits until it is connected
// through p, and then takes RabbitMQ away (takeDown).
func startThenDown(t testing.TB, cfg Config, p *faultproxy.Proxy) *Broker {
	t.Helper()
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	takeDown(b, p)
	return b
}

// takeDown makes RabbitMQ unreachable through p and waits until b has
// seen it go: what b is given next goes to the spool.
func takeDown(b *Broker, p *faultproxy.Proxy) {
	p.Down()
	for b.Ready() {
		time.Sleep(5 * time.Millisecond)
	}
}

// With RabbitMQ unreachable, 50 sessions sending one message after the
// other all get 250 at once (fsynced in the spool), none 451; when it is
// back, every one of them is in the queue, each sender's in order.
func TestSpoolBrokerDown(t *testing.T) {
	p := newProxy(t)
	cfg := spoolConfig(t, proxyURL(p))
	b := startThenDown(t, cfg, p)
	start := time.Now()
	senders := runSenders(t, b, "down", 50, 40, testBody(2048))
	took := time.Since(start)
	total := 0
	for _, s := range senders {
		if len(s.errs) > 0 {
			t.Fatalf("sender %s: %d tempfails, first %v", s.name, len(s.errs), s.errs[0])
		}
		total += len(s.ids)
	}
	st := b.Stats()
	t.Logf("%d messages spooled in %s with the broker down, %d fsyncs", total, took, st.SpoolFsyncs)
	if st.Spooled != uint64(total) || st.SpoolMessages != int64(total) {
		t.Fatalf("Spooled %d, SpoolMessages %d, want %d", st.Spooled, st.SpoolMessages, total)
	}
	if st.SpoolFsyncs*2 > st.Spooled {
		t.Fatalf("%d fsyncs for %d messages: the group commit shares too few", st.SpoolFsyncs, st.Spooled)
	}
	if !b.SpoolTaking() {
		t.Fatal("SpoolTaking false with room in the spool")
	}
	if err := p.Up(); err != nil {
		t.Fatal(err)
	}
	checkDelivered(t, senders, bySender(t, cfg.Queue, total))
	waitFor(t, 10*time.Second, "the spool drained", func() bool { return b.Stats().SpoolMessages == 0 })
	if st := b.Stats(); st.Replayed < uint64(total) || st.SpoolDiskBytes != 0 {
		t.Fatalf("Replayed %d (want %d), SpoolDiskBytes %d after the spool drained", st.Replayed, total, st.SpoolDiskBytes)
	}
}

// copyDir copies the files of src (not its subdirectories) to dst: the
// spool as a crash would leave it, since a record is fsynced before its
// 250 and nothing else is needed to find it.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(src, "*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if fi, err := os.Stat(n); err != nil || fi.IsDir() || filepath.Base(n) == "LOCK" {
			continue
		}
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, filepath.Base(n)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// The analogue of kill -9: a broker spools with RabbitMQ down; its spool
// files are taken as they are on disk while it still runs (as a crash
// leaves them), with a torn record appended at the end (a crash in the
// middle of a write) and one bit flipped in a record. A new broker on
// those files, with RabbitMQ reachable, delivers every record but the
// damaged one, and quarantines and counts both damaged regions.
func TestSpoolRestartAfterCrash(t *testing.T) {
	p := newProxy(t)
	cfg := spoolConfig(t, proxyURL(p))
	b := startThenDown(t, cfg, p)
	senders := runSenders(t, b, "crash", 10, 20, testBody(4096))
	for _, s := range senders {
		if len(s.errs) > 0 {
			t.Fatalf("tempfail with the spool taking mail: %v", s.errs[0])
		}
	}
	crashed := t.TempDir()
	copyDir(t, cfg.SpoolDir, crashed)
	// The first process is gone; its own spool is not used again.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}

	segs, _ := filepath.Glob(filepath.Join(crashed, "*.seg"))
	if len(segs) != 1 {
		t.Fatalf("segments %v, want 1", segs)
	}
	data, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	// Flip a bit in the body of the record of a known message.
	victim := senders[3].ids[7]
	at := bytes.Index(data, []byte(victim))
	if at < 0 {
		t.Fatal("victim's record not found")
	}
	data[at+len(victim)+1000] ^= 0x01
	// A torn record: the first half of the first one, appended.
	data = append(data, data[:3000]...)
	if err := os.WriteFile(segs[0], data, 0o600); err != nil {
		t.Fatal(err)
	}

	if err := p.Up(); err != nil {
		t.Fatal(err)
	}
	cfg2 := cfg
	cfg2.SpoolDir = crashed
	b2 := startBroker(t, cfg2)
	if c := b2.Stats().SpoolCorrupt; c != 2 {
		t.Fatalf("SpoolCorrupt %d, want 2 (the flipped bit and the torn tail)", c)
	}
	q, _ := filepath.Glob(filepath.Join(crashed, "quarantine", "*.bad"))
	if len(q) != 2 {
		t.Fatalf("quarantine: %v", q)
	}
	for i, id := range senders[3].ids {
		if id == victim {
			senders[3].ids = append(senders[3].ids[:i:i], senders[3].ids[i+1:]...)
			break
		}
	}
	waitFor(t, 20*time.Second, "the spool drained", func() bool { return b2.Stats().SpoolMessages == 0 })
	if st := b2.Stats(); st.Replayed != 199 {
		t.Fatalf("second broker replayed %d, want 199", st.Replayed)
	}
	got := bySender(t, cfg.Queue, 199)
	checkDelivered(t, senders, got)
	n := 0
	for _, ids := range got {
		n += len(ids)
		for _, id := range ids {
			if id == victim {
				t.Fatalf("the damaged record %s was delivered", id)
			}
		}
	}
	if n != 199 {
		t.Fatalf("%d messages in the queue, want 199", n)
	}
}

// mountTmpfs mounts a tmpfs of size at a new directory, unmounted when the
// test ends; it skips the test where mounting is not allowed.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (%v): %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// A disk that fills: with RabbitMQ down, messages are spooled until the
// 8 MiB file system is full; the next waits in memory and its deadline
// answers it 451 4.3.1 (never a crash, never a 250 it cannot keep). Once
// RabbitMQ is back and the spool drained, its space is free again and a
// message is spooled with 250.
func TestSpoolDiskFull(t *testing.T) {
	p := newProxy(t)
	cfg := smallDiskConfig(t, p)
	b := startThenDown(t, cfg, p)
	body := testBody(256 << 10)
	var ok []string
	var full error
	for i := 0; i < 100 && full == nil; i++ {
		id := fmt.Sprintf("full-%03d", i)
		if err := send(b, id, "full@example.org", body); err != nil {
			full = err
			break
		}
		ok = append(ok, id)
	}
	if full != ErrSpoolFull {
		t.Fatalf("after %d messages of 256 KiB on 8 MiB: %v, want %v", len(ok), full, ErrSpoolFull)
	}
	if len(ok) < 20 {
		t.Fatalf("only %d messages spooled before the disk was full", len(ok))
	}
	if b.SpoolTaking() {
		t.Fatal("SpoolTaking true with the disk full")
	}
	st := b.Stats()
	t.Logf("%d spooled, then full; SpoolFailed %d", len(ok), st.SpoolFailed)
	if err := p.Up(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the spool drained", func() bool {
		st := b.Stats()
		return st.SpoolMessages == 0 && st.SpoolDiskBytes == 0
	})
	takeDown(b, p)
	if err := send(b, "after", "full@example.org", body); err != nil {
		t.Fatalf("after the spool drained: %v, want 250", err)
	}
	if err := p.Up(); err != nil {
		t.Fatal(err)
	}
	checkDelivered(t, []*sender{{name: "full@example.org", ids: append(ok, "after")}}, bySender(t, cfg.Queue, len(ok)+1))
}

// A queue full with x-overflow reject-publish NACKs: with a spool, the
// messages it refuses are spooled and answered 250, and they reach the
// queue as a consumer makes room.
func TestSpoolQueueFull(t *testing.T) {
	cfg := spoolConfig(t, "amqp://guest:guest@127.0.0.1:5672/")
	cfg.QueueType = QueueClassic
	cfg.MaxLength = 20
	cfg.Overflow = "reject-publish"
	b := startBroker(t, cfg)
	waitReady(t, b, readyWait)
	senders := runSenders(t, b, "qfull", 10, 20, testBody(1024))
	for _, s := range senders {
		if len(s.errs) > 0 {
			t.Fatalf("tempfail with a full queue: %v", s.errs[0])
		}
	}
	st := b.Stats()
	if st.Nacked == 0 || st.Spooled == 0 {
		t.Fatalf("Nacked %d, Spooled %d: the queue did not fill", st.Nacked, st.Spooled)
	}
	t.Logf("nacked %d, spooled %d", st.Nacked, st.Spooled)
	// The consumer drains what is there; the rest follows from the spool.
	checkDelivered(t, senders, bySender(t, cfg.Queue, 200))
	waitFor(t, 10*time.Second, "the spool drained", func() bool { return b.Stats().SpoolMessages == 0 })
}
