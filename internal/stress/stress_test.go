package stress

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// full reports whether the sizes quoted in the README run (make stress).
func full() bool { return os.Getenv("LSMTP_STRESS") == "1" }

func buildServer(t *testing.T) string {
	t.Helper()
	bin, err := Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestMemoryBudget: many clients send a maximum-size message at the same
// moment. Bodies past the in-flight budget are read to their end and
// answered 451 4.3.1; the rest are accepted; the process's peak RSS stays
// under the budget plus the overhead documented in the README.
func TestMemoryBudget(t *testing.T) {
	conns, size, budget := 100, 4<<20, int64(64<<20)
	if full() {
		conns, size, budget = 500, 25<<20, 512<<20
	}
	// Overhead (README, "Reliability"): lsmtp sets a soft memory limit of
	// budget + 128 MiB (cmd/lsmtp setMemoryLimit), so the heap stays near
	// it; outside the heap, goroutine stacks and gnet's buffers, up to
	// 128 KiB per connection, and 32 MiB for the runtime itself.
	overhead := int64(128<<20) + int64(conns)*(128<<10) + 32<<20
	if _, err := RaiseFileLimit(); err != nil {
		t.Fatal(err)
	}
	bin := buildServer(t)
	srv, err := Start(bin, filepath.Join(t.TempDir(), "lsmtp.log"), "--sink", "null",
		"--max-conns", fmt.Sprint(conns+10), "--max-conns-per-ip", "0",
		"--max-message-size", fmt.Sprint(size), "--max-in-flight-bytes", fmt.Sprint(budget))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()

	body := Body(size - 100)
	var (
		ready, start sync.WaitGroup
		mu           sync.Mutex
		replies      = map[string]int{}
	)
	ready.Add(conns)
	start.Add(1)
	var done sync.WaitGroup
	d := &Dialer{}
	for i := 0; i < conns; i++ {
		c, err := d.Dial(context.Background(), srv.Addr)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		done.Add(1)
		go func() {
			defer done.Done()
			defer c.Close()
			sc := smtptest.NewConn(c, 5*time.Minute)
			if _, err := sc.Read(); err != nil {
				ready.Done()
				return
			}
			ready.Done()
			start.Wait() // every body starts at once
			reply, err := Transaction(sc, body)
			end := reply.Class()
			if err != nil {
				end = "error: " + err.Error()
			}
			mu.Lock()
			replies[end]++
			mu.Unlock()
		}()
	}
	ready.Wait()
	began := time.Now()
	start.Done()
	done.Wait()
	peak, err := srv.PeakRSS()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d clients x %d MiB at once, budget %d MiB: replies %v in %v; peak RSS %d MiB (bound %d MiB)",
		conns, size>>20, budget>>20, replies, time.Since(began).Round(time.Millisecond), peak>>20, (budget+overhead)>>20)
	if replies["250 2.0.0"]+replies["451 4.3.1"] != conns {
		t.Fatalf("replies %v: want only 250 2.0.0 and 451 4.3.1", replies)
	}
	if replies["451 4.3.1"] == 0 {
		t.Fatalf("no message went past the budget: the test does not test it")
	}
	if peak > budget+overhead {
		t.Fatalf("peak RSS %d MiB over budget %d MiB + overhead %d MiB", peak>>20, budget>>20, overhead>>20)
	}
}

