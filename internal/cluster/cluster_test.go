package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/broker"
	"github.com/lsmtp/lsmtp/engine"
	"github.com/lsmtp/lsmtp/internal/rabbittest"
)

// The tests start a RabbitMQ cluster of three nodes, which takes tens of
// seconds and most of this machine: they run only with LSMTP_CLUSTER=1
// (make cluster, or make test with it set). LSMTP_CLUSTER_DURATION sets
// how long the load runs around each fault (20s by default, the CI
// version), LSMTP_CLUSTER_SESSIONS the SMTP sessions (30) and
// LSMTP_CLUSTER_RATE their messages per second in all (400; 0 is as fast
// as they go).
const enableVar = "LSMTP_CLUSTER"

// running holds the clusters started, for the signal handler.
var running sync.Map // *Cluster -> struct{}

// totals is what the last line of the run reports.
var totals struct {
	faults, acked, tempfailed, lost, duplicates atomic.Int64
	ran                                         atomic.Bool
}

func TestMain(m *testing.M) {
	// A Ctrl-C or SIGTERM stops the nodes before the process ends (the
	// nodes have their own process group, so the terminal's signal does
	// not reach them, and a test binary killed by a signal runs no
	// t.Cleanup).
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		running.Range(func(k, _ any) bool {
			k.(*Cluster).Close()
			return true
		})
		fmt.Fprintf(os.Stderr, "cluster: stopped by %s, nodes killed\n", s)
		os.Exit(1)
	}()
	code := m.Run()
	if totals.ran.Load() {
		fmt.Printf("cluster: faults %d, acknowledged %d, tempfailed %d, lost %d, duplicates %d\n",
			totals.faults.Load(), totals.acked.Load(), totals.tempfailed.Load(), totals.lost.Load(), totals.duplicates.Load())
	}
	os.Exit(code)
}

// envValue is the environment variable name parsed, or def when it is
// not set; a value that does not parse fails the test.
func envValue[T any](t *testing.T, name string, def T, parse func(string) (T, error)) T {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	x, err := parse(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return x
}

// startCluster starts the three nodes, stopped when the test ends, also
// when it fails, and before the test binary's deadline panics (which runs
// no cleanup).
func startCluster(t *testing.T) *Cluster {
	t.Helper()
	if os.Getenv(enableVar) != "1" {
		t.Skipf("starts a three-node RabbitMQ cluster: set %s=1 (make cluster)", enableVar)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run the nodes as the rabbitmq user")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var started *Cluster
	c, err := Start(ctx, Options{Logf: t.Logf, Register: func(c *Cluster) {
		started = c
		running.Store(c, struct{}{})
	}})
	if err != nil {
		if started != nil {
			running.Delete(started)
		}
		t.Fatal(err)
	}
	if dl, ok := t.Deadline(); ok {
		guard := time.AfterFunc(time.Until(dl)-10*time.Second, func() { c.Close() })
		t.Cleanup(func() { guard.Stop() })
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("stopping the cluster: %v", err)
		}
		running.Delete(c)
		if left := FindNodes(c.names()...); len(left) > 0 {
			t.Errorf("cluster processes left running: %v", left)
		}
	})
	t.Logf("cluster: start and join of %d nodes took %s", len(c.Nodes), c.StartedIn.Round(time.Millisecond))
	return c
}

