package bench

import (
	"fmt"
	"strings"
	"time"
)

// FormatResult is a plain-text summary of one run.
func FormatResult(r *LoadResult) string {
	var b strings.Builder
	c := r.Config
	mode := "plain"
	switch {
	case c.Chunking:
		mode = "pipelining+chunking"
	case c.Pipelining:
		mode = "pipelining"
	}
	fmt.Fprintf(&b, "target %s  sessions %d  rtt %v  %s  %d msg/conn  %d B  %d rcpt\n",
		strings.Join(c.Targets, ","), c.Sessions, c.RTT, mode, c.PerConn, c.Size, c.Recipients)
	fmt.Fprintf(&b, "total ok %d  tempfail %d  permfail %d  errors %d (lost %d)  connections %d\n",
		r.OK, r.Tempfail, r.Permfail, r.Errors, r.Lost, r.Conns)
	fmt.Fprintf(&b, "window %.1fs: %d messages, %.1f msg/s", r.Window.Seconds(), r.WindowOK, r.Rate)
	if r.Bound > 0 {
		fmt.Fprintf(&b, "  (protocol bound %.1f msg/s at %.2f round trips/msg: %.3f of it)", r.Bound, r.RoundTrips, r.Rate/r.Bound)
	}
	b.WriteString("\n")
	l := r.Latency
	fmt.Fprintf(&b, "latency p50 %v  p90 %v  p99 %v  max %v  mean %v (n=%d)",
		ms(l.P50), ms(l.P90), ms(l.P99), ms(l.Max), ms(l.Mean), l.N)
	if c.RTT > 0 {
		fmt.Fprintf(&b, "  = p50 %.2f RTT", l.P50.Seconds()/c.RTT.Seconds())
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "generator CPU %.2f cores (%d process(es))\n", r.GenCPU, r.Processes)
	if r.NoPipe > 0 || r.NoChunk > 0 {
		fmt.Fprintf(&b, "server did not offer PIPELINING on %d and CHUNKING on %d connections\n", r.NoPipe, r.NoChunk)
	}
	if len(r.ErrKinds) > 0 {
		fmt.Fprintf(&b, "errors: %s\n", strings.Join(r.TopErrors(5), "; "))
	}
	return b.String()
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}
