package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/smtp"
	"net/textproto"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/engine"
	"github.com/lsmtp/lsmtp/internal/faultproxy"
	"github.com/lsmtp/lsmtp/internal/metrics/metricstest"
)

// syncBuffer collects the log of a node under test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startNode starts a node the way run does and stops it at the end of
// the test. Signals reach it through the returned channel.
func startNode(t *testing.T, args []string) (*node, chan os.Signal, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	n, err := start(args, noEnv, logs)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	sig := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- n.wait(sig) }()
	t.Cleanup(func() {
		sig <- syscall.SIGTERM
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("wait: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("node did not stop")
		}
		if t.Failed() {
			t.Logf("node log:\n%s", logs.String())
		}
	})
	return n, sig, logs
}

func smtpAddr(n *node) string { return n.srv.Addrs()[0].String() }

func dialSMTP(t *testing.T, addr string) *smtp.Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	c, err := smtp.NewClient(conn, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	return c
}

func code(err error) int {
	if err == nil {
		return 250
	}
	var te *textproto.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return -1
}

// rcpts sends MAIL and count RCPTs in a fresh transaction and returns
// the reply code of each RCPT.
func rcpts(t *testing.T, c *smtp.Client, count int) []int {
	t.Helper()
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("s@example.com"); err != nil {
		t.Fatal(err)
	}
	codes := make([]int, count)
	for i := range codes {
		codes[i] = code(c.Rcpt(fmt.Sprintf("r%d@example.org", i)))
	}
	return codes
}

