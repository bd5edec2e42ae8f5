package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/broker"
	"github.com/lsmtp/lsmtp/internal/rabbittest"
)

// retryWindow is how long the broker keeps republishing a message the
// cluster refused or lost before the client gets 451: within it a fault
// must cost senders latency, not tempfails.
//
// retryWindow is how long a message may wait for the cluster: a fault
// shorter than it must cost no tempfail (0: tempfails are only reported).
func retryWindow(cfg broker.Config) time.Duration { return cfg.PublishRetryWindow }

// fault is one way the cluster fails under load.
type fault struct {
	name string
	doc  string
	// first picks the node lsmtp connects to first, given the node that
	// leads the queue.
	first func(leader int) int
	// inject makes the fault happen and undoes it (every node runs again
	// when it returns); outage is the longest time one node was away.
	inject func(ctx context.Context, t *testing.T, c *Cluster, q string, leader int) (outage time.Duration, err error)
}

// nodeDown is how long a killed node stays down before it is started
// again (it then takes its start time to come back).
const nodeDown = 3 * time.Second

var faults = []fault{
	{
		name:  "kill-connected",
		doc:   "kill -9 of the node lsmtp is connected to, which also leads the queue; started again after 3 s",
		first: func(leader int) int { return leader },
		inject: func(ctx context.Context, t *testing.T, c *Cluster, q string, leader int) (time.Duration, error) {
			return killAndRestart(ctx, t, c, q, leader)
		},
	},
	{
		name:  "kill-leader",
		doc:   "kill -9 of the queue's leader while lsmtp is connected to another node; started again after 3 s",
		first: func(leader int) int { return (leader + 1) % 3 },
		inject: func(ctx context.Context, t *testing.T, c *Cluster, q string, leader int) (time.Duration, error) {
			return killAndRestart(ctx, t, c, q, leader)
		},
	},
	{
		name:  "restart",
		doc:   "rabbitmqctl stop of the node lsmtp is connected to and that leads the queue, started again, rejoins",
		first: func(leader int) int { return leader },
		inject: func(ctx context.Context, t *testing.T, c *Cluster, q string, leader int) (time.Duration, error) {
			return restart(ctx, t, c, q, leader)
		},
	},
	{
		name:  "rolling",
		doc:   "rolling restart: each node in turn stopped, started and back in the queue before the next",
		first: func(leader int) int { return 0 },
		inject: func(ctx context.Context, t *testing.T, c *Cluster, q string, leader int) (time.Duration, error) {
			var worst time.Duration
			for i := range c.Nodes {
				d, err := restart(ctx, t, c, q, i)
				if err != nil {
					return worst, err
				}
				worst = max(worst, d)
			}
			return worst, nil
		},
	},
}

func killAndRestart(ctx context.Context, t *testing.T, c *Cluster, q string, i int) (time.Duration, error) {
	begin := time.Now()
	if err := c.Kill(i); err != nil {
		return 0, err
	}
	t.Logf("%s killed", c.Nodes[i].Name)
	sleep(ctx, nodeDown)
	if err := c.StartNode(ctx, i); err != nil {
		return time.Since(begin), err
	}
	outage := time.Since(begin)
	t.Logf("%s up again after %s", c.Nodes[i].Name, outage.Round(time.Millisecond))
	return outage, awaitMembers(ctx, c, q, i)
}

func restart(ctx context.Context, t *testing.T, c *Cluster, q string, i int) (time.Duration, error) {
	begin := time.Now()
	if err := c.Stop(ctx, i); err != nil {
		return 0, err
	}
	stopped := time.Since(begin)
	if err := c.StartNode(ctx, i); err != nil {
		return time.Since(begin), err
	}
	outage := time.Since(begin)
	t.Logf("%s stopped in %s, up again after %s", c.Nodes[i].Name, stopped.Round(time.Millisecond), outage.Round(time.Millisecond))
	return outage, awaitMembers(ctx, c, q, i)
}

// awaitMembers waits until every node's member of queue q is leader or
// follower again, asking node i.
func awaitMembers(ctx context.Context, c *Cluster, q string, i int) error {
	deadline := time.Now().Add(90 * time.Second)
	for {
		m, err := c.Members(ctx, i, q)
		if err == nil && len(m) == len(c.Nodes) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("queue %s members %v 90 s after %s came back (%v)", q, m, c.Nodes[i].Name, err)
		}
		sleep(ctx, 500*time.Millisecond)
	}
}