// TestIdleFlood: thousands of connections that say nothing. New clients
// are still served within a second, and the idle ones are closed at the
// idle timeout with 421 4.4.2.
func TestIdleFlood(t *testing.T) {
	idle, timeout := 2000, 3*time.Second
	if full() {
		idle, timeout = 20000, 10*time.Second
	}
	limit, err := RaiseFileLimit()
	if err != nil {
		t.Fatal(err)
	}
	if limit < uint64(idle)+500 {
		// Client and server each need a descriptor per connection plus a
		// few hundred of their own; without CAP_SYS_RESOURCE the hard
		// limit cannot be raised, so the flood is as large as it allows.
		t.Logf("open file limit %d: %d idle connections instead of %d", limit, limit-500, idle)
		idle = int(limit - 500)
	}
	bin := buildServer(t)
	srv, err := Start(bin, filepath.Join(t.TempDir(), "lsmtp.log"), "--sink", "null",
		"--max-conns", "0", "--max-conns-per-ip", "0", "--idle-timeout", timeout.String())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()

	d := &Dialer{}
	conns := make([]net.Conn, 0, idle)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	opened := time.Now()
	for i := 0; i < idle; i++ {
		c, err := d.Dial(context.Background(), srv.Addr)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	// Each idle connection waits for its greeting and then its end.
	var wg sync.WaitGroup
	var mu sync.Mutex
	ends := map[string]int{}
	var lastClose time.Time
	for _, c := range conns {
		wg.Add(1)
		go func(c net.Conn) {
			defer wg.Done()
			sc := smtptest.NewConn(c, timeout+time.Minute)
			greeting, gerr := sc.Read()
			last, lerr := sc.Read()
			end := last.Class()
			if gerr != nil || greeting.Code != 220 || lerr != nil {
				end = fmt.Sprintf("greeting %q (%v), then %q (%v)", greeting.String(), gerr, last.String(), lerr)
			} else if err := sc.WaitClosed(10 * time.Second); err != nil {
				end = fmt.Sprintf("after %q: %v", last.String(), err)
			}
			mu.Lock()
			ends[end]++
			if now := time.Now(); now.After(lastClose) {
				lastClose = now
			}
			mu.Unlock()
		}(c)
	}
	t.Logf("%d idle connections open after %v", idle, time.Since(opened).Round(time.Millisecond))

	// Legitimate clients meanwhile: each served within a second.
	var worst time.Duration
	for i := 0; i < 20; i++ {
		began := time.Now()
		c, err := net.DialTimeout("tcp", srv.Addr, 2*time.Second)
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		sc := smtptest.NewConn(c, 5*time.Second)
		if _, err := sc.Read(); err != nil {
			t.Fatalf("client %d greeting: %v", i, err)
		}
		reply, err := Transaction(sc, Body(2048))
		c.Close()
		took := time.Since(began)
		if err != nil || reply.Code != 250 {
			t.Fatalf("client %d: %q, %v", i, reply.String(), err)
		}
		worst = max(worst, took)
	}
	rss, _ := srv.RSS()
	t.Logf("20 clients served during the flood, slowest %v; server RSS %d MiB with %d idle connections", worst, rss>>20, idle)
	if worst > time.Second {
		t.Fatalf("a client waited %v during the flood, want under 1s", worst)
	}

	wg.Wait()
	after := lastClose.Sub(opened)
	t.Logf("idle connections ended: %v, the last %v after the first was opened (timeout %v)", ends, after.Round(time.Millisecond), timeout)
	if ends["421 4.4.2"] != idle {
		t.Fatalf("idle connections ended %v, want %d × 421 4.4.2", ends, idle)
	}
	if after > 2*timeout+30*time.Second {
		t.Fatalf("idle connections closed %v after opening, timeout %v", after, timeout)
	}
}

// TestFileLimitDoesNotStopServer: more clients than the process may open
// descriptors for. Past the connection limit (capped under RLIMIT_NOFILE)
// they get 421 4.7.0; the server never runs out of descriptors in
// accept(2), which would stop it, and serves again once clients leave.
func TestFileLimitDoesNotStopServer(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("prlimit (util-linux) not installed")
	}
	dir := t.TempDir()
	bin := buildServer(t)
	// A wrapper that starts lsmtp with 300 descriptors at most.
	wrapper := filepath.Join(dir, "lsmtp-300")
	script := "#!/bin/sh\nexec " + prlimit + " --nofile=300:300 " + bin + " \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	srv, err := Start(wrapper, filepath.Join(dir, "lsmtp.log"), "--sink", "null", "--max-conns", "0", "--max-conns-per-ip", "0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()

	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	greeted, refused := 0, 0
	d := &Dialer{}
	for i := 0; i < 400; i++ {
		c, err := d.Dial(context.Background(), srv.Addr)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		greet, err := smtptest.NewConn(c, 5*time.Second).Read()
		switch {
		case err == nil && greet.Code == 220:
			greeted++
			held = append(held, c)
		case err == nil && greet.Class() == "421 4.7.0":
			refused++
			c.Close()
		default:
			t.Fatalf("connection %d: %q, %v (server log: %s)", i, greet.String(), err, dir)
		}
	}
	t.Logf("of 400 clients with 300 descriptors: %d greeted, %d refused with 421 4.7.0", greeted, refused)
	if refused == 0 || greeted == 0 {
		t.Fatalf("greeted %d, refused %d: want both", greeted, refused)
	}
	for _, c := range held {
		c.Close()
	}
	held = nil
	// Still serving.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", srv.Addr, time.Second)
		if err != nil {
			t.Fatalf("server gone after the flood: %v", err)
		}
		sc := smtptest.NewConn(c, 5*time.Second)
		greet, _ := sc.Read()
		if greet.Code == 220 {
			reply, err := Transaction(sc, Body(1024))
			c.Close()
			if err != nil || reply.Code != 250 {
				t.Fatalf("transaction after the flood: %q, %v", reply.String(), err)
			}
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("no greeting after the flood: %q", greet.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
