package bench

import (
	"fmt"
	"strings"
)

// Markdown is the side-by-side section.
func (r *PeersReport) Markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	c := r.Config
	w("## lsmtp side by side with a go-smtp bridge\n\n")
	b.WriteString(measuredBy("peers", r.Started, r.RabbitMQ, r.Took, r.Load))
	w("The bridge is `%s` (emersion/go-smtp and amqp091-go: default exchange, no headers, one shared channel, a deferred confirm per message "+
		"and 250 after it), built from its source for the run; lsmtp runs with its defaults and the same queue type. "+
		"Each has a durable queue of its own, purged before every run. Each load runs lsmtp, bridge, lsmtp, bridge, ... (%d pairs) after a short "+
		"unmeasured warm-up of both; cells are the median and, in brackets, the range. The load generator's rows count its measurement window; "+
		"the smtp-source rows count from the start of smtp-source to its exit, and the messages that reached the queue. "+
		"*RabbitMQ* is the oldest `beam.smp`'s utime+stime and syscr+syscw (/proc) over the same span, *server* the SMTP server's CPU, "+
		"*client* the load generator's or smtp-source's, all per message. The ratio row is lsmtp ÷ bridge of the medians; in brackets the range of "+
		"the ratios of the pairs.\n\n", c.PeerDir, c.Pairs)
	if r.SourceNote != "" {
		w("%s\n\n", r.SourceNote)
	}
	for _, qt := range c.QueueTypes {
		runs := r.Runs[qt]
		if runs == nil {
			continue
		}
		w("### %s queue\n\n", qt)
		w("| load | server | msg/s | RabbitMQ CPU-ms/msg | RabbitMQ syscalls/msg | server CPU-ms/msg | client CPU-ms/msg |\n")
		w("|---|---|---|---|---|---|---|\n")
		for _, load := range r.Loads {
			byServer := runs[load.ID]
			if byServer == nil {
				continue
			}
			type cols struct{ rate, rcpu, rsys, scpu, ccpu []float64 }
			get := func(name string) cols {
				var c cols
				for _, pr := range byServer[name] {
					if pr.Messages == 0 {
						continue
					}
					c.rate = append(c.rate, pr.Rate)
					c.rcpu = append(c.rcpu, pr.RabbitCPUms)
					c.scpu = append(c.scpu, pr.ServerCPUms)
					c.ccpu = append(c.ccpu, pr.ClientCPUms)
					if pr.RabbitSyscalls >= 0 {
						c.rsys = append(c.rsys, pr.RabbitSyscalls)
					}
				}
				return c
			}
			l, br := get(PeerLsmtp), get(PeerBridge)
			for _, side := range []struct {
				name string
				c    cols
			}{{"lsmtp", l}, {"bridge", br}} {
				marks := ""
				for _, pr := range byServer[side.name] {
					if pr.Check != "" || pr.Err != "" {
						marks = " (see notes)"
					}
				}
				w("| %s | %s%s | %s | %s | %s | %s | %s |\n", load.Label, side.name, marks,
					spreadOf(side.c.rate).format(num), spreadOf(side.c.rcpu).format(fmt3), spreadOf(side.c.rsys).format(fmt2),
					spreadOf(side.c.scpu).format(fmt3), spreadOf(side.c.ccpu).format(fmt3))
			}
			ratio := func(f func(PeerRun) float64) string {
				lv, bv := pick(byServer[PeerLsmtp], f), pick(byServer[PeerBridge], f)
				lm, bm := spreadOf(lv), spreadOf(bv)
				if lm.N == 0 || bm.N == 0 || bm.Med == 0 {
					return "–"
				}
				var pairs []float64
				for i := range min(len(lv), len(bv)) {
					if bv[i] > 0 {
						pairs = append(pairs, lv[i]/bv[i])
					}
				}
				ps := spreadOf(pairs)
				return fmt.Sprintf("**%.2f** (%.2f–%.2f)", lm.Med/bm.Med, ps.Min, ps.Max)
			}
			w("| %s | lsmtp ÷ bridge | %s | %s | %s | %s | %s |\n", load.Label,
				ratio(func(p PeerRun) float64 { return p.Rate }), ratio(func(p PeerRun) float64 { return p.RabbitCPUms }),
				ratio(func(p PeerRun) float64 { return p.RabbitSyscalls }), ratio(func(p PeerRun) float64 { return p.ServerCPUms }),
				ratio(func(p PeerRun) float64 { return p.ClientCPUms }))
		}
		w("\n")
		w("lsmtp: `%s`; bridge: `%s`.\n\n", r.LsmtpArgs[qt], r.BridgeArgs[qt])
	}
	only := ""
	if len(c.OnlyLoads) > 0 {
		only = " -loads " + strings.Join(c.OnlyLoads, ",")
	}
	w("Repeat with `lsmtp-bench peers -pairs %d -sessions %d -per-conn %d -window %v -queue-types %s%s`.\n\n",
		c.Pairs, c.Sessions, c.PerConn, c.Window, strings.Join(c.QueueTypes, ","), only)
	b.WriteString(notesMarkdown(r.Notes))
	return b.String()
}

// pick is one figure of the runs that counted messages, in run order.
func pick(runs []PeerRun, f func(PeerRun) float64) []float64 {
	var out []float64
	for _, pr := range runs {
		if pr.Messages > 0 {
			out = append(out, f(pr))
		}
	}
	return out
}