// result is one fault's measurements.
type result struct {
	name       string
	outage     time.Duration // longest time one node was away
	attempts   int64
	acked      int
	tempfailed int
	tempfails  map[string]int
	noReply    int
	connErrs   int
	gap        time.Duration // longest time without a 250 from the fault on
	resumed    time.Duration // fault start to the end of that gap: 250s flow again
	tempFrom   time.Duration // first and last 4xx, from the fault start
	tempTo     time.Duration
	p99, pmax  time.Duration // end of body to 250
	lost       int
	duplicates int
}

func (r result) String() string {
	var tf []string
	for k, v := range r.tempfails {
		tf = append(tf, fmt.Sprintf("%s x%d", k, v))
	}
	sort.Strings(tf)
	window := ""
	if r.tempfailed > 0 {
		window = fmt.Sprintf(" from %+.2fs to %+.2fs", r.tempFrom.Seconds(), r.tempTo.Seconds())
	}
	return fmt.Sprintf("%-15s outage %5s  attempts %6d  250 %6d  4xx %5d %v%s  no-reply %d  conn-errors %d  longest gap without a 250 %6s (250s flow again %+.2fs after the fault)  250 latency p99 %s max %s  lost %d  duplicates %d",
		r.name, r.outage.Round(100*time.Millisecond), r.attempts, r.acked, r.tempfailed, tf, window, r.noReply, r.connErrs,
		r.gap.Round(10*time.Millisecond), r.resumed.Seconds(), r.p99.Round(time.Millisecond), r.pmax.Round(time.Millisecond), r.lost, r.duplicates)
}

// TestClusterFaults runs lsmtp against the cluster under load from
// LSMTP_CLUSTER_SESSIONS sessions through each fault in turn and holds
// the queue against every 250: a message answered 250 and not in the
// queue fails the test, whatever the fault.
func TestClusterFaults(t *testing.T) {
	c := startCluster(t)
	duration := envValue(t, "LSMTP_CLUSTER_DURATION", 20*time.Second, time.ParseDuration)
	sessions := envValue(t, "LSMTP_CLUSTER_SESSIONS", 30, strconv.Atoi)
	rate := float64(envValue(t, "LSMTP_CLUSTER_RATE", 400, strconv.Atoi))
	only := strings.Split(os.Getenv("LSMTP_CLUSTER_FAULTS"), ",")
	var results []result
	for _, f := range faults {
		if only[0] != "" && !slices.Contains(only, f.name) {
			continue
		}
		t.Run(f.name, func(t *testing.T) {
			t.Logf("%s: %s", f.name, f.doc)
			r := runFault(t, c, f, duration, sessions, rate)
			results = append(results, r)
			t.Log(r)
		})
	}
	t.Logf("cluster: %d sessions, %.0f msg/s offered, load for at least %s around each fault", sessions, rate, duration)
	for _, r := range results {
		t.Log(r)
	}
}

