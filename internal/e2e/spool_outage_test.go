package e2e

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/chaos"
	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// The opt-in outage of the machine's RabbitMQ (make spool-outage).
const (
	envStopApp        = "LSMTP_TEST_STOP_APP"         // "1" runs TestSpoolOutageStopApp
	envStopAppSeconds = "LSMTP_TEST_STOP_APP_SECONDS" // its outage, default 60
)

// outage takes RabbitMQ away from the stack and brings it back. end
// returns once RabbitMQ answers again; it may be called more than once.
type outage struct {
	what  string
	begin func() error
	end   func() error
}

// outageSender is what one SMTP session of the load saw.
type outageSender struct {
	ids       []string    // queue ID of each 250, in the order sent
	sentAt    []time.Time // when each of those transactions began
	repliedAt []time.Time // when each of those 250s came
	tempfails []string    // final 4xx replies
	failures  []string    // 5xx, a lost connection, anything else
}

// TestSpoolOutageStopApp: RabbitMQ's application stopped (rabbitmqctl
// stop_app) for LSMTP_TEST_STOP_APP_SECONDS (60 by default) under the
// load of 50 sessions, with a spool: no tempfail, and every 250 in the
// queue after it returns, each sender's spooled messages in order. Opt
// in with LSMTP_TEST_STOP_APP=1 (make spool-outage): stopping the
// machine's RabbitMQ disturbs every other user of the node.
func TestSpoolOutageStopApp(t *testing.T) {
	if os.Getenv(envStopApp) != "1" {
		t.Skipf("stops the local RabbitMQ's application for a minute, which disturbs every other user of the node; %s=1 runs it (make spool-outage)", envStopApp)
	}
	length := 60 * time.Second
	if v := os.Getenv(envStopAppSeconds); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("%s=%q: want a positive number of seconds", envStopAppSeconds, v)
		}
		length = time.Duration(n) * time.Second
	}
	if err := chaos.WaitAMQP(rabbittest.URL, 10*time.Second); err != nil {
		t.Fatalf("RabbitMQ at %s is needed for this test: %v", rabbittest.Addr, err)
	}
	app := chaos.NewRabbitApp(rabbittest.URL)
	restore := func() {
		if err := app.Restore(2 * time.Minute); err != nil {
			t.Errorf("RabbitMQ left stopped: %v", err)
		}
	}
	// start_app on every way out: the deferred call for a return or a
	// t.Fatal in this goroutine, the cleanup for anything else (a
	// runtime.Goexit elsewhere, a panic). Restore does nothing once the
	// application runs again.
	t.Cleanup(restore)
	defer restore()
	runSpoolOutage(t, rabbittest.URL, outage{
		what:  "rabbitmqctl stop_app",
		begin: app.StopApp,
		end:   func() error { return app.Restore(2 * time.Minute) },
	}, 5*time.Second, length, restore)
	if err := chaos.WaitAMQP(rabbittest.URL, 2*time.Minute); err != nil {
		t.Errorf("RabbitMQ after the test: %v", err)
	}
}

// TestSpoolOutageProxy is TestSpoolOutageStopApp with RabbitMQ refused by
// a fault proxy for 3 s instead (longer than the retry window: without
// the spool, messages would get 451), so that the same body runs in every
// make test.
func TestSpoolOutageProxy(t *testing.T) {
	p := newProxy(t)
	runSpoolOutage(t, proxyURL(p), outage{
		what:  "fault proxy down",
		begin: func() error { p.Down(); return nil },
		end:   p.Up,
	}, 1500*time.Millisecond, 3*time.Second, func() { p.Up() })
}

