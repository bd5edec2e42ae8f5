package bench

import (
	"fmt"
	"runtime"
	"strings"
	"time"
)

// Markdown is the factor table section.
func (r *FactorReport) Markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	c := r.Config
	title := c.Title
	if title == "" {
		title = "What a publish costs RabbitMQ (factor table)"
	}
	w("## %s\n\n", title)
	b.WriteString(measuredBy("factors", r.Started, r.RabbitMQ, r.Took, r.Load))
	w("A plain amqp091-go publisher (`broker.RawPublish`, no SMTP) sends %s persistent messages per row and run, "+
		"%d unconfirmed in all (split over the row's channels), to a durable queue, exchange and, where named, alternate exchange "+
		"of the row's own, declared before and deleted after every run. The body is %d octets (Received: field, a few header fields, filler); "+
		"the trace rows prepend Return-Path: and one X-Original-To: per recipient (%d here), %d octets in all. "+
		"Every run must find all its messages confirmed, none returned and all in the queue.\n\n",
		num(float64(c.Messages)), c.Window, r.BodySize[EnvNone], c.Rcpts, r.BodySize[EnvTrace])
	w("The %d runs go round all rows in turn (run 1 of every row, then run 2, ...), so drift on the shared machine falls on every row alike; "+
		"each cell is the median and, in brackets, the range over the runs. "+
		"*RabbitMQ CPU* is utime+stime of the oldest `beam.smp` (/proc/PID/stat) from the first publish to the last confirm and until the broker "+
		"is quiet again (at most 1 s more), per confirmed message; *syscalls* are syscr+syscw of /proc/PID/io over the same span; *publisher* is "+
		"this process's own. *× bare* is RabbitMQ CPU per message ÷ that of the first row in the same round, median and range over the rounds.\n\n", c.Runs)
	for _, qt := range c.QueueTypes {
		runs := r.Runs[qt]
		if runs == nil {
			continue
		}
		w("### %s queue\n\n", qt)
		w("| row | publish | RabbitMQ CPU-ms/msg | × bare | RabbitMQ syscalls/msg | msg/s | publisher CPU-ms/msg | publisher syscalls/msg |\n")
		w("|---|---|---|---|---|---|---|---|\n")
		for _, f := range r.Shapes {
			rs, ok := runs[f.ID]
			if !ok {
				continue
			}
			var rate, rcpu, rsys, pcpu, psys []float64
			failed := 0
			for _, fr := range rs {
				if fr.Err != "" {
					failed++
					continue
				}
				rate = append(rate, fr.Rate)
				rcpu = append(rcpu, fr.RabbitCPUms)
				pcpu = append(pcpu, fr.PubCPUms)
				if fr.RabbitSyscalls >= 0 {
					rsys = append(rsys, fr.RabbitSyscalls)
				}
				if fr.PubSyscalls >= 0 {
					psys = append(psys, fr.PubSyscalls)
				}
			}
			rc := spreadOf(rcpu)
			// Each run of a row is compared with the bare row's run of
			// the same round, minutes apart at most: drift of the shared
			// machine between rounds cancels out.
			var paired []float64
			for i, fr := range rs {
				if bareRuns := runs["bare"]; i < len(bareRuns) && fr.Err == "" && bareRuns[i].Err == "" && bareRuns[i].RabbitCPUms > 0 {
					paired = append(paired, fr.RabbitCPUms/bareRuns[i].RabbitCPUms)
				}
			}
			ratio := spreadOf(paired).format(fmt2)
			label := f.Label
			if failed > 0 {
				label += fmt.Sprintf(" (**%d of %d runs failed**, see notes)", failed, len(rs))
			}
			w("| `%s` | %s | %s | %s | %s | %s | %s | %s |\n", f.ID, label, rc.format(fmt3), ratio,
				spreadOf(rsys).format(fmt2), spreadOf(rate).format(kilo), spreadOf(pcpu).format(fmt3), spreadOf(psys).format(fmt2))
		}
		w("\n")
	}
	rows := ""
	if c.Rows != "" {
		rows = fmt.Sprintf(" -rows '%s'", c.Rows)
	}
	w("Repeat with `lsmtp-bench factors -messages %d -runs %d -queue-types %s -size %d -window %d -rcpts %d%s`.\n\n",
		c.Messages, c.Runs, strings.Join(c.QueueTypes, ","), c.Size, c.Window, c.Rcpts, rows)
	b.WriteString(notesMarkdown(r.Notes))
	return b.String()
}

// measuredBy opens a report section: which lsmtp-bench command measured
// it, when, against which RabbitMQ, for how long and on how loaded a
// machine.
func measuredBy(command string, started time.Time, rabbitMQ string, took time.Duration, load [2]float64) string {
	return measuredWith(command, started, "RabbitMQ "+orUnknown(rabbitMQ), took, load)
}

// measuredWith is measuredBy with the brokers named by the caller (with,
// as in "nats-server 2.9.10 and RabbitMQ 3.12.1").
func measuredWith(command string, started time.Time, with string, took time.Duration, load [2]float64) string {
	return fmt.Sprintf("Measured by `lsmtp-bench %s` on %s with %s on the same machine (%s in all; load average %.1f at the start, %.1f at the end, on %d cores). ",
		command, started.UTC().Format("2006-01-02 15:04 MST"), with, took.Round(time.Second), load[0], load[1], runtime.NumCPU())
}

// notesMarkdown closes a report section with the notes from its run, if
// any.
func notesMarkdown(notes []string) string {
	if len(notes) == 0 {
		return ""
	}
	s := "Notes from the run:\n\n"
	for _, n := range notes {
		s += "- " + n + "\n"
	}
	return s + "\n"
}
