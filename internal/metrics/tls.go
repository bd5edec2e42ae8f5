package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lsmtp/lsmtp/engine"
)

// tlsDescs are the TLS and AUTH series (engine.TLSStats).
type tlsDescs struct {
	handshakes, discarded, sessions, auth, expiry, reloadFailures *prometheus.Desc
}

func (t *tlsDescs) init(desc func(n, help string, labels ...string) *prometheus.Desc) {
	t.handshakes = desc("tls_handshakes_total", "TLS handshakes, by result (ok, or why it failed: timeout, busy, version, eof, bad, per_ip) and negotiated version.", "result", "version")
	t.discarded = desc("tls_discarded_bytes_total", "Octets a client pipelined behind STARTTLS in the clear, dropped unread (CVE-2011-0411).")
	t.sessions = desc("sessions_open_by_security", "SMTP connections open now, by TLS and AUTH state.", "tls", "auth")
	t.auth = desc("auth_total", "AUTH commands by result.", "result")
	t.expiry = desc("tls_certificate_expiry_timestamp_seconds", "NotAfter of the certificate in force, Unix seconds; absent without one.")
	t.reloadFailures = desc("tls_reload_failures_total", "Certificate or auth file loads that failed; the previous one stayed in force.", "file")
}

func (t *tlsDescs) describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{t.handshakes, t.discarded, t.sessions, t.auth, t.expiry, t.reloadFailures} {
		ch <- d
	}
}

func (t *tlsDescs) collect(st *engine.Stats, counter, gauge func(*prometheus.Desc, float64, ...string)) {
	s := &st.TLS
	for i, v := range engine.TLSVersions() {
		counter(t.handshakes, float64(s.Handshakes[i].Load()), "ok", v)
	}
	for _, f := range engine.HandshakeFailures() {
		counter(t.handshakes, float64(s.HandshakeFailed[f].Load()), f.String(), "")
	}
	counter(t.discarded, float64(s.DiscardedBytes.Load()))
	// Three reads, not one snapshot: clamped so that a session moving
	// between them never shows as a negative count.
	open, secure, authed := st.Open.Load(), s.Sessions.Load(), s.AuthSessions.Load()
	gauge(t.sessions, float64(max(open-secure, 0)), "no", "no")
	gauge(t.sessions, float64(max(secure-authed, 0)), "yes", "no")
	gauge(t.sessions, float64(authed), "yes", "yes")
	for _, r := range engine.AuthResults() {
		counter(t.auth, float64(s.Auth[r].Load()), r.String())
	}
	if exp := s.CertExpiry.Load(); exp > 0 {
		gauge(t.expiry, float64(exp))
	}
	counter(t.reloadFailures, float64(s.CertReloadFailures.Load()), "certificate")
	counter(t.reloadFailures, float64(s.AuthFileReloadFailures.Load()), "auth_file")
}
