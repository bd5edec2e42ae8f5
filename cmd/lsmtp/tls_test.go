package main

import (
	"bytes"
	"crypto/tls"
	"net"
	"net/smtp"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// authHash runs `lsmtp auth hash` with the password on stdin.
func authHash(t *testing.T, password string, args ...string) (string, int) {
	t.Helper()
	old := stdin
	stdin = strings.NewReader(password)
	defer func() { stdin = old }()
	var out, errOut bytes.Buffer
	code := mainExit(append([]string{"auth", "hash"}, args...), noEnv, &out, &errOut)
	if code != exitOK {
		return errOut.String(), code
	}
	return strings.TrimSpace(out.String()), code
}

func TestAuthHashCommand(t *testing.T) {
	h, code := authHash(t, "s3cret\n")
	if code != exitOK || !strings.HasPrefix(h, "$2a$12$") || bcrypt.CompareHashAndPassword([]byte(h), []byte("s3cret")) != nil {
		t.Fatalf("bcrypt: exit %d, %q", code, h)
	}
	if a, code := authHash(t, "s3cret\r\n", "--scheme", "argon2id"); code != exitOK || !strings.HasPrefix(a, "$argon2id$v=19$m=65536,t=3,p=4$") {
		t.Fatalf("argon2id: exit %d, %q", code, a)
	}
	if msg, code := authHash(t, ""); code != exitProblems || !strings.Contains(msg, "no password") {
		t.Errorf("empty input: exit %d, %q", code, msg)
	}
	if msg, code := authHash(t, "x", "--scheme", "md5"); code != exitProblems || !strings.Contains(msg, "md5") {
		t.Errorf("unknown scheme: exit %d, %q", code, msg)
	}
}

// TestConfigCheckTLS: config check reads the certificate and the auth
// file and names the option of each problem.
func TestConfigCheckTLS(t *testing.T) {
	dir := t.TempDir()
	users := filepath.Join(dir, "users")
	mustWrite(t, users, "alice:plaintext\n")
	var out, errOut bytes.Buffer
	code := mainExit([]string{"config", "check", "--tls-cert", filepath.Join(dir, "none.pem"), "--tls-key", filepath.Join(dir, "none.key"),
		"--auth-file", users, "--tls-min-version", "1.1"}, noEnv, &out, &errOut)
	got := errOut.String()
	if code != exitProblems {
		t.Fatalf("exit %d, want %d; %s", code, exitProblems, got)
	}
	for _, want := range []string{"--tls-cert: certificate", "--auth-file: auth file", "users:1: user \"alice\"", "--tls-min-version: \"1.1\""} {
		if !strings.Contains(got, want) {
			t.Errorf("config check output lacks %q:\n%s", want, got)
		}
	}
}

func mustWrite(t *testing.T, name, content string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestNodeSTARTTLSAndAuth drives a node with Go's net/smtp: STARTTLS,
// AUTH PLAIN with a hash from `lsmtp auth hash`, a message; then a new
// certificate in the same files, picked up on reload.
func TestNodeSTARTTLSAndAuth(t *testing.T) {
	dir := t.TempDir()
	crt := smtptest.WriteCert(t, dir, "ecdsa")
	h, code := authHash(t, "pw-of-carol\n", "--scheme", "argon2id")
	if code != exitOK {
		t.Fatal(h)
	}
	users := filepath.Join(dir, "users")
	mustWrite(t, users, "carol:"+h+"\n")
	n, _, _ := startNode(t, []string{"--listen", "127.0.0.1:0", "--listen-tls", "127.0.0.2:0", "--sink", "null", "--admin-listen", "",
		"--tls-cert", crt.CertFile, "--tls-key", crt.KeyFile, "--auth-file", users, "--hostname", "mx.test"})
	conf := &tls.Config{ServerName: "mx.test", RootCAs: crt.Pool}

	bad := dialSMTP(t, smtpAddr(n))
	defer bad.Close()
	if err := bad.StartTLS(conf); err != nil {
		t.Fatalf("StartTLS: %v", err)
	}
	// net/smtp quits after a failed AUTH.
	if err := bad.Auth(smtp.PlainAuth("", "carol", "wrong", "localhost")); err == nil || !strings.Contains(err.Error(), "535") || !strings.Contains(err.Error(), "5.7.8") {
		t.Fatalf("wrong password: %v, want 535 5.7.8", err)
	}

	c := dialSMTP(t, smtpAddr(n))
	defer c.Close()
	if ok, _ := c.Extension("STARTTLS"); !ok {
		t.Fatal("STARTTLS not offered")
	}
	if err := c.StartTLS(conf); err != nil {
		t.Fatalf("StartTLS: %v", err)
	}
	if err := c.Auth(smtp.PlainAuth("", "carol", "pw-of-carol", "localhost")); err != nil {
		t.Fatalf("Auth: %v", err)
	}
	if err := c.Mail("carol@mx.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("dave@mx.test"); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	_, _ = w.Write([]byte("Subject: hi\r\n\r\nhello\r\n"))
	if err := w.Close(); err != nil {
		t.Fatalf("end of data: %v", err)
	}
	if err := c.Quit(); err != nil {
		t.Fatalf("QUIT: %v", err)
	}

	// The same files, a new certificate: reload (as SIGHUP does).
	next := smtptest.WriteCert(t, t.TempDir(), "rsa")
	for src, dst := range map[string]string{next.CertFile: crt.CertFile, next.KeyFile: crt.KeyFile} {
		b, _ := os.ReadFile(src)
		mustWrite(t, dst, string(b))
	}
	if err := n.reload(); err != nil {
		t.Fatalf("reload: %v", err)
	}
	conn, err := net.DialTimeout("tcp", n.srv.Addrs()[1].String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tc := tls.Client(conn, &tls.Config{ServerName: "mx.test", RootCAs: next.Pool})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("implicit TLS after reload: %v", err)
	}
	if got := tc.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(next.Serial) != 0 {
		t.Errorf("serial %s, want the new %s", got, next.Serial)
	}
}
