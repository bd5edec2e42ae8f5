package bench

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Targets of the benchmark (measured, not asserted in tests).
const (
	TargetBoundRatio   = 0.97  // measured ÷ protocol bound at 315 ms RTT
	TargetCeilingRatio = 0.85  // loopback amqp rows ÷ raw publish ceiling
	TargetPipeRTTs     = 5.0   // per-message latency with pipelining, in round trips
	TargetBest         = 10000 // messages/s through RabbitMQ at 315 ms RTT
	PaperBest          = 4385
)

func (s *Suite) writeReport(out string, failure error) error {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	mi := s.info

	w("# lsmtp benchmarks\n\n")
	if failure != nil {
		w("**THIS RUN FAILED: %v.** The tables below hold the rows run up to the failure.\n\n", failure)
	}
	w("Written by `make bench` (`%s`) on %s, from commit `%s`; the whole suite took %s.\n",
		s.cfg.Command, mi.Date.UTC().Format("2006-01-02 15:04 MST"), mi.Commit, time.Since(s.start).Round(time.Second))
	w("Every figure below comes from that one run, up to the part headed \"Measured apart from this run\"; nothing is edited by hand.\n\n")

	w("## Machine\n\n")
	w("| | |\n|---|---|\n")
	w("| CPU | %s, %d cores |\n| Memory | %.1f GiB |\n| Kernel | Linux %s |\n| Go | %s |\n| RabbitMQ | %s (quorum queue `%s`, on the same machine) |\n",
		mi.CPUModel, mi.Cores, mi.MemoryGiB, mi.Kernel, mi.Go, orUnknown(mi.RabbitMQ), s.cfg.Queue)
	w("| Postfix | %s |\n| Load average at start | %.2f |\n| Open file limit (hard) | %d |\n\n", orUnknown(mi.Postfix), mi.Load1, mi.FileLimit)
	w("The load generator, the SMTP server and RabbitMQ share these %d cores: every row's CPU use is in the [CPU table](#cpu-per-row), "+
		"including what other processes on the machine took meanwhile.\n\n", mi.Cores)

	s.writeMethod(w)
	s.writeTargets(w)
	s.writeTableI(w, "plain", "Table I reproduced: one message per connection, no pipelining (the paper's mode)",
		"Each session connects, reads the greeting, sends EHLO, MAIL, RCPT, DATA, the body and QUIT, each waiting for its reply, and starts over: 8 round trips per message.")
	s.writeTableI(w, "pipe", "Table I with pipelining (RFC 2920)",
		"Same sessions; MAIL, RCPT and DATA go in one packet, the body carries QUIT: connect, greeting, EHLO, MAIL+RCPT+DATA, body+QUIT = 5 round trips.")
	s.writeTableI(w, "bdat", "Table I with pipelining and BDAT (RFC 3030 CHUNKING)",
		"MAIL, RCPT, BDAT LAST with the message and QUIT in one packet: connect, greeting, EHLO, then one round trip = 4 round trips.")
	s.writeScale(w)
	s.writeLoopback(w)
	s.writePostfix(w)
	for _, sec := range s.sections {
		w("%s", sec.Markdown())
	}
	s.writeCPU(w)
	s.writePlots(w, out)
	s.writeProfile(w)
	s.writeCommands(w)
	if len(s.notes) > 0 {
		w("## Notes from the run\n\n")
		for _, n := range s.notes {
			w("- %s\n", n)
		}
		w("\n")
	}
	if s.cfg.Notes != "" {
		notes, err := os.ReadFile(s.cfg.Notes)
		if err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("bench notes: %w", err)
		}
		if len(notes) > 0 {
			w("# Measured apart from this run\n\n")
			w("The sections below come from `%s`, written by hand from runs of their own; each says when and how it was measured. `make bench` copies them here as they are.\n\n", s.cfg.Notes)
			b.Write(notes)
		}
	}
	return os.WriteFile(out, []byte(b.String()), 0o644)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func (s *Suite) writeMethod(w func(string, ...any)) {
	w("## Method\n\n")
	w("- **Generator** (`cmd/lsmtp-bench`, package `bench/`): every session is a state machine on a few epoll loops " +
		"(one per core), so 30,000 sessions cost no goroutines or timers of their own. A message succeeds only on its final 2xx; " +
		"latency runs from the start of the message (for the first message of a connection: from the connect) to that reply.\n")
	w("- **Emulated network** (client side only; the server runs unmodified on loopback): a write reaches the server RTT/2 later; " +
		"bytes from the server are read as they arrive and handed to the client RTT/2 later; the connect costs a round trip " +
		"(SYN, SYN-ACK) and the server sees it half a round trip later (the ACK), so the greeting arrives two round trips after the " +
		"connect began, as on a real network. Each direction is a FIFO per loop with one constant delay, so chunks keep their order " +
		"and never wait behind each other's delay (tested in `bench/netem_test.go`).\n")
	w("- **Bound**: by Little's law a row cannot exceed sessions ÷ (round trips per message × RTT), counting connect, greeting " +
		"and the wait for the 221. *ratio* = measured ÷ bound: 1.0 means the round trips, not the server, set the pace.\n")
	w("- **Rows**: sessions start evenly over one message cycle (a burst of SYNs would overflow the listen backlog), run one more "+
		"cycle to settle, then messages/s and latency are measured over a %v window; afterwards sessions finish what they are doing.\n", s.cfg.Window)
	w("- **RabbitMQ check**: before every lsmtp → RabbitMQ row the queue `%s` (exchange `%s`, routing key `%s`) is purged; after it "+
		"the queue's message count (passive declare) must equal the 2xx replies the generator saw. More is allowed only after a 4xx "+
		"or a connection lost after the message was sent; fewer stops the run.\n", s.cfg.Queue, s.cfg.Exchange, s.cfg.RoutingKey)
	w("- **Paper**: Table I of the LSMTP paper (section V): \"clients × concurrency\" sessions at about 315 ms of network latency, " +
		"on a 2 vCPU, 4 GB server.\n\n")
}

