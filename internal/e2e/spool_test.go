package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// buildLsmtp builds cmd/lsmtp into the test's directory.
func buildLsmtp(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "lsmtp")
	cmd := exec.Command("go", "build", "-o", bin, "../../cmd/lsmtp")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startLsmtp runs bin on a free port until the test ends (or it is
// killed) and returns its SMTP address once it listens.
func startLsmtp(t *testing.T, bin string, args ...string) (*exec.Cmd, string) {
	t.Helper()
	addr := closedPort(t)
	cmd := exec.Command(bin, append([]string{"--listen", addr, "--admin-listen", "", "--log-level", "warn",
		"--hostname", serverName, "--node", nodeName}, args...)...)
	cmd.Stderr = rabbittest.LogWriter(t)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return cmd, addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("lsmtp did not listen on %s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSpoolSurvivesKill9: lsmtp spools with RabbitMQ unreachable, under
// load of messages of 256 KiB (so that the kill lands in the middle of a
// group's write), and is killed with SIGKILL: no Close, nothing flushed.
// A new lsmtp on the same spool, with RabbitMQ reachable, publishes every
// message that was answered 250, each under its queue ID.
func TestSpoolSurvivesKill9(t *testing.T) {
	bin := buildLsmtp(t)
	name := rabbittest.UniqueName(t, "lsmtp-e2e-spool")
	deleteAtEnd(t, []string{name}, []string{name})
	spool := t.TempDir()
	common := []string{"--exchange", name, "--queue", name, "--spool-dir", spool, "--amqp-reconnect-max", "300ms"}

	first, addr := startLsmtp(t, bin, append(common, "--amqp-url", "amqp://guest:guest@"+closedPort(t)+"/")...)
	body := []byte("Subject: spooled\r\n\r\n" + strings.Repeat("0123456789abcdef", 256<<10/16) + "\r\n")
	var mu sync.Mutex
	var accepted []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for s := 0; s < 8; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, _, err := smtptest.Dial(addr, ioTimeout)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			if _, err := c.Expect("EHLO client.example", 250); err != nil {
				t.Error(err)
				return
			}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				r, err := c.Send(fmt.Sprintf("s%d@example.org", s), []string{"rcpt@example.com"}, body)
				if err != nil {
					return // the kill
				}
				id, ok := r.QueueID()
				if !ok {
					t.Errorf("sender %d message %d: %q, want 250 from the spool", s, i, r.String())
					return
				}
				mu.Lock()
				accepted = append(accepted, id)
				mu.Unlock()
			}
		}()
	}
	for {
		mu.Lock()
		n := len(accepted)
		mu.Unlock()
		if n >= 200 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := first.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	first.Wait()
	close(stop)
	wg.Wait()
	mu.Lock()
	want := append([]string(nil), accepted...)
	mu.Unlock()
	t.Logf("%d messages answered 250 before SIGKILL", len(want))

	startLsmtp(t, bin, append(common, "--amqp-url", rabbittest.URL)...)
	// The queue is declared when the new process connects.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := rabbittest.AdminChannel(t).QueueDeclarePassive(name, true, false, false, false, nil); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue %s not declared within 10s", name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	got := map[string]bool{}
	for _, d := range consume(t, name, len(want), time.Second, 60*time.Second) {
		got[d.MessageId] = true
		if len(d.Body) < len(body) {
			t.Errorf("%s: %d octets in the queue, want the whole message", d.MessageId, len(d.Body))
		}
	}
	for _, id := range want {
		if !got[id] {
			t.Errorf("%s was answered 250 and is not in the queue", id)
		}
	}
	q, _ := filepath.Glob(filepath.Join(spool, "quarantine", "*.bad"))
	t.Logf("%d distinct messages in the queue; %d damaged regions quarantined (a write the kill cut short)", len(got), len(q))
	if fi, err := os.Stat(filepath.Join(spool, "LOCK")); err != nil || fi.IsDir() {
		t.Errorf("spool LOCK: %v", err)
	}
}