// runSpoolOutage starts a stack with a spool on url, puts it under the
// load of 50 sessions, runs o.begin after lead, o.end length later, and
// lets the load run a second more. Once the spool has drained, every
// message answered 250 must be in the queue, with no tempfail. Order:
// a session waits for each reply before its next message, so a message
// confirmed at once is in the queue before its successor exists, and the
// spool publishes its records in the order they were spooled; only mail
// that arrives once RabbitMQ is back may overtake the backlog
// (docs/ARCHITECTURE.md). A message sent after o.begin returned and
// answered before o.end began cannot have been confirmed at once, so it
// was spooled, and it must not be found before an earlier message of its
// sender. restore runs at the cleanups that need RabbitMQ (registered
// after them, so first).
func runSpoolOutage(t *testing.T, url string, o outage, lead, length time.Duration, restore func()) {
	bc := brokerConfig(t, url)
	bc.SpoolDir = t.TempDir()
	// A retry window shorter than the outage: without the spool the
	// outage would be a 451 4.3.0 for every message caught in it.
	bc.PublishRetryWindow, bc.ConfirmTimeout = time.Second, time.Second
	bc.Logger = rabbittest.Logger(t, slog.LevelError) // reconnect warnings are expected, one per attempt
	s := startStack(t, bc, true)
	t.Cleanup(restore) // before the stack stops and the queue is deleted

	const sessions = 50
	payload := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-.\r\n", 32) // 2 KiB
	senders := make([]outageSender, sessions)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range senders {
		wg.Add(1)
		go func(id int, snd *outageSender) {
			defer wg.Done()
			c, greet, err := smtptest.Dial(s.addr, ioTimeout)
			if err != nil || greet.Code != 220 {
				snd.failures = append(snd.failures, fmt.Sprintf("connect: %v %q", err, greet.String()))
				return
			}
			defer c.Close()
			if _, err := c.Expect("EHLO outage.example", 250); err != nil {
				snd.failures = append(snd.failures, err.Error())
				return
			}
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				at := time.Now()
				content := []byte(fmt.Sprintf("X-Load-Token: s%d-%d\r\nSubject: outage\r\n\r\n%s", id, seq, payload))
				out := c.Transact(fmt.Sprintf("s%d@example.org", id), []string{"rcpt@example.com"}, content, true)
				switch {
				case out.Err != nil:
					snd.failures = append(snd.failures, fmt.Sprintf("message %d: %v", seq, out.Err))
					return
				case out.Final.Code >= 400 && out.Final.Code < 500:
					snd.tempfails = append(snd.tempfails, out.Final.String())
				default:
					qid, ok := out.Final.QueueID()
					if !ok {
						snd.failures = append(snd.failures, fmt.Sprintf("message %d: %q", seq, out.Final.String()))
						return
					}
					snd.ids = append(snd.ids, qid)
					snd.sentAt = append(snd.sentAt, at)
					snd.repliedAt = append(snd.repliedAt, time.Now())
				}
				// A steady load, not a flood: at most 10 messages a
				// second a session, 500 for all, so that a minute's
				// outage stays a backlog of tens of thousands.
				time.Sleep(100 * time.Millisecond)
			}
		}(i, &senders[i])
	}
	loadStopped := false
	stopLoad := func() {
		if !loadStopped {
			loadStopped = true
			close(stop)
			wg.Wait()
		}
	}
	defer stopLoad() // a t.Fatal below must not leave the sessions running

	time.Sleep(lead)
	before := s.brk.Stats().Spooled
	t.Logf("%s for %s", o.what, length)
	if err := o.begin(); err != nil {
		t.Fatalf("%s: %v", o.what, err)
	}
	begun := time.Now()
	for s.brk.Ready() {
		if time.Since(begun) > 10*time.Second {
			t.Fatalf("broker still connected 10 s after %s", o.what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(length - time.Since(begun))
	ending := time.Now()
	if err := o.end(); err != nil {
		t.Fatalf("bringing RabbitMQ back after %s: %v", o.what, err)
	}
	s.waitReady(30 * time.Second)
	t.Logf("RabbitMQ back %s after the outage ended; spool holds %d messages", time.Since(ending).Round(time.Millisecond), s.brk.Stats().SpoolMessages)
	time.Sleep(time.Second) // live mail beside the replay
	stopLoad()

	drainWithin := 30*time.Second + 2*length
	for deadline := time.Now().Add(drainWithin); s.brk.Stats().SpoolMessages != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("spool still holds %d messages %s after RabbitMQ came back", s.brk.Stats().SpoolMessages, drainWithin)
		}
		time.Sleep(20 * time.Millisecond)
	}
	st := s.brk.Stats()

	total, tempfails := 0, 0
	type sent struct {
		sender, seq int
	}
	byID := map[string]sent{}
	for i, snd := range senders {
		for _, f := range snd.failures {
			t.Errorf("sender %d: %s", i, f)
		}
		tempfails += len(snd.tempfails)
		if len(snd.tempfails) > 0 {
			t.Errorf("sender %d: %d tempfails, first %q", i, len(snd.tempfails), snd.tempfails[0])
		}
		for seq, id := range snd.ids {
			byID[id] = sent{i, seq}
		}
		total += len(snd.ids)
	}
	spooled := st.Spooled - before
	t.Logf("%d messages answered 250, %d tempfails; %d spooled during the outage, %d replayed, %d fsyncs",
		total, tempfails, spooled, st.Replayed, st.SpoolFsyncs)
	if spooled == 0 {
		t.Fatalf("no message spooled during %s: the outage did not reach the stack", o.what)
	}

	// Where each message first appears in the queue (a message whose
	// publish was lost with its connection may be there twice).
	pos := map[string]int{}
	inQueue := make([][]int, sessions) // per sender: its seqs in queue order
	dups, strays := 0, 0
	for _, d := range consume(t, bc.Queue, total, time.Second, drainWithin) {
		m, ok := byID[d.MessageId]
		switch {
		case !ok:
			strays++
			continue
		case pos[d.MessageId] > 0:
			dups++
			continue
		}
		pos[d.MessageId] = len(pos) + 1
		token := fmt.Sprintf("X-Load-Token: s%d-%d\r\n", m.sender, m.seq)
		if !bytes.Contains(d.Body, []byte(token)) {
			t.Errorf("%s: the queue's body lacks %q", d.MessageId, strings.TrimSpace(token))
		}
		inQueue[m.sender] = append(inQueue[m.sender], m.seq)
	}
	if strays > 0 {
		t.Errorf("%d messages in the queue that no client was answered 250 for", strays)
	}
	missing := 0
	for id := range byID {
		if pos[id] == 0 {
			if missing++; missing <= 10 {
				t.Errorf("%s was answered 250 and is not in the queue", id)
			}
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d messages answered 250 are not in the queue", missing, total)
	}

	// Order per sender: a message found before an earlier one (a higher
	// seq ahead of a lower) overtook it, which a message spooled during
	// the outage must not do.
	overtook, wrong := 0, 0
	for i, seqs := range inQueue {
		for k, seq := range seqs {
			for _, ahead := range seqs[:k] {
				if ahead < seq {
					continue
				}
				overtook++
				if snd := senders[i]; !snd.sentAt[ahead].Before(begun) && snd.repliedAt[ahead].Before(ending) {
					if wrong++; wrong <= 10 {
						t.Errorf("sender %d: message %d (sent %s, 250 at %s: spooled) is in the queue before its message %d",
							i, ahead, snd.sentAt[ahead].Format("15:04:05.000"), snd.repliedAt[ahead].Format("15:04:05.000"), seq)
					}
				}
			}
		}
	}
	if wrong > 0 {
		t.Errorf("%d messages out of their sender's order", wrong)
	}
	t.Logf("%d distinct messages in the queue, %d duplicates; %d overtakings by mail confirmed at once", len(pos), dups, overtook)
}