// rowsIn returns the results of a group, in order.
func (s *Suite) rowsIn(group string) []*RowResult {
	var out []*RowResult
	for _, rr := range s.results {
		if rr.Group == group {
			out = append(out, rr)
		}
	}
	return out
}

func check(rr *RowResult) string {
	if !rr.Checked {
		return "–"
	}
	if rr.CheckPassed {
		return "✓ " + rr.CheckNote
	}
	return "✗ " + rr.CheckNote
}

// held is a row's peak of what lsmtp held: octets (and their share of
// the budget), messages.
func held(rr *RowResult) string {
	if rr.InFlightLimit <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f MB (%.1f %%), %s msgs", rr.PeakInFlight/1e6, 100*rr.PeakInFlight/rr.InFlightLimit, num(rr.PeakPending))
}

func rtts(d time.Duration, rtt time.Duration) string {
	if rtt <= 0 {
		return ""
	}
	return fmt.Sprintf("%.2f", d.Seconds()/rtt.Seconds())
}

func sec(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 3, 64) }

func num(f float64) string {
	s := strconv.FormatFloat(f, 'f', 0, 64)
	// Thousands separators for readability.
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		return "-" + s
	}
	return s
}

func (s *Suite) writeTableI(w func(string, ...any), group, title, how string) {
	rows := s.rowsIn(group)
	if len(rows) == 0 {
		return
	}
	w("## %s\n\n%s RTT %v.\n\n", title, how, PaperRTT)
	if group == "plain" {
		w("The paper's figures imply fewer round trips per message than this dialogue needs: *paper RTT/msg* is "+
			"sessions ÷ (paper msg/s × RTT), the message cycle by Little's law, %.1f–%.1f round trips against the 8 of connect, "+
			"greeting, EHLO, MAIL, RCPT, DATA, body and QUIT. So at equal sessions this honest mode cannot reach the paper's "+
			"msg/s; the pipelined tables below do.\n\n", paperRTTs(math.Min), paperRTTs(math.Max))
	}
	w("| clients × concurrency | sessions | paper msg/s | paper latency s | paper RTT/msg | msg/s | bound | ratio | vs paper | p50 s | p90 s | p99 s | max s | p50 in RTT | RabbitMQ count = 2xx |\n")
	w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, rr := range rows {
		p := rr.Paper
		if rr.Res == nil {
			w("| %d × %d | %d | %s | %.2f | %.2f | failed: %s |||||||||\n", p.Clients, p.Concurrency, p.Sessions(), num(p.Throughput), p.Latency, p.RoundTrips(), rr.Err)
			continue
		}
		r := rr.Res
		l := r.Latency
		w("| %d × %d | %s | %s | %.2f | %.2f | **%s** | %s | %.3f | %.2f× | %s | %s | %s | %s | %s | %s |\n",
			p.Clients, p.Concurrency, num(float64(p.Sessions())), num(p.Throughput), p.Latency, p.RoundTrips(),
			num(r.Rate), num(r.Bound), r.Rate/r.Bound, r.Rate/p.Throughput,
			sec(l.P50), sec(l.P90), sec(l.P99), sec(l.Max), rtts(l.P50, rr.Load.RTT), check(rr))
	}
	w("\n")
	s.writeRowErrors(w, rows)
}

