package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/broker"
	"github.com/lsmtp/lsmtp/engine"
	"github.com/lsmtp/lsmtp/internal/rabbittest"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// The client address the HAProxy tests connect from: loopback, but not
// HAProxy's own 127.0.0.1, so that only the PROXY header can tell lsmtp.
const haproxyClientIP = "127.0.0.5"

// startHAProxy runs HAProxy (the distribution's package; the test skips
// without it) in the foreground with a generated configuration: one TCP
// frontend on a free loopback port, round robin to backends with
// send-proxy-v2, health checks every 200 ms that send a PROXY v2 LOCAL
// header, and a failed connect retried on the other server (redispatch).
// It is killed when the test ends. It returns the frontend's address.
func startHAProxy(t *testing.T, backends ...string) string {
	t.Helper()
	bin := haproxyBin(t)
	front := closedPort(t)
	var b strings.Builder
	fmt.Fprintf(&b, `global
	maxconn 1000
defaults
	mode tcp
	timeout connect 2s
	timeout client 60s
	timeout server 60s
	retries 3
	option redispatch 1
frontend smtp
	bind %s
	default_backend lsmtp
backend lsmtp
	balance roundrobin
`, front)
	for i, be := range backends {
		fmt.Fprintf(&b, "\tserver n%d %s send-proxy-v2 check check-send-proxy inter 200ms fall 1 rise 2\n", i, be)
	}
	cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-q", "-f", cfg).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v: %s", err, out)
	}
	cmd := exec.Command(bin, "-db", "-f", cfg) // -db: foreground, no daemon
	out, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			_ = sc.Text() // server state changes; drained so HAProxy never blocks on stderr
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-logDone
		cmd.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", front, time.Second)
		if err == nil {
			c.Close()
			return front
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy not listening on %s: %v", front, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// haproxyBin finds HAProxy, also where PATH lacks /usr/sbin, or skips
// the test.
func haproxyBin(t *testing.T) string {
	if bin, err := exec.LookPath("haproxy"); err == nil {
		return bin
	}
	if _, err := os.Stat("/usr/sbin/haproxy"); err == nil {
		return "/usr/sbin/haproxy"
	}
	t.Skip("haproxy not installed (apt-get install haproxy)")
	return ""
}

// dialFrom is smtptest.Dial from a given local address.
func dialFrom(local, addr string, timeout time.Duration) (*smtptest.Conn, smtptest.Reply, error) {
	d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, smtptest.Reply{}, err
	}
	s := smtptest.NewConn(c, timeout)
	greet, err := s.Read()
	if err != nil {
		c.Close()
		return nil, smtptest.Reply{}, fmt.Errorf("greeting: %w", err)
	}
	return s, greet, nil
}