// TestClusterStartStop checks the harness itself: three nodes in one
// cluster, a quorum queue with a member on each, every process gone
// after Close, and the machine's own RabbitMQ untouched.
func TestClusterStartStop(t *testing.T) {
	c := startCluster(t)
	ctx := context.Background()
	out, err := c.Ctl(ctx, 2, "rabbitmqctl", "cluster_status", "--formatter", "json")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		if !strings.Contains(out, n.Name) {
			t.Errorf("cluster_status from %s does not name %s: %s", c.Nodes[2].Name, n.Name, out)
		}
	}
	if strings.Contains(out, `"rabbit@localhost"`) {
		t.Errorf("the machine's node is in the cluster: %s", out)
	}
	q := "lsmtp.cluster.harness"
	declareQueue(t, c, 0, q)
	if m, err := c.Members(ctx, 1, q); err != nil || len(m) != 3 {
		t.Errorf("queue members %v (%v), want all 3", m, err)
	}
	// As lsmtp declares it (no group size): where RabbitMQ puts members
	// then, for docs/SCALING.md.
	conn, err := amqp.Dial(c.Nodes[1].URL())
	if err != nil {
		t.Fatal(err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(q+".plain", true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	m, err := c.Members(ctx, 1, q+".plain")
	t.Logf("a quorum queue declared without x-quorum-initial-group-size has members %v (%v)", m, err)
	checkDrain(t, c, q)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if left := FindNodes(c.names()...); len(left) != 0 {
		t.Errorf("processes left after Close: %v", left)
	}
	conn, err = amqp.Dial("amqp://guest:guest@127.0.0.1:5672/")
	if err != nil {
		t.Errorf("the machine's RabbitMQ at 5672 does not answer after the cluster ran: %v", err)
	} else {
		conn.Close()
	}
}

// queueArgs makes the quorum queue's group all three nodes, whatever the
// cluster looked like when it was declared.
var queueArgs = map[string]any{"x-quorum-initial-group-size": 3}

// declareQueue declares quorum queue q on node i, which makes node i its

// nodeChannel is a channel on node i, closed with its connection when
// the test ends.
func nodeChannel(t *testing.T, c *Cluster, i int) *amqp.Channel {
	t.Helper()
	conn, err := amqp.Dial(c.Nodes[i].URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// first leader (queue_leader_locator client-local).
func declareQueue(t *testing.T, c *Cluster, i int, q string) {
	t.Helper()
	ch := nodeChannel(t, c, i)
	args := amqp.Table{"x-queue-type": "quorum"}
	for k, v := range queueArgs {
		args[k] = v
	}
	if _, err := ch.QueueDeclare(q, true, false, false, false, args); err != nil {
		t.Fatalf("declare %s on %s: %v", q, c.Nodes[i].Name, err)
	}
}

// stack is lsmtp in-process, as cmd/lsmtp wires it: the engine in front
// of the broker sink, given every node of the cluster.
type stack struct {
	srv    *engine.Server
	brk    *broker.Broker
	addr   string
	served chan error
	once   sync.Once
}

func startStack(t *testing.T, bc broker.Config) *stack {
	t.Helper()
	brk, err := broker.New(bc)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := engine.New(engine.Config{
		Listen:         []string{"127.0.0.1:0"},
		Hostname:       "mx.cluster.test",
		MaxMessageSize: 1 << 20,
		EventLoops:     2,
		Sink:           brk,
		Logger:         rabbittest.Logger(t, slog.LevelWarn),
	})
	if err != nil {
		brk.Close(context.Background())
		t.Fatal(err)
	}
	s := &stack{srv: srv, brk: brk, served: make(chan error, 1)}
	go func() { s.served <- srv.Serve() }()
	addrs := srv.Addrs()
	if len(addrs) == 0 {
		brk.Close(context.Background())
		t.Fatalf("engine did not listen: %v", <-s.served)
	}
	s.addr = addrs[0].String()
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Errorf("stopping lsmtp: %v", err)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !brk.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("lsmtp not connected to the cluster within 30 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s
}

// stop shuts down as cmd/lsmtp does: the engine (transactions in flight
// finish), then the broker drains what it holds.
func (s *stack) stop() error {
	var err error
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if e := s.srv.Shutdown(ctx); e != nil {
			err = fmt.Errorf("engine shutdown: %w", e)
		}
		if e := s.brk.Close(ctx); e != nil && err == nil {
			err = fmt.Errorf("broker close: %w", e)
		}
		<-s.served
	})
	return err
}

// checkDrain shows that the faults' verdict can fail: drain matches a
// queue holding queue IDs A, B, B and C (C's token again under D) against
// 250s for A, B, C and E, and must find E lost and two duplicates (B's
// second copy, and the token stored under both C and D).
func checkDrain(t *testing.T, c *Cluster, q string) {
	t.Helper()
	ch := nodeChannel(t, c, 0)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, 8))
	stored := []struct{ id, token string }{{"A", "ta"}, {"B", "tb"}, {"B", "tb"}, {"C", "tc"}, {"D", "tc"}}
	for _, m := range stored {
		err := ch.Publish("", q, false, false, amqp.Publishing{MessageId: m.id, Body: body(m.token, 200), DeliveryMode: amqp.Persistent})
		if err != nil {
			t.Fatal(err)
		}
		if cf := <-confirms; !cf.Ack {
			t.Fatalf("publish %s not confirmed", m.id)
		}
	}
	got, err := drain(c.Nodes[1].URL(), q, map[string]string{"A": "ta", "B": "tb", "C": "tc", "E": "te"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if got.inQueue != 5 || len(got.lost) != 1 || got.lost[0] != "E" || got.duplicates != 2 || got.foreign != 0 {
		t.Errorf("drain: %+v, want 5 in the queue, E lost, 2 duplicates", got)
	}
}