// paperRTTs folds f (math.Min or math.Max) over the paper's implied round
// trips per message.
func paperRTTs(f func(a, b float64) float64) float64 {
	v := PaperTable[0].RoundTrips()
	for _, p := range PaperTable[1:] {
		v = f(v, p.RoundTrips())
	}
	return v
}

func (s *Suite) writeRowErrors(w func(string, ...any), rows []*RowResult) {
	for _, rr := range rows {
		if rr.Res == nil {
			continue
		}
		r := rr.Res
		var parts []string
		if r.Tempfail+r.Permfail > 0 {
			parts = append(parts, fmt.Sprintf("%d 4xx and %d 5xx final replies", r.Tempfail, r.Permfail))
		}
		if r.Errors > 0 {
			parts = append(parts, fmt.Sprintf("%d connection errors (%s)", r.Errors, strings.Join(r.TopErrors(3), "; ")))
		}
		if r.NoPipe+r.NoChunk > 0 {
			parts = append(parts, fmt.Sprintf("PIPELINING missing on %d and CHUNKING on %d connections", r.NoPipe, r.NoChunk))
		}
		if rr.Err != "" {
			parts = append(parts, "error: "+rr.Err)
		}
		if len(parts) > 0 {
			w("- `%s`: %s.\n", rr.ID, strings.Join(parts, ", "))
		}
	}
	w("\n")
}

func (s *Suite) writeScale(w func(string, ...any)) {
	rows := s.rowsIn("scale")
	if len(rows) == 0 {
		return
	}
	w("## Many sessions\n\nlsmtp → RabbitMQ at %v RTT.\n\n", PaperRTT)
	w("*open* is the connections lsmtp held (its `lsmtp_connections_open`) as the window closed. It is below the sessions " +
		"because a session spends one and a half round trips of every connection before the server sees it (SYN, SYN-ACK, ACK) " +
		"and, when the machine is saturated, more in the listen backlog.\n\n")
	w("*4xx* counts the whole run (ramp, window and drain). *held, peak* is the most lsmtp held at once during the window, sampled every 250 ms: " +
		"message octets (`lsmtp_in_flight_bytes`) as a share of the in-flight budget (`--max-in-flight-bytes`), and messages in the broker " +
		"(`lsmtp_broker_pending_messages`: in the hand-off ring, unconfirmed or deferred).\n\n")
	w("| row | sessions | open | dialogue | lsmtp processes | generator processes | msg/s | bound | ratio | p50 s | p99 s | max s | p50 in RTT | 4xx | held, peak | RabbitMQ count = 2xx |\n")
	w("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n")
	for _, rr := range rows {
		if rr.Res == nil {
			w("| %s | %s | | %s | %d | | failed: %s |||||||||\n", rr.ID, num(float64(rr.Load.Sessions)), mode(rr.Load), rr.Instances, rr.Err)
			continue
		}
		r := rr.Res
		w("| %s | %s | %s | %s | %d | %d | **%s** | %s | %.3f | %s | %s | %s | %s | %s | %s | %s |\n",
			rr.ID, num(float64(rr.Load.Sessions)), num(float64(rr.OpenConns)), mode(rr.Load), rr.Instances, r.Processes, num(r.Rate), num(r.Bound), r.Rate/r.Bound,
			sec(r.Latency.P50), sec(r.Latency.P99), sec(r.Latency.Max), rtts(r.Latency.P50, rr.Load.RTT), num(float64(r.Tempfail)), held(rr), check(rr))
	}
	w("\n")
	if mi := s.info; mi.FileLimit > 0 && mi.FileLimit < 30000 {
		w("Every connection is a file descriptor at both ends. This machine's hard RLIMIT_NOFILE is %d and cannot be raised "+
			"(no CAP_SYS_RESOURCE), so rows beyond what one process can hold run several lsmtp processes (on consecutive ports, "+
			"all publishing to the same queue) and several generator processes (on one shared clock).\n\n", mi.FileLimit)
	}
	s.writeRowErrors(w, rows)
}

func (s *Suite) ceiling() float64 {
	for _, rr := range s.results {
		if rr.Kind == KindCeiling && rr.Err == "" {
			return rr.Ceiling
		}
	}
	return 0
}