// TestHAProxyTwoNodes: two lsmtp nodes behind HAProxy with send-proxy-v2,
// sharing one queue, under load from 127.0.0.5. The client's address
// reaches the smtp-client-ip header of every message through the PROXY
// header (HAProxy itself connects from 127.0.0.1). Node a is shut down
// (Server.Shutdown, as on SIGTERM) under load and started again on its
// port: meanwhile every 250 comes from node b, in-flight transactions
// end in 250 or 4xx (none is left without a reply), and after the
// restart node a takes sessions again. Every 250 is in the queue.
func TestHAProxyTwoNodes(t *testing.T) {
	haproxyBin(t)
	trust := func(ec *engine.Config) {
		ec.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	}
	bc := brokerConfig(t, rabbittest.URL)
	bc.Envelope = broker.EnvelopeBoth // the client facts asserted below are the smtp-* headers
	bcA, bcB := bc, bc
	bcA.Node, bcB.Node = "e2e-a", "e2e-b"
	a := startStack(t, bcA, true, trust)
	b := startStack(t, bcB, true, trust)
	front := startHAProxy(t, a.addr, b.addr)
	waitBackendsUp(t, front)

	tally := newTally()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fromClientIP := func(addr string, timeout time.Duration) (*smtptest.Conn, smtptest.Reply, error) {
		return dialFrom(haproxyClientIP, addr, timeout)
	}
	var wg sync.WaitGroup
	const sessions = 20
	for i := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loadClient{dial: fromClientIP, addr: front, id: i, tally: tally, sessionLen: 10}.run(ctx)
		}()
	}
	time.Sleep(2 * time.Second)
	shutdownAt := time.Now()
	if err := a.stop(20 * time.Second); err != nil {
		t.Errorf("node a shutdown: %v", err)
	}
	downAt := time.Now()
	time.Sleep(2 * time.Second)
	restartAt := time.Now()
	a2 := startStack(t, bcA, true, trust, func(ec *engine.Config) { ec.Listen = []string{a.addr} })
	time.Sleep(4 * time.Second) // HAProxy sees it up after two checks (400 ms)
	cancel()
	wg.Wait()
	if err := a2.stop(20 * time.Second); err != nil {
		t.Errorf("node a (restarted) shutdown: %v", err)
	}
	if err := b.stop(20 * time.Second); err != nil {
		t.Errorf("node b shutdown: %v", err)
	}
	t.Logf("shutdown of node a took %s; %s", downAt.Sub(shutdownAt).Round(time.Millisecond), tally)

	tally.mu.Lock()
	acked := len(tally.acked)
	tally.mu.Unlock()
	deliveries := consume(t, bc.Queue, acked, time.Second, 60*time.Second)
	perNode := map[string]map[string]int{} // period -> node -> messages
	for _, d := range deliveries {
		if ip, _ := d.Headers[broker.HeaderClientIP].(string); ip != haproxyClientIP {
			t.Fatalf("message %s: %s %q, want %q (the client's, from the PROXY header)", d.MessageId, broker.HeaderClientIP, ip, haproxyClientIP)
		}
		node, _ := d.Headers[broker.HeaderNode].(string)
		at, ok := tally.ackedAt[d.MessageId]
		if !ok {
			continue // stored although answered 4xx: counted by checkStored
		}
		period := "before"
		switch {
		case at.After(restartAt.Add(time.Second)):
			period = "after restart"
		case at.After(downAt) && at.Before(restartAt):
			period = "a down"
		case at.After(shutdownAt):
			continue // a's transactions in flight may finish on a
		}
		if perNode[period] == nil {
			perNode[period] = map[string]int{}
		}
		perNode[period][node]++
	}
	t.Logf("250s by node: %v", perNode)
	if perNode["before"]["e2e-a"] == 0 || perNode["before"]["e2e-b"] == 0 {
		t.Errorf("before the shutdown both nodes should take messages: %v", perNode["before"])
	}
	if n := perNode["a down"]["e2e-a"]; n > 0 || perNode["a down"]["e2e-b"] == 0 {
		t.Errorf("while node a is down every 250 must come from b: %v", perNode["a down"])
	}
	if perNode["after restart"]["e2e-a"] == 0 {
		t.Errorf("node a takes no sessions after its restart: %v", perNode["after restart"])
	}
	if tally.unknown > 0 {
		t.Errorf("%d transactions left without a reply after their body: a draining node must answer them", tally.unknown)
	}
	if len(tally.permfails) > 0 {
		t.Errorf("5xx under a node's restart: %v", tally.permfails[:min(5, len(tally.permfails))])
	}
	// Every 250 in the queue (consume above read it all).
	stored := map[string]int{}
	for _, d := range deliveries {
		stored[d.MessageId]++
	}
	lost := 0
	for id, tok := range tally.acked {
		if stored[id] == 0 {
			if lost++; lost <= 10 {
				t.Errorf("message %s (token %s) got 250 and is not in the queue", id, tok)
			}
		}
	}
	t.Logf("queue: %d messages for %d 250s; lost %d", len(deliveries), acked, lost)
	if lost > 0 {
		t.Errorf("LOST: %d messages answered 250 are not in the queue", lost)
	}
}

// waitBackendsUp waits until sessions through front reach both servers
// (HAProxy marks a server up after its first check), so that the test
// does not start on one node only.
func waitBackendsUp(t *testing.T, front string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, greet, err := dialFrom(haproxyClientIP, front, 2*time.Second)
		if err == nil {
			c.Close()
			if greet.Code == 220 {
				time.Sleep(500 * time.Millisecond) // two checks' time
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("no SMTP greeting through haproxy within 10 s")
}
