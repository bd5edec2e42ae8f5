package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/rabbittest"
)

// envRabbitRestart enables fault (b) in TestChaosShort: stopping the
// RabbitMQ application disturbs every other test using RabbitMQ at that
// moment, and `go test ./...` runs packages in parallel.
const envRabbitRestart = "LSMTP_CHAOS_RABBIT_RESTART"

// TestChaosShort is the short variant of `make chaos`: about 20 s of load
// from a few sessions with one fault of each kind enabled, then the
// queue is matched against the acknowledgements. It cleans up (queue and
// exchange deleted, RabbitMQ application running) also when it fails.
func TestChaosShort(t *testing.T) {
	if testing.Short() {
		t.Skip("a 20 s run; skipped with -short")
	}
	cfg := Defaults()
	cfg.Duration = 20 * time.Second
	cfg.Sessions = 6
	cfg.Rate = 500
	cfg.FaultInterval = 4 * time.Second
	cfg.CutOutage = 500 * time.Millisecond
	cfg.Faults = []Fault{FaultCut, FaultLSMTPRestart}
	// Restarts bind the same port while the old connections are in
	// TIME_WAIT, as a real restart does (e2e.TestRestartOnSamePort).
	cfg.SamePort = true
	cfg.Name = fmt.Sprintf("lsmtp-chaos-test.%08x", rand.Uint32())
	cfg.Log = rabbittest.LogWriter(t)
	rabbitRestart := os.Getenv(envRabbitRestart) == "1"
	if rabbitRestart {
		cfg.Faults = []Fault{FaultCut, FaultLSMTPRestart, FaultRabbitRestart}
		t.Logf("fault rabbit-restart enabled (%s=1): RabbitMQ's application is stopped and started once", envRabbitRestart)
	} else {
		t.Logf("fault rabbit-restart (rabbitmqctl stop_app/start_app) skipped: it would disturb the other packages' tests running in parallel; %s=1 enables it (make chaos runs it)", envRabbitRestart)
	}
	url := cfg.amqpURL(cfg.RabbitAddr)
	t.Cleanup(func() {
		// Run restores and deletes by itself; this is the safety net
		// for a run that did not get that far.
		if rabbitRestart {
			if err := WaitAMQP(url, 5*time.Second); err != nil {
				t.Logf("RabbitMQ not answering after the run, starting its application: %v", err)
				r := StoppedRabbitApp(url)
				if err := r.Restore(2 * time.Minute); err != nil {
					t.Errorf("RabbitMQ left stopped: %v", err)
				}
			}
		}
		if ok, _ := queueExists(url, cfg.Name); ok {
			t.Errorf("queue %s left behind; deleting it", cfg.Name)
			deleteTopology(url, cfg.Name)
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sum, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("summary:\n%s", sum)
	if sum.Failed() {
		t.Errorf("chaos run failed: %v", sum.Problems)
	}
	if sum.Match.Lost != 0 {
		t.Errorf("%d acknowledged messages lost", sum.Match.Lost)
	}
	injected := map[Fault]int{}
	for _, ev := range sum.Faults {
		injected[ev.Kind]++
	}
	for _, f := range cfg.Faults {
		if injected[f] == 0 {
			t.Errorf("fault %s never injected", f)
		}
	}
	if err := WaitAMQP(url, 5*time.Second); err != nil {
		t.Errorf("RabbitMQ after the run: %v", err)
	}
	if ok, err := queueExists(url, cfg.Name); ok || err != nil {
		t.Errorf("queue %s still exists after the run (%v)", cfg.Name, err)
	}
}

// TestMatch: the queue held against the acknowledgements finds lost
// messages, copies of one queue ID, and messages sent again after a 4xx
// although stored.
func TestMatch(t *testing.T) {
	body := func(token string) []byte {
		return append([]byte("Received: from x ([127.0.0.1])\r\n\tby y (lsmtp) with ESMTP id Q;\r\n\tdate\r\n"), messageBody(token, 200)...)
	}
	acked := map[string]ackInfo{"Q1": {token: "a"}, "Q2": {token: "b"}, "Q3": {token: "c"}, "Q5": {token: "e"}}
	c := newCollector()
	c.add("Q1", body("a"))
	c.add("Q2", body("b"))
	c.add("Q2", body("b")) // the same queue ID twice
	c.add("Q4", body("c")) // c stored under Q4 although answered 4xx ...
	c.add("Q3", body("c")) // ... and acknowledged when sent again
	c.add("Q6", []byte("Received: x\r\n\r\nnot ours\r\n"))
	// Q5 is lost.
	m := c.match(acked)
	want := Match{Acknowledged: 4, InQueue: 6, DistinctIDs: 5, Lost: 1, LostIDs: []string{"Q5"}, SameID: 1, Resent: 1, StoredWithout250: 2, Foreign: 1}
	if fmt.Sprint(m) != fmt.Sprint(want) {
		t.Errorf("match:\n got %+v\nwant %+v", m, want)
	}
}

func TestMessageBodyToken(t *testing.T) {
	for _, size := range []int{0, 100, 2048, 65536} {
		b := messageBody("s001-0000042", size)
		if !strings.HasSuffix(string(b), "\r\n") || strings.Contains(string(b), "\r\n.") {
			t.Fatalf("size %d: body must end in CRLF and hold no CRLF.", size)
		}
		if size >= 200 && (len(b) < size-80 || len(b) > size) {
			t.Errorf("size %d: %d octets", size, len(b))
		}
		stored := append([]byte("Received: from a\r\n\tby b;\r\n\tdate\r\n"), b...)
		if tok, ok := tokenOf(stored); !ok || tok != "s001-0000042" {
			t.Errorf("size %d: token %q, %v", size, tok, ok)
		}
	}
}

func TestParseFaults(t *testing.T) {
	got, err := ParseFaults("cut, lsmtp-restart,rabbit-restart,")
	if err != nil || fmt.Sprint(got) != "[cut lsmtp-restart rabbit-restart]" {
		t.Errorf("got %v, %v", got, err)
	}
	if got, err := ParseFaults(""); err != nil || len(got) != 0 {
		t.Errorf("empty: %v, %v", got, err)
	}
	if _, err := ParseFaults("cut,reboot"); err == nil {
		t.Error("unknown fault accepted")
	}
}