func (s *Suite) writeLoopback(w func(string, ...any)) {
	rows := s.rowsIn("loopback")
	if len(rows) == 0 {
		return
	}
	ceil := s.ceiling()
	w("## Loopback, no emulated latency\n\n")
	w("What the server and RabbitMQ do flat out on this machine, with the generator on the same cores. ")
	w("The raw ceiling is `broker.MeasureCeiling`: plain amqp091-go publishing with the broker's settings, no SMTP at all. " +
		"The RabbitMQ rows run more sessions than the null-sink rows because RabbitMQ confirms, and its quorum queue writes, " +
		"in batches that grow with the messages outstanding.\n\n")
	w("*CPU µs/msg* is the CPU time each process spent per message (cores ÷ msg/s): RabbitMQ, lsmtp (or the publisher, " +
		"for the ceiling) and the generator.\n\n")
	w("| row | sessions | msg/s | ÷ raw ceiling | p50 ms | p99 ms | max ms | CPU µs/msg RabbitMQ | lsmtp | generator | RabbitMQ count = 2xx |\n")
	w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	perMsg := func(cores, rate float64) string {
		if rate <= 0 || cores <= 0 {
			return ""
		}
		return fmt.Sprintf("%.0f", cores/rate*1e6)
	}
	for _, rr := range rows {
		if rr.Kind == KindCeiling {
			if rr.Err != "" {
				w("| %s | | failed: %s |||||||||\n", rr.Label, rr.Err)
				continue
			}
			w("| %s | | **%s** | 1.000 | | | | %s | %s | | |\n", rr.Label, num(rr.Ceiling),
				perMsg(rr.RabbitCPU, rr.Ceiling), perMsg(rr.GenCPU, rr.Ceiling))
			continue
		}
		if rr.Res == nil {
			w("| %s | %d | failed: %s |||||||||\n", rr.Label, rr.Load.Sessions, rr.Err)
			continue
		}
		r := rr.Res
		ratio := ""
		if ceil > 0 && rr.Kind == KindAMQP {
			ratio = fmt.Sprintf("%.3f", r.Rate/ceil)
		}
		w("| %s | %d | **%s** | %s | %.1f | %.1f | %.1f | %s | %s | %s | %s |\n", rr.Label, rr.Load.Sessions, num(r.Rate), ratio,
			ms64(r.Latency.P50), ms64(r.Latency.P99), ms64(r.Latency.Max),
			perMsg(rr.RabbitCPU, r.Rate), perMsg(rr.ServerCPU, r.Rate), perMsg(rr.GenCPU, r.Rate), check(rr))
	}
	w("\n")
	// Where the gap to the ceiling comes from, in this run's figures.
	var c, best *RowResult
	for _, rr := range rows {
		switch {
		case rr.Kind == KindCeiling && rr.Err == "" && rr.Ceiling > 0:
			c = rr
		case rr.Kind == KindAMQP && rr.Res != nil && rr.Res.Rate > 0 && (best == nil || rr.Res.Rate > best.Res.Rate):
			best = rr
		}
	}
	if c != nil && best != nil {
		cost := func(cores, rate float64) float64 { return cores / rate * 1e6 }
		w("RabbitMQ, lsmtp and the generator share the same %d cores. Per message RabbitMQ spent %.0f µs of CPU in the ceiling "+
			"run and %.0f µs in `%s`; there the SMTP side added lsmtp's %.0f µs and the generator's %.0f µs on the same cores "+
			"(idle: %.2f cores during the ceiling, %.2f during `%s`).\n\n",
			s.info.Cores, cost(c.RabbitCPU, c.Ceiling), cost(best.RabbitCPU, best.Res.Rate), best.ID,
			cost(best.ServerCPU, best.Res.Rate), cost(best.GenCPU, best.Res.Rate),
			max(float64(s.info.Cores)-c.BusyCPU, 0), max(float64(s.info.Cores)-best.BusyCPU, 0), best.ID)
	}
	s.writeRowErrors(w, rows)
}

