package metrics_test

import (
	"crypto/tls"
	"net/http/httptest"
	"net/smtp"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/lsmtp/lsmtp/engine"
	"github.com/lsmtp/lsmtp/internal/metrics"
	"github.com/lsmtp/lsmtp/internal/metrics/metricstest"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// TestTLSSeries: one STARTTLS session that authenticates after one wrong
// password moves the handshake, AUTH and session series by exactly that.
func TestTLSSeries(t *testing.T) {
	dir := t.TempDir()
	crt := smtptest.WriteCert(t, dir, "ecdsa")
	h, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	users := filepath.Join(dir, "users")
	if err := os.WriteFile(users, []byte("u:"+string(h)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startEngine(t, engine.Config{TLSCert: crt.CertFile, TLSKey: crt.KeyFile, AuthFile: users, AuthFailDelay: time.Millisecond})
	reg := metrics.NewRegistry(metrics.NewCollector(metrics.Sources{Engine: srv.Stats(), Config: srv.Config}))
	hs := httptest.NewServer(metrics.Handler(reg))
	defer hs.Close()
	url := hs.URL + "/metrics"

	var written atomic.Int64
	c := dial(t, srv.Addrs()[0].String(), &written)
	if err := c.StartTLS(&tls.Config{ServerName: "mx.test", RootCAs: crt.Pool, MinVersion: tls.VersionTLS13}); err != nil {
		t.Fatal(err)
	}
	if err := c.Auth(smtp.PlainAuth("", "u", "pw", "localhost")); err != nil {
		t.Fatal(err)
	}
	s := metricstest.Scrape(t, url)
	for _, tc := range []struct {
		name string
		got  float64
		want float64
	}{
		{"handshakes ok TLS 1.3", s.Value("lsmtp_tls_handshakes_total", "result", "ok", "version", "TLS 1.3"), 1},
		{"handshakes timeout", s.Value("lsmtp_tls_handshakes_total", "result", "timeout", "version", ""), 0},
		{"auth ok", s.Value("lsmtp_auth_total", "result", "ok"), 1},
		{"sessions tls+auth", s.Value("lsmtp_sessions_open_by_security", "tls", "yes", "auth", "yes"), 1},
		{"sessions plain", s.Value("lsmtp_sessions_open_by_security", "tls", "no", "auth", "no"), 0},
		{"certificate expiry", s.Value("lsmtp_tls_certificate_expiry_timestamp_seconds"), float64(crt.NotAfter.Unix())},
		{"reload failures", s.Value("lsmtp_tls_reload_failures_total", "file", "certificate"), 0},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	_ = c.Quit()
}
