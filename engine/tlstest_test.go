package engine

import (
	"crypto/tls"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"

	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// Helpers of the TLS and AUTH tests: certificates made on the spot, an
// auth file, a server with a TLS and a submission listener, and a client
// that upgrades its connection.

// Users of the test auth file: alice has a bcrypt hash (the lowest cost,
// to keep a thousand checks quick), bob an argon2id one (small).
const (
	alicePass = "alice-secret"
	bobPass   = "bob-secret"
)

func writeAuthFile(t testing.TB, dir string) string {
	t.Helper()
	bh, err := bcrypt.GenerateFromPassword([]byte(alicePass), bcrypt.MinCost)
	mustf(t, err, "bcrypt")
	salt := []byte("0123456789abcdef")
	key := argon2.IDKey([]byte(bobPass), salt, 1, 64, 1, 32)
	ah := "$argon2id$v=19$m=64,t=1,p=1$" + base64.RawStdEncoding.EncodeToString(salt) + "$" + base64.RawStdEncoding.EncodeToString(key)
	name := filepath.Join(dir, "users")
	mustf(t, os.WriteFile(name, []byte("# test users\nalice:"+string(bh)+"\n\nbob:"+ah+"\n"), 0o600), "write auth file")
	return name
}

// tlsServer is a server with --listen, --listen-tls and
// --listen-submission on loopback, a certificate and an auth file.
type tlsTestServer struct {
	srv                     *Server
	plain, implicit, submit string
	cert                    smtptest.Cert
	rec                     *smtptest.Recorder
}

func startTLSServer(t testing.TB, cfg Config) tlsTestServer {
	t.Helper()
	dir := t.TempDir()
	ts := tlsTestServer{cert: smtptest.WriteCert(t, dir, "ecdsa")}
	if cfg.TLSCert == "" {
		cfg.TLSCert, cfg.TLSKey = ts.cert.CertFile, ts.cert.KeyFile
	}
	if cfg.AuthFile == "" {
		cfg.AuthFile = writeAuthFile(t, dir)
	}
	// Distinct addresses: gnet names a listener by its address as given,
	// so three "127.0.0.1:0" would be one to Engine.DupListener.
	cfg.ListenTLS = []string{"127.0.0.2:0"}
	cfg.ListenSubmission = []string{"127.0.0.3:0"}
	if cfg.AuthFailDelay == 0 {
		cfg.AuthFailDelay = time.Millisecond
	}
	rec, _ := cfg.Sink.(*smtptest.Recorder)
	if rec == nil {
		rec = &smtptest.Recorder{}
		cfg.Sink = rec
	}
	ts.rec = rec
	srv, plain := startServer(t, cfg)
	addrs := srv.Addrs()
	ts.srv, ts.plain, ts.implicit, ts.submit = srv, plain, addrs[1].String(), addrs[2].String()
	return ts
}

// clientTLS is the client side's configuration: it trusts the test
// certificate only.
func (ts tlsTestServer) clientTLS() *tls.Config {
	return &tls.Config{ServerName: "mx.test", RootCAs: ts.cert.Pool}
}

// startTLS upgrades the client's connection after a 220 to STARTTLS.
func (c *client) startTLS(conf *tls.Config) *tls.ConnectionState {
	c.t.Helper()
	tc := tls.Client(c.conn, conf)
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	if n := c.smtp.Buffered(); n > 0 {
		c.t.Fatalf("%d octets from the server in the clear after its 220", n)
	}
	c.conn = tc
	c.smtp = smtptest.NewConn(tc, c.smtp.Timeout)
	st := tc.ConnectionState()
	return &st
}

// dialTLS connects to an implicit-TLS listener and reads the greeting.
func dialTLS(t testing.TB, addr string, conf *tls.Config) *client {
	t.Helper()
	c := dialNoGreeting(t, addr)
	c.startTLS(conf)
	c.expect("220 mx.test ESMTP")
	return c
}

// dialStartTLS connects in the clear, says EHLO and upgrades.
func dialStartTLS(t testing.TB, addr string, conf *tls.Config) *client {
	t.Helper()
	c := dial(t, addr)
	c.do("EHLO client.test", "250 ")
	c.do("STARTTLS", "220 2.0.0 Ready to start TLS")
	c.startTLS(conf)
	return c
}

func plainB64(authz, user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(authz + "\x00" + user + "\x00" + pass))
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// rawDial opens a TCP connection and nothing else.
func rawDial(t testing.TB, addr string) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	mustf(t, err, "dial %s", addr)
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	return conn
}