func ms64(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func (s *Suite) writePostfix(w func(string, ...any)) {
	rows := s.rowsIn("postfix")
	if len(rows) == 0 {
		return
	}
	w("## Postfix smtp-sink under the same generator\n\n")
	w("`smtp-sink` (Postfix %s) accepts and discards mail in one process; it is the reference for what an SMTP server that "+
		"stores nothing can do here. Compare with lsmtp's null-sink rows above and its Table I rows.\n\n", orUnknown(s.info.Postfix))
	w("| row | sessions | RTT | dialogue | msg/s | bound | ratio | p50 s | p99 s |\n|---|---:|---:|---|---:|---:|---:|---:|---:|\n")
	for _, rr := range rows {
		if rr.Res == nil {
			w("| %s | %d | %v | %s | %s |||||\n", rr.Label, rr.Load.Sessions, rr.Load.RTT, mode(rr.Load), rr.Err)
			continue
		}
		r := rr.Res
		bound, ratio := "", ""
		if r.Bound > 0 {
			bound, ratio = num(r.Bound), fmt.Sprintf("%.3f", r.Rate/r.Bound)
		}
		w("| %s | %d | %v | %s | **%s** | %s | %s | %s | %s |\n", rr.Label, rr.Load.Sessions, rr.Load.RTT, mode(rr.Load),
			num(r.Rate), bound, ratio, sec(r.Latency.P50), sec(r.Latency.P99))
	}
	w("\n")
	s.writeRowErrors(w, rows)
}

func (s *Suite) writeCPU(w func(string, ...any)) {
	w("## CPU per row\n\nCores used during each row's window (of %d): the generator, the server process(es), RabbitMQ, "+
		"and everything else that ran on the machine meanwhile (other processes, kernel threads). Loopback TCP is processed in the "+
		"context of whichever side sends, so kernel work is split between generator and server.\n\n", s.info.Cores)
	w("| row | msg/s | generator | server | RabbitMQ | other | busy | load avg at start |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, rr := range s.results {
		rate := ""
		switch {
		case rr.Kind == KindCeiling:
			rate = num(rr.Ceiling)
		case rr.Res != nil:
			rate = num(rr.Res.Rate)
		default:
			continue
		}
		w("| %s | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", rr.ID, rate, rr.GenCPU, rr.ServerCPU, rr.RabbitCPU, rr.OtherCPU, rr.BusyCPU, rr.Load1)
	}
	w("\n")
}

func (s *Suite) writePlots(w func(string, ...any), out string) {
	files, err := WritePlots(s.results, s.cfg.PlotDir)
	if err != nil {
		s.notes = append(s.notes, err.Error())
		return
	}
	w("## Plots\n\n")
	for _, f := range files {
		rel, err := filepath.Rel(filepath.Dir(out), f)
		if err != nil {
			rel = f
		}
		w("![%s](%s)\n\n", strings.TrimSuffix(filepath.Base(f), ".png"), filepath.ToSlash(rel))
	}
}

// Targets.

func (s *Suite) writeTargets(w func(string, ...any)) {
	w("## Targets\n\n| target | result | met |\n|---|---|---|\n")
	yes := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "**no**"
	}
	// 1. The round trips set the pace at 315 ms RTT.
	var worst *RowResult
	var below []string
	n := 0
	for _, rr := range s.results {
		if rr.Res == nil || rr.Kind != KindAMQP || rr.Load.RTT != PaperRTT || rr.Res.Bound == 0 {
			continue
		}
		n++
		ratio := rr.Res.Rate / rr.Res.Bound
		if worst == nil || ratio < worst.Res.Rate/worst.Res.Bound {
			worst = rr
		}
		if ratio < TargetBoundRatio {
			below = append(below, fmt.Sprintf("%s %.3f (%.1f cores busy)", rr.ID, ratio, rr.BusyCPU))
		}
	}
	if worst != nil {
		res := fmt.Sprintf("lowest ratio %.3f (`%s`) over %d rows", worst.Res.Rate/worst.Res.Bound, worst.ID, n)
		if len(below) > 0 {
			res += "; below 0.97: " + strings.Join(below, ", ")
		}
		w("| At %v RTT the round trips set the pace: measured ÷ bound ≥ %.2f, up to 30,000 sessions | %s | %s |\n",
			PaperRTT, TargetBoundRatio, res, yes(len(below) == 0))
	}
	// 2. Pipelining beats the paper at the same sessions, loses nothing, ≤ 5 RTT.
	for _, group := range []string{"pipe", "bdat"} {
		rows := s.rowsIn(group)
		if len(rows) == 0 {
			continue
		}
		beat, lossless, fast := true, true, true
		var slowest float64
		var minVs = -1.0
		for _, rr := range rows {
			if rr.Res == nil {
				beat, lossless, fast = false, false, false
				continue
			}
			vs := rr.Res.Rate / rr.Paper.Throughput
			if minVs < 0 || vs < minVs {
				minVs = vs
			}
			if vs < 1 {
				beat = false
			}
			if !rr.CheckPassed || rr.Res.Lost > 0 || rr.Res.Tempfail+rr.Res.Permfail > 0 {
				lossless = false
			}
			p50 := rr.Res.Latency.P50.Seconds() / rr.Load.RTT.Seconds()
			slowest = max(slowest, p50)
			if p50 > TargetPipeRTTs {
				fast = false
			}
		}
		name := map[string]string{"pipe": "pipelining", "bdat": "pipelining+BDAT"}[group]
		w("| With %s every Table I row ≥ the paper's msg/s at the same sessions | lowest measured ÷ paper %.2f× | %s |\n", name, minVs, yes(beat))
		w("| … with no message lost (RabbitMQ count = 2xx, no 4xx/5xx) | %s | %s |\n", map[bool]string{true: "all rows", false: "see the table"}[lossless], yes(lossless))
		need := RoundTrips(rows[0].Load)
		extra := (slowest - need) * PaperRTT.Seconds() * 1000
		w("| … and per-message latency ≤ %.0f round trips (median, connect to final 2xx) | the dialogue needs %.0f; highest median %.3f RTT = %.0f round trips + %.0f ms of server, broker and scheduling time | %s |\n",
			TargetPipeRTTs, need, slowest, need, extra, yes(fast))
	}
	// 3. Loopback amqp rows against the raw ceiling.
	if ceil := s.ceiling(); ceil > 0 {
		var parts []string
		ok := true
		for _, rr := range s.rowsIn("loopback") {
			if rr.Kind != KindAMQP || rr.Res == nil {
				continue
			}
			ratio := rr.Res.Rate / ceil
			parts = append(parts, fmt.Sprintf("`%s` %.3f (cores: RabbitMQ %.2f, lsmtp %.2f, generator %.2f)", rr.ID, ratio, rr.RabbitCPU, rr.ServerCPU, rr.GenCPU))
			if ratio < TargetCeilingRatio {
				ok = false
			}
		}
		if len(parts) > 0 {
			var c *RowResult
			for _, rr := range s.results {
				if rr.Kind == KindCeiling {
					c = rr
				}
			}
			w("| Loopback lsmtp → RabbitMQ ≥ %.2f of the raw publish ceiling (%s msg/s in the same run, RabbitMQ using %.2f cores and the publisher %.2f) | %s | %s |\n",
				TargetCeilingRatio, num(ceil), c.RabbitCPU, c.GenCPU, strings.Join(parts, "; "), yes(ok))
		}
	}
	// 4. Highest sustained through RabbitMQ at 315 ms: a row whose every
	// message got its 2xx and landed in the queue.
	var best, busiest *RowResult
	for _, rr := range s.results {
		if rr.Res == nil || rr.Kind != KindAMQP || rr.Load.RTT != PaperRTT || !rr.CheckPassed {
			continue
		}
		if busiest == nil || rr.Res.Rate > busiest.Res.Rate {
			busiest = rr
		}
		if rr.Res.Tempfail+rr.Res.Permfail+rr.Res.Errors > 0 {
			continue
		}
		if best == nil || rr.Res.Rate > best.Res.Rate {
			best = rr
		}
	}
	if best != nil {
		res := fmt.Sprintf("**%s msg/s** with %s sessions (`%s`, %s), every message 2xx and in RabbitMQ",
			num(best.Res.Rate), num(float64(best.Load.Sessions)), best.ID, mode(best.Load))
		if busiest != best {
			res += fmt.Sprintf("; `%s` passed %s msg/s but answered %d messages 4xx", busiest.ID, num(busiest.Res.Rate), busiest.Res.Tempfail)
		}
		w("| Highest sustained msg/s through RabbitMQ at %v RTT (paper: %s; aim %s) | %s | %s |\n",
			PaperRTT, num(PaperBest), num(TargetBest), res, yes(best.Res.Rate >= TargetBest))
	}
	w("\n")
}

