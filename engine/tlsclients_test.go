package engine

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Real clients over TLS: swaks (STARTTLS, implicit TLS, AUTH PLAIN and
// LOGIN), Python's smtplib (starttls, SMTP_SSL), openssl s_client
// -starttls smtp. Each is skipped where it is not installed (swaks is
// required in CI, as in clients_test.go).

// tlsTranscript turns swaks' TLS markers (~> and <~) into the clear-text
// ones (-> and <-), so that sentData reads it.
func tlsTranscript(s string) string {
	return strings.NewReplacer(" ~> ", " -> ", "<~  ", "<-  ").Replace(s)
}

func TestSwaksTLS(t *testing.T) {
	swaksPath(t)
	ts := startTLSServer(t, Config{})
	dir := t.TempDir()
	content := "From: a@b.test\r\nTo: c@d.test\r\nSubject: swaks over TLS\r\n\r\n.dot\r\nbody line\r\n" + eightBit()
	file := filepath.Join(dir, "message.eml")
	mustf(t, os.WriteFile(file, []byte(content), 0o600), "write message")
	base := []string{"--helo", "client.test", "--from", "a@b.test", "--to", "c@d.test", "--data", "@" + file,
		"--tls-verify", "--tls-ca-path", ts.cert.CertFile, "--tls-sni", "mx.test"}
	cases := []struct {
		name string
		addr string
		args []string
		user string
		with string // the Received: protocol
	}{
		{"starttls", ts.plain, []string{"--tls"}, "", "ESMTPS"},
		{"implicit", ts.implicit, []string{"--tlsc"}, "", "ESMTPS"},
		{"auth plain", ts.submit, []string{"--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", alicePass}, "alice", "ESMTPSA"},
		{"auth login", ts.implicit, []string{"--tlsc", "--auth", "LOGIN", "--auth-user", "bob", "--auth-password", bobPass}, "bob", "ESMTPSA"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			transcript := swaks(t, tc.addr, append(tc.args, base...)...)
			m := waitMessages(t, ts.rec, i+1)[i]
			if want := content + "\r\n"; m.Content() != want {
				t.Errorf("body\n%q\nwant\n%q", m.Content(), want)
			}
			if m.Content() != sentData(t, tlsTranscript(transcript)) {
				t.Errorf("body differs from what the transcript shows sent")
			}
			if m.AuthUser != tc.user || m.TLSVersion == "" || !strings.Contains(m.Data, " with "+tc.with+" (TLS") {
				t.Errorf("user %q, TLS %q, Received %q", m.AuthUser, m.TLSVersion, m.Data)
			}
		})
	}
	t.Run("auth wrong password", func(t *testing.T) {
		host, port, _ := strings.Cut(ts.submit, ":")
		out, err := exec.Command(swaksPath(t), "--server", host, "--port", port, "--timeout", "20", "--tls", "--tls-sni", "mx.test",
			"--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "wrong", "--from", "a@b.test", "--to", "c@d.test").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "<~* 535 5.7.8") {
			t.Errorf("swaks with a wrong password: %v\n%s", err, tail(string(out)))
		}
	})
}

// TestPythonSmtplibTLS: smtplib's starttls() and SMTP_SSL, with login().
func TestPythonSmtplibTLS(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	ts := startTLSServer(t, Config{})
	// The test certificate names mx.test, not 127.0.0.1: the chain is
	// verified against it, the host name is not.
	script := `
import smtplib, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
ctx.check_hostname = False
plain_host, plain_port = sys.argv[2].rsplit(":", 1)
tls_host, tls_port = sys.argv[3].rsplit(":", 1)
msg = "Subject: py\r\n\r\nfrom python\r\n"
with smtplib.SMTP(plain_host, int(plain_port), local_hostname="py.test", timeout=20) as s:
    s.ehlo()
    assert s.has_extn("starttls"), s.esmtp_features
    s.starttls(context=ctx)
    s.ehlo()
    assert s.has_extn("auth") and not s.has_extn("starttls"), s.esmtp_features
    s.login("alice", sys.argv[4])
    s.sendmail("a@py.test", ["b@mx.test"], msg)
with smtplib.SMTP_SSL(tls_host, int(tls_port), local_hostname="py.test", context=ctx, timeout=20) as s:
    s.sendmail("c@py.test", ["d@mx.test"], msg)
`
	cmd := exec.Command(py, "-c", script, ts.cert.CertFile, ts.plain, ts.implicit, alicePass)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("python: %v\n%s", err, out.String())
	}
	msgs := waitMessages(t, ts.rec, 2)
	if msgs[0].AuthUser != "alice" || msgs[0].TLSVersion == "" || msgs[1].TLSVersion == "" || msgs[1].Content() != "Subject: py\r\n\r\nfrom python\r\n" {
		t.Errorf("messages %+v", msgs)
	}
}

// TestOpenSSLStartTLS: openssl s_client -starttls smtp, commands on its
// standard input.
func TestOpenSSLStartTLS(t *testing.T) {
	ossl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	ts := startTLSServer(t, Config{})
	cmd := exec.Command(ossl, "s_client", "-starttls", "smtp", "-connect", ts.plain, "-CAfile", ts.cert.CertFile,
		"-verify_return_error", "-servername", "mx.test", "-verify_hostname", "mx.test", "-quiet", "-crlf")
	// Each command waits for the previous reply: s_client does not
	// pipeline, the server would take it all the same.
	pr, pw, _ := os.Pipe()
	cmd.Stdin = pr
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	mustf(t, cmd.Start(), "openssl")
	pr.Close()
	for _, line := range []string{"EHLO openssl.test", "MAIL FROM:<o@openssl.test>", "RCPT TO:<b@mx.test>", "DATA", "Subject: ossl\n\nhi\n.", "QUIT"} {
		time.Sleep(200 * time.Millisecond)
		_, _ = pw.Write([]byte(line + "\n"))
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("openssl did not finish:\n%s", out.String())
	}
	pw.Close()
	if !strings.Contains(out.String(), "221 2.0.0") {
		t.Fatalf("openssl transcript:\n%s", out.String())
	}
	msgs := waitMessages(t, ts.rec, 1)
	if msgs[0].Content() != "Subject: ossl\r\n\r\nhi\r\n" || msgs[0].TLSVersion == "" {
		t.Errorf("message %+v", msgs[0])
	}
}
