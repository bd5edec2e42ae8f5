package bench

import (
	"fmt"
	"slices"
	"strings"
)

// Markdown is the JetStream section.
func (r *NATSReport) Markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	c := r.Config
	w("## lsmtp → NATS JetStream\n\n")
	b.WriteString(measuredWith("nats", r.Started, "nats-server "+orUnknown(r.NATSServer)+" and RabbitMQ "+orUnknown(r.RabbitMQ), r.Took, r.Load))
	w("Each pair runs, one after the other: the *ceiling*, a plain nats.go publisher (`bench.NATSCeilingPublish`: `PublishMsgAsync` on one connection, "+
		"at most %d unacknowledged, no SMTP) sending lsmtp's own message again (the last one lsmtp published in its warm-up: %d octets of body, headers %s, "+
		"a Nats-Msg-Id of its own per publish) for %v; lsmtp `--sink nats`, and lsmtp `--sink amqp` (its defaults: a quorum queue), each under the same "+
		"SMTP load (%d pipelined sessions, %d messages per connection, a %v window after 2 s of warm-up: the loopback rows' load through RabbitMQ). "+
		"lsmtp declares the stream `%s` (file storage); it is purged before every JetStream run and deleted at the end, and the queue is purged "+
		"before every RabbitMQ run. After each run the stream or queue must hold every message answered 250. "+
		"*Broker* is nats-server's (or the oldest `beam.smp`'s) utime+stime and syscr+syscw from /proc over the window, *lsmtp* lsmtp's CPU, *client* the load "+
		"generator's or the ceiling's publisher's, all per message; *busy* is the whole machine's busy CPU over the window, in cores (other programs included). Cells are the median of %d pair(s) and, in brackets, the range; "+
		"÷ ceiling is the median rate ÷ the ceiling's median, in brackets the range of the pairs' own ratios.\n\n",
		c.Pending, r.BodySize, headerList(r.Headers), c.Window, c.Sessions, c.PerConn, c.Window, r.Stream, c.Pairs)
	w("| run | broker | msg/s | ÷ ceiling | lsmtp CPU-ms/msg | broker CPU-ms/msg | broker syscalls/msg | client CPU-ms/msg | busy cores |\n")
	w("|---|---|---|---|---|---|---|---|---|\n")
	ceiling := r.Runs[NATSCeiling]
	for _, row := range []struct{ id, label, broker string }{
		{NATSCeiling, "raw nats.go async publish (ceiling)", "nats-server"},
		{NATSLsmtp, "lsmtp `--sink nats`", "nats-server"},
		{NATSAMQP, "lsmtp `--sink amqp`", "RabbitMQ"},
	} {
		runs := r.Runs[row.id]
		marks := ""
		for _, nr := range runs {
			if nr.Check != "" || nr.Err != "" {
				marks = " (see notes)"
			}
		}
		ratio := "–"
		if row.id != NATSCeiling {
			ratio = natsRatio(runs, ceiling)
		}
		lsmtpCPU := "–"
		if row.id != NATSCeiling {
			lsmtpCPU = spreadOf(natsPick(runs, func(n NATSRun) float64 { return n.LsmtpCPUms })).format(fmt3)
		}
		var sys []float64
		for _, nr := range runs {
			if nr.Messages > 0 && nr.BrokerSys >= 0 {
				sys = append(sys, nr.BrokerSys)
			}
		}
		w("| %s%s | %s | %s | %s | %s | %s | %s | %s | %s |\n", row.label, marks, row.broker,
			spreadOf(natsPick(runs, natsRate)).format(num), ratio, lsmtpCPU,
			spreadOf(natsPick(runs, func(n NATSRun) float64 { return n.BrokerCPUms })).format(fmt3),
			spreadOf(sys).format(fmt2),
			spreadOf(natsPick(runs, func(n NATSRun) float64 { return n.ClientCPUms })).format(fmt3),
			spreadOf(natsPick(runs, func(n NATSRun) float64 { return n.BusyCores })).format(fmt2))
	}
	w("\n")
	// On a machine whose cores are all busy, rates go as the inverse of
	// the CPU every message costs the processes that share them.
	total := func(runs []NATSRun) float64 {
		return spreadOf(natsPick(runs, func(n NATSRun) float64 { return n.LsmtpCPUms + n.BrokerCPUms + n.ClientCPUms })).Med
	}
	if tc, tl := total(ceiling), total(r.Runs[NATSLsmtp]); tc > 0 && tl > 0 {
		w("CPU per message of every process in the path (medians): the ceiling %.0f µs (nats-server and publisher); lsmtp → JetStream %.0f µs "+
			"(lsmtp, nats-server and the load generator). Where the cores are the limit (see *busy*), that alone caps lsmtp at %.2f of the ceiling.\n\n",
			tc*1000, tl*1000, tc/tl)
	}
	if l, cl := spreadOf(natsPick(r.Runs[NATSLsmtp], natsRate)), spreadOf(natsPick(ceiling, natsRate)); l.N > 0 && cl.N > 0 && cl.Med > 0 {
		verdict := "met"
		if l.Med/cl.Med < TargetCeilingRatio {
			verdict = "**missed**"
		}
		w("Target: lsmtp → JetStream ≥ %.2f of the ceiling: %s (%.3f).\n\n", TargetCeilingRatio, verdict, l.Med/cl.Med)
	}
	w("lsmtp → JetStream: `%s`; lsmtp → RabbitMQ: `%s`.\n\n", r.LsmtpNATS, r.LsmtpAMQP)
	w("Repeat with `lsmtp-bench nats -pairs %d -sessions %d -per-conn %d -window %v -pending %d`.\n\n", c.Pairs, c.Sessions, c.PerConn, c.Window, c.Pending)
	b.WriteString(notesMarkdown(r.Notes))
	return b.String()
}

func natsRate(n NATSRun) float64 { return n.Rate }

// natsPick is one figure of the runs that counted messages, in pair order.
func natsPick(runs []NATSRun, f func(NATSRun) float64) []float64 {
	var out []float64
	for _, nr := range runs {
		if nr.Messages > 0 {
			out = append(out, f(nr))
		}
	}
	return out
}

// natsRatio is the median rate of runs ÷ the ceiling's, and the range of
// each pair's own ratio.
func natsRatio(runs, ceiling []NATSRun) string {
	l, c := spreadOf(natsPick(runs, natsRate)), spreadOf(natsPick(ceiling, natsRate))
	if l.N == 0 || c.N == 0 || c.Med == 0 {
		return "–"
	}
	var pairs []float64
	for i := range min(len(runs), len(ceiling)) {
		if runs[i].Messages > 0 && ceiling[i].Rate > 0 {
			pairs = append(pairs, runs[i].Rate/ceiling[i].Rate)
		}
	}
	ps := spreadOf(pairs)
	if ps.N <= 1 {
		return fmt.Sprintf("**%.2f**", l.Med/c.Med)
	}
	return fmt.Sprintf("**%.2f** (%.2f–%.2f)", l.Med/c.Med, ps.Min, ps.Max)
}

func headerList(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	s := slices.Clone(names)
	slices.Sort(s)
	return "`" + strings.Join(s, "`, `") + "`"
}