// Profile.

func (s *Suite) writeProfile(w func(string, ...any)) {
	w("## Where the time goes\n\n")
	if len(s.profiled) == 0 {
		w("No profile was captured in this run.\n\n")
	} else {
		w("The busiest loopback row of each sink was run once more, apart from the measured rows, with the server's CPU and " +
			"allocation profiles captured from `--admin-listen` `/debug/pprof/` and the generator's own CPU profile, over the " +
			"row's window. Shares are of flat samples, grouped by component.\n\n")
	}
	for _, rr := range s.profiled {
		s.writeOneProfile(w, rr)
	}
	s.writeProfileHowTo(w)
}

func (s *Suite) writeOneProfile(w func(string, ...any), rr *RowResult) {
	if rr.Res == nil || rr.Profiles == nil {
		w("### %s\n\nNo profile: %s\n\n", rr.Label, rr.Err)
		return
	}
	w("### %s: %s msg/s while profiled\n\n", rr.Label, num(rr.Res.Rate))
	w("Cores during the window: server %.2f, RabbitMQ %.2f, generator %.2f, other %.2f (of %d).\n\n",
		rr.ServerCPU, rr.RabbitCPU, rr.GenCPU, rr.OtherCPU, s.info.Cores)
	server, err := TopProfile(s.cfg.Lsmtp, rr.Profiles.CPU, "", 100000)
	if err != nil {
		w("(could not read the profile: %v)\n\n", err)
		return
	}
	var gen string
	if rr.GenProfile != "" {
		if exe, err := os.Executable(); err == nil {
			gen, _ = TopProfile(exe, rr.GenProfile, "", 100000)
		}
	}
	serverShares := componentShares(server)
	genShares := map[string]float64{}
	for _, c := range componentShares(gen) {
		genShares[c.name] = c.pct
	}
	names := map[string]bool{}
	w("| component | share of server CPU | share of generator CPU |\n|---|---:|---:|\n")
	for _, c := range serverShares {
		names[c.name] = true
		w("| %s | %.1f%% | %s |\n", c.name, c.pct, pct(genShares, c.name))
	}
	for _, c := range componentShares(gen) {
		if !names[c.name] {
			w("| %s | | %.1f%% |\n", c.name, c.pct)
		}
	}
	w("\n")
	if flat, err := TopProfile(s.cfg.Lsmtp, rr.Profiles.CPU, "", 25); err == nil {
		w("<details><summary>server: go tool pprof -top (CPU, flat)</summary>\n\n```\n%s```\n</details>\n\n", trimPprofHeader(flat))
	}
	if cum, err := TopCumulative(s.cfg.Lsmtp, rr.Profiles.CPU, 30); err == nil {
		w("<details><summary>server: go tool pprof -top -cum (CPU, cumulative)</summary>\n\n```\n%s```\n</details>\n\n", trimPprofHeader(cum))
	}
	if al, err := TopProfile(s.cfg.Lsmtp, rr.Profiles.Allocs, "alloc_space", 20); err == nil {
		w("<details><summary>server: go tool pprof -top -sample_index=alloc_space (allocations during the window)</summary>\n\n```\n%s```\n</details>\n\n", trimPprofHeader(al))
	}
}

