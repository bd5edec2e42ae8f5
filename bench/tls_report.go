package bench

import (
	"fmt"
	"strings"
)

// Markdown is the TLS section.
func (r *TLSReport) Markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	c := r.Config
	w("## TLS: lsmtp beside go-smtp\n\n")
	b.WriteString(measuredBy("tls", r.Started, "(not used: null sinks)", r.Took, r.Load))
	w("lsmtp (the binary, `--sink null`) and the go-smtp bridge (`%s` without `-amqp`: it reads DATA and discards it; go-smtp's TLS, "+
		"a goroutine per connection) each run twice, with an ECDSA P-256 and with an RSA 2048 certificate, on a plaintext listener and one "+
		"that speaks TLS from the first byte (lsmtp `--listen-tls`, the bridge `-tls-addr`). The clients are in this process, on the same "+
		"2 cores: Go's crypto/tls with no session cache, so every handshake is a full one (TLS 1.3, X25519MLKEM768). "+
		"Handshake rows: %d clients connect, handshake, read the greeting, say EHLO and close. Message rows: %d sessions send %d-octet "+
		"messages pipelined (RFC 2920), 1 or 100 per connection. Each load runs every server and mode once per round, %d rounds, "+
		"a %v window each after a second of warm-up; cells are the median and, in brackets, the range. *Server CPU* is the server "+
		"process's utime+stime over the window per handshake or message. The idle row starts each server afresh, opens %d sessions "+
		"that say EHLO and wait, and divides the growth of its resident memory (VmRSS) by them.\n\n",
		c.PeerDir, c.Dialers, c.Sessions, c.Size, c.Pairs, c.Window, c.IdleConns)
	w("| load | lsmtp plaintext | lsmtp TLS | TLS ÷ plaintext | go-smtp plaintext | go-smtp TLS | lsmtp ÷ go-smtp, TLS |\n")
	w("|---|---|---|---|---|---|---|\n")
	for _, load := range r.Loads {
		runs := r.Runs[load.ID]
		if runs == nil {
			continue
		}
		type figure struct {
			label string
			f     func(TLSRun) float64
			fmt   func(float64) string
		}
		var figures []figure
		if load.ID == TLSIdle {
			figures = []figure{{"KB per idle session after EHLO (server RSS)", func(t TLSRun) float64 { return t.IdleBytes / 1024 }, fmt1}}
		} else {
			unit := "handshake"
			if load.perConn > 0 {
				unit = "message"
			}
			figures = []figure{
				{load.Label, func(t TLSRun) float64 { return t.Rate }, num},
				{fmt.Sprintf("server CPU µs per %s, %s", unit, strings.SplitN(load.Label, ", ", 2)[1]), func(t TLSRun) float64 { return t.ServerCPUus }, fmt1},
			}
		}
		for _, fg := range figures {
			cell := func(server, mode string) string { return spreadOf(tlsPick(runs[server][mode], fg.f)).format(fg.fmt) }
			w("| %s | %s | %s | %s | %s | %s | %s |\n", fg.label,
				cell(PeerLsmtp, TLSModePlain), cell(PeerLsmtp, TLSModeTLS),
				tlsRatio(runs[PeerLsmtp][TLSModeTLS], runs[PeerLsmtp][TLSModePlain], fg.f),
				cell(PeerBridge, TLSModePlain), cell(PeerBridge, TLSModeTLS),
				tlsRatio(runs[PeerLsmtp][TLSModeTLS], runs[PeerBridge][TLSModeTLS], fg.f))
		}
	}
	w("\n")
	rate := func(t TLSRun) float64 { return t.Rate }
	if m := r.Runs[TLSMsg100]; m != nil {
		w("Targets: TLS at 100 messages per connection ÷ plaintext %s (target ≥ 0.7); ", tlsRatio(m[PeerLsmtp][TLSModeTLS], m[PeerLsmtp][TLSModePlain], rate))
	}
	var hs []string
	for _, id := range []string{TLSHandshakeECDSA, TLSHandshakeRSA} {
		if h := r.Runs[id]; h != nil {
			hs = append(hs, fmt.Sprintf("%s %s", strings.TrimPrefix(id, "handshake-"), tlsRatio(h[PeerLsmtp][TLSModeTLS], h[PeerBridge][TLSModeTLS], rate)))
		}
	}
	if len(hs) > 0 {
		w("lsmtp's handshake rate ÷ go-smtp's: %s (target ≥ 1). ", strings.Join(hs, ", "))
	}
	w("On 2 cores the clients' own handshakes and records take about as much CPU as the server's, so the rates are what both ends " +
		"together allow; the server CPU rows are the server's share alone.\n\n")
	w("lsmtp: `%s`; bridge: `%s`.\n\n", r.Args[PeerLsmtp], r.Args[PeerBridge])
	w("Repeat with `lsmtp-bench tls -pairs %d -window %v -sessions %d -dialers %d -idle %d` (`make bench-tls`).\n\n",
		c.Pairs, c.Window, c.Sessions, c.Dialers, c.IdleConns)
	if len(r.Notes) > 0 {
		w("Notes from the run:\n\n")
		for _, n := range r.Notes {
			w("- %s\n", n)
		}
		w("\n")
	}
	return b.String()
}

// tlsPick is one figure of the runs that completed, in run order.
func tlsPick(runs []TLSRun, f func(TLSRun) float64) []float64 {
	var out []float64
	for _, tr := range runs {
		if tr.Count > 0 && tr.Err == "" {
			out = append(out, f(tr))
		}
	}
	return out
}

// tlsRatio is a's median ÷ b's, in bold, with the range of the ratios
// of the rounds in brackets.
func tlsRatio(a, b []TLSRun, f func(TLSRun) float64) string {
	av, bv := tlsPick(a, f), tlsPick(b, f)
	am, bm := spreadOf(av), spreadOf(bv)
	if am.N == 0 || bm.N == 0 || bm.Med == 0 {
		return "–"
	}
	var rounds []float64
	for i := range min(len(av), len(bv)) {
		if bv[i] > 0 {
			rounds = append(rounds, av[i]/bv[i])
		}
	}
	rs := spreadOf(rounds)
	if rs.N < 2 {
		return fmt.Sprintf("**%.2f**", am.Med/bm.Med)
	}
	return fmt.Sprintf("**%.2f** (%.2f–%.2f)", am.Med/bm.Med, rs.Min, rs.Max)
}
