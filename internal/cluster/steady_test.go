package cluster

import (
	"context"
	"log/slog"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/broker"
	"github.com/lsmtp/lsmtp/internal/rabbittest"
)

// TestClusterSteady is the baseline for the faults: lsmtp against the
// cluster with no fault, the sessions sending as fast as they go, and the
// CPU each RabbitMQ node spent per message (the leader of the quorum
// queue and its two followers) next to what this process (lsmtp and the
// load generator together) spent. docs/SCALING.md sizes clusters from it.
func TestClusterSteady(t *testing.T) {
	c := startCluster(t)
	duration := min(envValue(t, "LSMTP_CLUSTER_DURATION", 20*time.Second, time.ParseDuration), 20*time.Second)
	sessions := envValue(t, "LSMTP_CLUSTER_SESSIONS", 30, strconv.Atoi)
	ctx := context.Background()
	q := "lsmtp.cluster.steady"
	declareQueue(t, c, 0, q)
	t.Cleanup(func() { deleteTopology(t, c, q) })
	leader, err := c.Leader(ctx, 0, q)
	if err != nil {
		t.Fatal(err)
	}
	bc := broker.DefaultConfig()
	bc.URLs = c.URLs()
	bc.Exchange, bc.Queue, bc.RoutingKey = q, q, "inbound"
	bc.QueueArgs = queueArgs
	bc.Node = "cluster-steady"
	bc.Logger = rabbittest.Logger(t, slog.LevelWarn)
	s := startStack(t, bc)

	l := newLedger()
	ld := &load{sessions: sessions, size: 2048, addr: func() string { return s.addr }, ledger: l}
	loadCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		ld.run(loadCtx)
	}()
	defer func() { stop(); <-done }()
	sleep(ctx, 2*time.Second) // past the start
	cpu := func() (nodes []time.Duration, self time.Duration) {
		for i := range c.Nodes {
			d, err := c.CPUTime(i)
			if err != nil {
				t.Fatal(err)
			}
			nodes = append(nodes, d)
		}
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		return nodes, self
	}
	count := func() int {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.acked)
	}
	n0, self0 := cpu()
	a0, t0 := count(), time.Now()
	sleep(ctx, duration)
	n1, self1 := cpu()
	a1, elapsed := count(), time.Since(t0)
	stop()
	<-done
	if err := s.stop(); err != nil {
		t.Errorf("stopping lsmtp: %v", err)
	}
	msgs := a1 - a0
	if msgs == 0 {
		t.Fatal("no 250 in the measured window")
	}
	perMsg := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(msgs) }
	var total time.Duration
	for i := range c.Nodes {
		d := n1[i] - n0[i]
		total += d
		role := "follower"
		if i == leader {
			role = "leader"
		}
		t.Logf("steady: %s (%s) %.2f cores, %.0f µs CPU per message", c.Nodes[i].Name, role, d.Seconds()/elapsed.Seconds(), perMsg(d))
	}
	t.Logf("steady: %d sessions, %.0f msg/s over %s; RabbitMQ cluster %.0f µs CPU per message (%.2f cores), lsmtp+generator %.0f µs (%.2f cores); tempfails %d",
		sessions, float64(msgs)/elapsed.Seconds(), elapsed.Round(time.Millisecond), perMsg(total), total.Seconds()/elapsed.Seconds(),
		perMsg(self1-self0), (self1-self0).Seconds()/elapsed.Seconds(), l.tempfailed())

	l.mu.Lock()
	acked := l.acked
	l.mu.Unlock()
	m, err := drain(c.Nodes[0].URL(), q, acked, 3*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.lost) > 0 {
		t.Errorf("LOST: %d messages answered 250 are not in the queue", len(m.lost))
	}
}