func pct(m map[string]float64, k string) string {
	if v, ok := m[k]; ok {
		return fmt.Sprintf("%.1f%%", v)
	}
	return ""
}

func (s *Suite) writeProfileHowTo(w func(string, ...any)) {
	w("### Profiling any row\n\n")
	w("lsmtp serves `/debug/pprof/` on `--admin-listen`. `lsmtp-bench run -profile DIR -admin HOST:PORT ...` captures the server's "+
		"CPU profile and an allocation delta profile over the measurement window into `DIR/run-cpu.pprof` and `DIR/run-allocs.pprof`; "+
		"`lsmtp-bench suite -profile DIR` does it for every lsmtp row (the suite's servers use admin addresses %s). Read them with "+
		"`go tool pprof -top bin/lsmtp DIR/<row>-cpu.pprof` or `go tool pprof -http=: bin/lsmtp DIR/<row>-cpu.pprof`, "+
		"and `-sample_index=alloc_space` for allocations. By hand: `curl -o cpu.pprof 'http://127.0.0.1:9025/debug/pprof/profile?seconds=10'` "+
		"while a row runs.\n\n", strings.Join(s.cfg.Admin, ", "))
}

type share struct {
	name string
	pct  float64
}

// componentShares groups the flat column of `pprof -top` by component.
func componentShares(top string) []share {
	sums := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(top))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || !strings.HasSuffix(f[1], "%") {
			continue
		}
		pct, err := strconv.ParseFloat(strings.TrimSuffix(f[1], "%"), 64)
		if err != nil {
			continue
		}
		name := strings.Join(f[5:], " ")
		sums[component(name)] += pct
	}
	var out []share
	for k, v := range sums {
		if v >= 0.05 {
			out = append(out, share{k, v})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].pct > out[j].pct })
	return out
}