// readyz returns the status of admin's /readyz, -1 when it does not answer.
func readyz(admin string) int {
	resp, err := http.Get(admin + "/readyz")
	if err != nil {
		return -1
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// sendNumbered sends count messages, "Subject: <i>", from s@example.com
// to r@example.org in one session with addr; each must get 250, which
// waits for the broker's ack (ack names it).
func sendNumbered(t *testing.T, addr string, count int, ack string) {
	t.Helper()
	c := dialSMTP(t, addr)
	for i := range count {
		if err := c.Mail("s@example.com"); err != nil {
			t.Fatal(err)
		}
		if err := c.Rcpt("r@example.org"); err != nil {
			t.Fatal(err)
		}
		w, err := c.Data()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(w, "Subject: %d\r\n\r\nbody\r\n", i)
		if err := w.Close(); err != nil {
			t.Fatalf("message %d: %v (want 250 after the %s)", i, err, ack)
		}
	}
	c.Quit()
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSIGHUPReloadsLimitsOnOpenSession changes max-recipients in the file,
// sends SIGHUP to the test process itself, and checks that a session
// opened before the reload works under the new limit.
func TestSIGHUPReloadsLimitsOnOpenSession(t *testing.T) {
	dir := t.TempDir()
	file := dir + "/lsmtp.yaml"
	write := func(content string) {
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("listen: [127.0.0.1:0]\nsink: \"null\"\nadmin-listen: \"\"\nmax-recipients: 3\nevent-loops: 1\n")
	n, sig, logs := startNode(t, []string{"--config", file})
	// The real signal: delivered to sig as run delivers it.
	signal.Notify(sig, syscall.SIGHUP)
	defer signal.Stop(sig)

	c := dialSMTP(t, smtpAddr(n))
	defer c.Close()
	if got, want := fmt.Sprint(rcpts(t, c, 4)), "[250 250 250 452]"; got != want {
		t.Fatalf("before reload: RCPT replies %s, want %s", got, want)
	}

	// New limit, plus a change only a restart can apply.
	write("listen: [127.0.0.1:0]\nsink: amqp\nadmin-listen: \"\"\nmax-recipients: 5\nevent-loops: 1\nlog-level: warn\n")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reload", 5*time.Second, func() bool { return n.reloads.Load() == 1 })

	if got, want := fmt.Sprint(rcpts(t, c, 6)), "[250 250 250 250 250 452]"; got != want {
		t.Errorf("after reload, same session: RCPT replies %s, want %s", got, want)
	}
	if err := c.Quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}
	log := logs.String()
	for _, want := range []string{
		`msg="configuration reloaded" changed="[max-recipients log-level]"`,
		`msg="options changed that only a restart applies; running values kept" options=[sink]`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %s:\n%s", want, log)
		}
	}
	if n.level.Level().String() != "WARN" {
		t.Errorf("log level %v after reload, want WARN", n.level.Level())
	}

	// A broken file changes nothing.
	write("listen: [127.0.0.1:0]\nsink: \"null\"\nmax-recipients: -1\n")
	if err := n.reload(); err == nil || !strings.Contains(err.Error(), "max-recipients: must be more than 0") {
		t.Errorf("reload of a broken file: %v, want the problem", err)
	}
	if got := n.srv.Config().MaxRecipients; got != 5 {
		t.Errorf("max-recipients %d after a failed reload, want 5 kept", got)
	}
}

// TestMetricsAndReadinessAgainstRabbitMQ runs the whole node against the
// local RabbitMQ through a TCP proxy: /metrics counts exactly the mail
// sent, and /readyz follows the broker connection as the proxy goes down
// and comes back.
func TestMetricsAndReadinessAgainstRabbitMQ(t *testing.T) {
	proxy, err := faultproxy.New("127.0.0.1:5672")
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	queue := fmt.Sprintf("lsmtp.test.cmd.%d", time.Now().UnixNano())
	defer deleteQueue(t, queue)

	n, _, _ := startNode(t, []string{
		"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--event-loops", "1",
		"--amqp-url", "amqp://guest:guest@" + proxy.Addr() + "/",
		"--queue", queue, "--routing-key", queue, "--queue-type", "classic",
		"--amqp-reconnect-min", "20ms", "--amqp-reconnect-max", "200ms",
	})
	admin := "http://" + n.adminAddr.String()
	waitFor(t, "/readyz 200 once connected", 10*time.Second, func() bool { return readyz(admin) == 200 })
	if resp, err := http.Get(admin + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/healthz: %v %v", resp, err)
	}
	if resp, err := http.Get(admin + "/debug/pprof/"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/debug/pprof/: %v %v", resp, err)
	}

	before := metricstest.Scrape(t, admin+"/metrics")
	const count = 5
	sendNumbered(t, smtpAddr(n), count, "confirm")
	after := metricstest.Scrape(t, admin+"/metrics")
	delta := func(name string, labels ...string) float64 {
		return after.Value(name, labels...) - before.Value(name, labels...)
	}
	for _, ch := range []struct {
		what      string
		got, want float64
	}{
		{"accepted messages", delta("lsmtp_messages_total", "result", "accepted", "reason", "accepted"), count},
		{"sink failures", delta("lsmtp_messages_total", "result", "tempfail", "reason", "sink_failed"), 0},
		{"MAIL 2xx", delta("lsmtp_commands_total", "verb", "MAIL", "class", "2xx"), count},
		{"broker submitted", delta("lsmtp_broker_submitted_total"), count},
		{"broker confirmed", delta("lsmtp_broker_confirmed_total"), count},
		{"size count", delta("lsmtp_message_size_bytes_count"), count},
		{"broker connected", after.Value("lsmtp_broker_connected"), 1},
		{"pending after", after.Value("lsmtp_broker_pending_messages"), 0},
	} {
		if ch.got != ch.want {
			t.Errorf("%s: %v, want %v", ch.what, ch.got, ch.want)
		}
	}

	proxy.Down()
	waitFor(t, "/readyz 503 with the broker gone", 10*time.Second, func() bool { return readyz(admin) == 503 })
	if v := metricstest.Scrape(t, admin+"/metrics").Value("lsmtp_broker_connected"); v != 0 {
		t.Errorf("lsmtp_broker_connected = %v with the broker gone, want 0", v)
	}
	if err := proxy.Up(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "/readyz 200 with the broker back", 10*time.Second, func() bool { return readyz(admin) == 200 })
	back := metricstest.Scrape(t, admin+"/metrics")
	if back.Value("lsmtp_broker_reconnects_total") < 1 || back.Value("lsmtp_broker_disconnects_total") < 1 {
		t.Errorf("reconnects %v, disconnects %v; want both >= 1",
			back.Value("lsmtp_broker_reconnects_total"), back.Value("lsmtp_broker_disconnects_total"))
	}
}

// TestReadyWithSpool: with RabbitMQ unreachable, a node with a spool that
// takes mail is ready (its 250s come from the spool); without one it is not.
func TestReadyWithSpool(t *testing.T) {
	down := "amqp://guest:guest@" + closedAddr(t) + "/"
	base := []string{"--listen", "127.0.0.1:0", "--admin-listen", "", "--event-loops", "1", "--amqp-url", down}
	n, _, _ := startNode(t, append(base, "--spool-dir", t.TempDir()))
	if ok, why := n.ready(); !ok {
		t.Errorf("with a spool and RabbitMQ down: not ready (%s), want ready", why)
	}
	n2, _, _ := startNode(t, base)
	if ok, why := n2.ready(); ok || why != "broker not connected" {
		t.Errorf("without a spool and RabbitMQ down: ready %v (%s), want not ready", ok, why)
	}
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestReadyzFailsWhileStopping checks that a node being shut down tells
// load balancers to go elsewhere before it stops listening.
func TestReadyzFailsWhileStopping(t *testing.T) {
	n, _, _ := startNode(t, []string{"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--sink", "null", "--event-loops", "1"})
	if ok, why := n.ready(); !ok {
		t.Fatalf("not ready at start: %s", why)
	}
	n.stopping.Store(true)
	resp, err := http.Get("http://" + n.adminAddr.String() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || strings.TrimSpace(string(body)) != "shutting down" {
		t.Errorf("/readyz while stopping: %d %q, want 503 shutting down", resp.StatusCode, body)
	}
}

func TestStartFailsOnTakenAdminPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = start([]string{"--listen", "127.0.0.1:0", "--sink", "null", "--admin-listen", ln.Addr().String()}, noEnv, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "admin listener") {
		t.Errorf("start with the admin port taken: %v, want an admin listener error", err)
	}
}

// deleteQueue removes a test's queue from RabbitMQ.
func deleteQueue(t *testing.T, name string) {
	conn, err := amqp.Dial("amqp://guest:guest@127.0.0.1:5672/")
	if err != nil {
		t.Logf("cleanup: %v", err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	ch.QueueDelete(name, false, false, false)
}

// TestClientControlsFromConfiguration checks the policy options reach the
// engine, are counted in /metrics, and change on reload without
// resetting when untouched.
func TestClientControlsFromConfiguration(t *testing.T) {
	file := t.TempDir() + "/lsmtp.yaml"
	base := "listen: [127.0.0.1:0]\nsink: \"null\"\nadmin-listen: 127.0.0.1:0\nevent-loops: 1\nmsg-rate: 0.001\nmsg-burst: 100\n"
	if err := os.WriteFile(file, []byte(base+"recipient-domain: [example.org]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n, _, _ := startNode(t, []string{"--config", file})
	c := dialSMTP(t, smtpAddr(n))
	defer c.Close()
	if err := c.Mail("s@example.com"); err != nil {
		t.Fatal(err)
	}
	if got := code(c.Rcpt("r@example.org")); got != 250 {
		t.Errorf("RCPT to a listed domain: %d, want 250", got)
	}
	if got := code(c.Rcpt("r@example.com")); got != 550 {
		t.Errorf("RCPT to another domain: %d, want 550", got)
	}
	s := metricstest.Scrape(t, "http://"+n.adminAddr.String()+"/metrics")
	if v := s.Value("lsmtp_commands_total", "verb", "RCPT", "class", "5xx"); v != 1 {
		t.Errorf("RCPT 5xx = %v, want 1", v)
	}
	if v, ok := s.Get("lsmtp_policy_tracked_clients"); !ok || v != 1 {
		t.Errorf("lsmtp_policy_tracked_clients = %v (present %v), want 1", v, ok)
	}

	// Same policy settings: the running policy (and its rate state) stays.
	pol := n.srv.Config().Policy
	if err := n.reload(); err != nil {
		t.Fatal(err)
	}
	if n.srv.Config().Policy != pol {
		t.Error("a reload with unchanged client controls replaced the policy")
	}
	// Another domain: the open session sees it on its next command.
	if err := os.WriteFile(file, []byte(base+"recipient-domain: [example.com]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := n.reload(); err != nil {
		t.Fatal(err)
	}
	if got := code(c.Rcpt("r2@example.com")); got != 250 {
		t.Errorf("after reload, RCPT to the new domain: %d, want 250", got)
	}
	if got := code(c.Rcpt("r2@example.org")); got != 550 {
		t.Errorf("after reload, RCPT to the old domain: %d, want 550", got)
	}
}

func TestDenyCIDRRefusesAtConnect(t *testing.T) {
	n, _, _ := startNode(t, []string{"--listen", "127.0.0.1:0", "--sink", "null", "--admin-listen", "", "--deny-cidr", "127.0.0.0/8"})
	conn, err := net.DialTimeout("tcp", smtpAddr(n), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := textproto.NewReader(bufio.NewReader(conn)).ReadLine()
	if err != nil || !strings.HasPrefix(line, "554 5.7.1") {
		t.Errorf("greeting %q, %v; want 554 5.7.1", line, err)
	}
	if got := n.srv.Stats().Refusals(engine.RefusedDenied); got != 1 {
		t.Errorf("refused denied = %d, want 1", got)
	}
}

// TestNoInfoLinePerCommand sends commands of every kind, good and bad,
// and checks that none of them writes a log line at info or above: at
// info there is one line per message, never one per command.
func TestNoInfoLinePerCommand(t *testing.T) {
	n, _, logs := startNode(t, []string{"--listen", "127.0.0.1:0", "--sink", "null", "--admin-listen", "",
		"--event-loops", "1", "--max-errors", "1000"})
	conn, err := net.DialTimeout("tcp", smtpAddr(n), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := textproto.NewReader(bufio.NewReader(conn))
	reply := func() string {
		t.Helper()
		var last string
		for {
			line, err := r.ReadLine()
			if err != nil {
				t.Fatalf("reading a reply: %v", err)
			}
			if len(line) < 4 || line[3] != '-' {
				return last + line
			}
			last = ""
		}
	}
	reply() // greeting
	var classes [6]int
	for range 10 {
		for _, cmd := range []string{"EHLO client.example", "NOOP", "RSET", "VRFY x", "HELP", "FROB", "MAIL FROM:<bad",
			"RCPT TO:<x@example.org>", "DATA", "EXPN x", "MAIL FROM:<s@example.com>", "RCPT TO:<x@example.org>", "RSET"} {
			if _, err := io.WriteString(conn, cmd+"\r\n"); err != nil {
				t.Fatal(err)
			}
			if line := reply(); line[0] >= '2' && line[0] <= '5' {
				classes[line[0]-'0']++
			}
		}
	}
	io.WriteString(conn, "QUIT\r\n")
	reply()
	if classes[2] == 0 || classes[5] == 0 {
		t.Fatalf("replies by class %v: want both successes and errors", classes)
	}
	waitFor(t, "the connection to close", 5*time.Second, func() bool { return n.srv.Stats().Open.Load() == 0 })
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		if !strings.Contains(line, "msg=listening") {
			t.Errorf("log line for commands: %s", line)
		}
	}
}