func runFault(t *testing.T, c *Cluster, f fault, duration time.Duration, sessions int, rate float64) result {
	ctx := context.Background()
	q := "lsmtp.cluster." + f.name
	declareQueue(t, c, 0, q)
	t.Cleanup(func() { deleteTopology(t, c, q) })
	leader, err := c.Leader(ctx, 0, q)
	if err != nil {
		t.Fatal(err)
	}
	first := f.first(leader)
	order := []int{first}
	for i := range c.Nodes {
		if i != first {
			order = append(order, i)
		}
	}
	bc := broker.DefaultConfig()
	bc.URLs = nil // never the machine's RabbitMQ
	for _, i := range order {
		bc.URLs = append(bc.URLs, c.Nodes[i].URL())
	}
	bc.Exchange, bc.Queue, bc.RoutingKey = q, q, "inbound"
	bc.QueueArgs = queueArgs
	bc.Node = "cluster-" + f.name
	bc.Logger = rabbittest.Logger(t, slog.LevelInfo)
	s := startStack(t, bc)
	if at, err := c.Connected(ctx, "lsmtp "+bc.Node); err != nil || !slices.Equal(at, []int{first}) {
		t.Fatalf("lsmtp connected to nodes %v (%v), want %d", at, err, first)
	}
	t.Logf("queue %s led by %s, lsmtp connected to %s", q, c.Nodes[leader].Name, c.Nodes[first].Name)

	l := newLedger()
	ld := &load{sessions: sessions, rate: rate, size: 2048, addr: func() string { return s.addr }, ledger: l}
	loadCtx, stopLoad := context.WithCancel(ctx)
	loadDone := make(chan struct{})
	begin := time.Now()
	go func() {
		defer close(loadDone)
		ld.run(loadCtx)
	}()
	defer func() { stopLoad(); <-loadDone }()
	sleep(ctx, 3*time.Second) // steady state first
	l.mu.Lock()
	warm := len(l.acked)
	l.mu.Unlock()
	if warm == 0 {
		t.Fatalf("no 250 in the first 3 s: %v %v", l.tempfails, l.problems)
	}
	faultAt := time.Now()
	outage, injectErr := f.inject(ctx, t, c, q, leader)
	recovered := time.Now()
	end := begin.Add(duration)
	if tail := recovered.Add(5 * time.Second); tail.After(end) {
		end = tail
	}
	sleep(ctx, time.Until(end))
	stopLoad()
	<-loadDone
	stopAt := time.Now()
	if err := s.stop(); err != nil {
		t.Errorf("stopping lsmtp: %v", err)
	}
	if injectErr != nil {
		t.Errorf("%s: %v", f.name, injectErr)
	}
	for i := range c.Nodes {
		if !c.Running(i) {
			if err := c.StartNode(ctx, i); err != nil {
				t.Fatalf("restoring %s: %v", c.Nodes[i].Name, err)
			}
		}
	}

	l.mu.Lock()
	acked := make(map[string]string, len(l.acked))
	for k, v := range l.acked {
		acked[k] = v
	}
	r := result{name: f.name, outage: outage, attempts: l.attempts.Load(), acked: len(l.acked), tempfailed: l.tempfailed(),
		tempfails: l.tempfails, noReply: l.noReply, connErrs: l.connErrs}
	problems, permfails := l.problems, l.permfails
	if r.tempfailed > 0 {
		r.tempFrom, r.tempTo = l.firstTemp.Sub(faultAt), l.lastTemp.Sub(faultAt)
	}
	l.mu.Unlock()
	gap, resumedAt := l.longestGap(faultAt, stopAt)
	r.gap = gap
	if !resumedAt.IsZero() {
		r.resumed = resumedAt.Sub(faultAt)
	} else {
		t.Errorf("no 250 in the last %s of the run: lsmtp did not resume", gap.Round(time.Millisecond))
	}
	r.p99, r.pmax = l.latencyQuantile(0.99), l.latencyQuantile(1)

	m, err := drain(c.Nodes[0].URL(), q, acked, 3*time.Minute)
	if err != nil {
		t.Fatalf("draining %s: %v", q, err)
	}
	r.lost, r.duplicates = len(m.lost), m.duplicates

	totals.ran.Store(true)
	totals.faults.Add(1)
	totals.acked.Add(int64(r.acked))
	totals.tempfailed.Add(int64(r.tempfailed))
	totals.lost.Add(int64(r.lost))
	totals.duplicates.Add(int64(r.duplicates))

	// What may never happen, whatever the fault.
	if r.lost > 0 {
		t.Errorf("LOST: %d messages answered 250 are not in the queue (first: %v)", r.lost, m.lost[:min(10, len(m.lost))])
	}
	if len(permfails) > 0 {
		t.Errorf("5xx for the cluster's trouble: %v", permfails)
	}
	if len(problems) > 0 {
		t.Errorf("impossible replies: %v", problems[:min(10, len(problems))])
	}
	if m.foreign > 0 {
		t.Errorf("%d messages in the queue without a token", m.foreign)
	}
	// Inside the retry window a fault costs latency, not 451s.
	if w := retryWindow(bc); w > 0 && outage < w && r.tempfailed > 0 {
		t.Errorf("%d tempfails for a fault of %s, shorter than the publish retry window %s: %v",
			r.tempfailed, outage.Round(time.Millisecond), w, r.tempfails)
	}
	return r
}

// deleteTopology deletes the fault's queue and exchange on a running node.
func deleteTopology(t *testing.T, c *Cluster, name string) {
	for i, n := range c.Nodes {
		if !c.Running(i) {
			continue
		}
		conn, err := amqp.Dial(n.URL())
		if err != nil {
			continue
		}
		defer conn.Close()
		if ch, err := conn.Channel(); err == nil {
			if _, err := ch.QueueDelete(name, false, false, false); err != nil {
				t.Logf("delete queue %s: %v", name, err)
			}
			ch.Close()
		}
		if ch, err := conn.Channel(); err == nil {
			ch.ExchangeDelete(name, false, false)
			ch.Close()
		}
		return
	}
}