func component(fn string) string {
	switch {
	case strings.HasPrefix(fn, "syscall.") || strings.HasPrefix(fn, "internal/runtime/syscall") ||
		strings.HasPrefix(fn, "golang.org/x/sys/unix") || strings.HasPrefix(fn, "runtime/internal/syscall"):
		return "system calls (TCP send/receive, epoll, accept, close: kernel time)"
	case strings.HasPrefix(fn, "runtime.gcBgMarkWorker") || strings.HasPrefix(fn, "runtime.scanobject") ||
		strings.HasPrefix(fn, "runtime.greyobject") || strings.HasPrefix(fn, "runtime.findObject") ||
		strings.HasPrefix(fn, "runtime.markBits") || strings.HasPrefix(fn, "runtime.gcDrain") ||
		strings.HasPrefix(fn, "runtime.wbBuf") || strings.HasPrefix(fn, "runtime.bulkBarrier") ||
		strings.HasPrefix(fn, "runtime.sweepone") || strings.HasPrefix(fn, "runtime.(*mspan)") ||
		strings.HasPrefix(fn, "runtime.(*gcWork)") || strings.HasPrefix(fn, "runtime.scanblock"):
		return "garbage collector"
	case strings.HasPrefix(fn, "runtime.mallocgc") || strings.HasPrefix(fn, "runtime.memclr") ||
		strings.HasPrefix(fn, "runtime.(*mcache)") || strings.HasPrefix(fn, "runtime.(*mheap)") ||
		strings.HasPrefix(fn, "runtime.nextFreeFast") || strings.HasPrefix(fn, "runtime.makeslice") ||
		strings.HasPrefix(fn, "runtime.growslice") || strings.HasPrefix(fn, "runtime.newobject"):
		return "memory allocation"
	case strings.HasPrefix(fn, "runtime.memmove"):
		return "copying (memmove)"
	case strings.HasPrefix(fn, "runtime."):
		return "Go runtime: scheduler, channels, locks, timers"
	case strings.HasPrefix(fn, "github.com/rabbitmq/amqp091-go"):
		return "amqp091-go (framing, confirms)"
	case strings.HasPrefix(fn, "github.com/panjf2000/gnet"):
		return "gnet event loops"
	case strings.HasPrefix(fn, "github.com/lsmtp/lsmtp/codec"):
		return "lsmtp codec (parsing, DATA reader)"
	case strings.HasPrefix(fn, "github.com/lsmtp/lsmtp/engine"):
		return "lsmtp engine (sessions)"
	case strings.HasPrefix(fn, "github.com/lsmtp/lsmtp/broker"):
		return "lsmtp broker (ring, workers)"
	case strings.HasPrefix(fn, "github.com/lsmtp/lsmtp/bench"):
		return "load generator (bench: sessions, delay queues)"
	case strings.HasPrefix(fn, "github.com/lsmtp/lsmtp"):
		return "lsmtp, other packages"
	case strings.HasPrefix(fn, "bufio.") || strings.HasPrefix(fn, "bytes.") || strings.HasPrefix(fn, "encoding/") ||
		strings.HasPrefix(fn, "strconv.") || strings.HasPrefix(fn, "time.") || strings.HasPrefix(fn, "sync") ||
		strings.HasPrefix(fn, "internal/") || strings.HasPrefix(fn, "indexbytebody") || strings.HasPrefix(fn, "memeqbody") ||
		strings.HasPrefix(fn, "aeshashbody") || strings.HasPrefix(fn, "fmt.") || strings.HasPrefix(fn, "io."):
		return "Go standard library"
	}
	return "other"
}

// trimPprofHeader drops pprof's file and build lines.
func trimPprofHeader(s string) string {
	var keep []string
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(line, "File:") || strings.HasPrefix(line, "Build ID:") || strings.HasPrefix(line, "Type:") ||
			strings.HasPrefix(line, "Time:") {
			continue
		}
		keep = append(keep, line)
	}
	return strings.Join(keep, "\n")
}

// Commands.

func (s *Suite) writeCommands(w func(string, ...any)) {
	w("## Commands\n\n")
	w("The whole suite: `make bench` (%.1f minutes for this run), or the subset `make bench-quick` (under 2 minutes). Both build "+
		"`bin/lsmtp` and `bin/lsmtp-bench`, start RabbitMQ if it is installed and stopped, and run `lsmtp-bench suite` "+
		"(this run: `%s`).\n\n", time.Since(s.start).Minutes(), s.cfg.Command)
	w("Servers as the suite started them:\n\n```\n")
	for _, c := range s.started {
		w("%s\n", c)
	}
	w("```\n\nEach row by hand against a running server (same flags; `-target` takes a comma-separated list):\n\n")
	w("<details><summary>per-row commands</summary>\n\n```\n")
	for _, rr := range s.results {
		if rr.Command != "" {
			w("# %s\n%s\n", rr.ID, rr.Command)
		}
	}
	w("```\n</details>\n\n")
}
