package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// healthz sends one keep-alive GET /healthz on conn and reads the reply
// within timeout.
func healthz(conn net.Conn, r *bufio.Reader, timeout time.Duration) (*http.Response, error) {
	if _, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n"); err != nil {
		return nil, err
	}
	conn.SetReadDeadline(time.Now().Add(timeout))
	resp, err := http.ReadResponse(r, nil)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return resp, err
}

// TestAdminConnectionCap holds the admin listener's every slot with
// keep-alive connections: one more waits unanswered, the SMTP server
// still greets, and the waiting connection is served once a slot frees.
func TestAdminConnectionCap(t *testing.T) {
	n, _, _ := startNode(t, []string{"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--sink", "null", "--event-loops", "1"})
	admin := n.adminAddr.String()
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i := range adminMaxConns {
		c, err := net.Dial("tcp", admin)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		if resp, err := healthz(c, bufio.NewReader(c), 5*time.Second); err != nil || resp.StatusCode != 200 {
			t.Fatalf("connection %d of %d: %v %v", i+1, adminMaxConns, resp, err)
		}
	}

	extra, err := net.Dial("tcp", admin) // the kernel's backlog takes it
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	er := bufio.NewReader(extra)
	if resp, err := healthz(extra, er, 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection past the cap of %d answered: %v %v; want it to wait", adminMaxConns, resp, err)
	}

	smtp, err := net.DialTimeout("tcp", smtpAddr(n), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer smtp.Close()
	smtp.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := textproto.NewReader(bufio.NewReader(smtp)).ReadLine(); err != nil || !strings.HasPrefix(line, "220 ") {
		t.Fatalf("SMTP greeting with the admin listener full: %q, %v", line, err)
	}

	held[0].Close()
	extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(er, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("waiting connection after a slot freed: %v %v; want 200", resp, err)
	}
	resp.Body.Close()
}

// TestAdminTimeouts checks that an admin connection holds its slot no
// longer than the idle timeout after a request, nor longer than the
// header timeout when it never sends one.
func TestAdminTimeouts(t *testing.T) {
	saved := adminTimeouts
	t.Cleanup(func() { adminTimeouts = saved })
	adminTimeouts.idle, adminTimeouts.header = 200*time.Millisecond, 200*time.Millisecond
	n, _, _ := startNode(t, []string{"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--sink", "null", "--event-loops", "1"})

	idle, err := net.Dial("tcp", n.adminAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	r := bufio.NewReader(idle)
	if resp, err := healthz(idle, r, 5*time.Second); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/healthz: %v %v", resp, err)
	}
	silent, err := net.Dial("tcp", n.adminAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	for name, c := range map[string]net.Conn{"idle after a request": idle, "silent from the start": silent} {
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		if !errors.Is(err, io.EOF) {
			t.Errorf("%s: read %v, want EOF (closed by the server)", name, err)
		}
		if waited := time.Since(start); waited > 3*time.Second {
			t.Errorf("%s: closed after %v, want about 200ms", name, waited)
		}
	}
}

// TestPprofCmdlineHidesSecrets: /debug/pprof/cmdline shows the command
// line, but not the passwords on it.
func TestPprofCmdlineHidesSecrets(t *testing.T) {
	saved := os.Args
	t.Cleanup(func() { os.Args = saved })
	os.Args = []string{"lsmtp", "--amqp-password", "hunter2", "--amqp-url=amqp://u:pw1@r1/", "-amqp-url", "amqp://u:pw2@r2/",
		"--amqp-password=pw3", "--listen", "127.0.0.1:25", "--sink", "null"}
	rec := httptest.NewRecorder()
	(&node{}).adminHandler(prometheus.NewRegistry()).ServeHTTP(rec, httptest.NewRequest("GET", "/debug/pprof/cmdline", nil))
	got := strings.Split(rec.Body.String(), "\x00")
	want := []string{"lsmtp", "--amqp-password", "xxxxx", "--amqp-url=amqp://u:xxxxx@r1/", "-amqp-url", "amqp://u:xxxxx@r2/",
		"--amqp-password=xxxxx", "--listen", "127.0.0.1:25", "--sink", "null"}
	if rec.Code != 200 || !slices.Equal(got, want) {
		t.Errorf("/debug/pprof/cmdline: %d %q, want %q", rec.Code, got, want)
	}
}

// TestSecretWarnings: config check warns about a file holding a password
// that others may read, and about an admin listener off loopback.
func TestSecretWarnings(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, content string
		mode          os.FileMode
		args          []string
		warn          string // "" for no warning
	}{
		{"password, world-readable", "amqp-username: u\namqp-password: s3cret\n", 0o644, nil, "holds amqp-password and is readable by group or others (mode 0644)"},
		{"password, group-readable", "amqp-username: u\namqp-password: s3cret\n", 0o640, nil, "(mode 0640)"},
		{"password, private", "amqp-username: u\namqp-password: s3cret\n", 0o600, nil, ""},
		{"password in a URL", "amqp-url: [\"amqp://u:s3cret@r/\"]\n", 0o644, nil, "holds amqp-url and is readable"},
		{"URL without password", "amqp-url: [\"amqp://r/\"]\n", 0o644, nil, ""},
		{"the default URL", "amqp-url: [\"amqp://guest:guest@127.0.0.1:5672/\"]\n", 0o644, nil, ""},
		{"password overridden by a flag", "amqp-username: u\namqp-password: s3cret\n", 0o644, []string{"--amqp-password", "x"}, "holds amqp-password"},
		{"admin on every address", "", 0o644, []string{"--admin-listen", "0.0.0.0:9025"}, `--admin-listen: "0.0.0.0:9025" is not a loopback address`},
		{"admin on a host name", "", 0o644, []string{"--admin-listen", "mgmt.example:9025"}, "is not a loopback address"},
		{"admin on no host", "", 0o644, []string{"--admin-listen", ":9025"}, "is not a loopback address"},
		{"admin on ::1", "", 0o644, []string{"--admin-listen", "[::1]:9025"}, ""},
		{"admin on localhost", "", 0o644, []string{"--admin-listen", "localhost:9025"}, ""},
	}
	for i, tc := range cases {
		p := filepath.Join(dir, string(rune('a'+i))+".yaml")
		if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, tc.mode); err != nil { // past the umask
			t.Fatal(err)
		}
		var out, errb bytes.Buffer
		if code := mainExit(append([]string{"config", "check", "--config", p}, tc.args...), noEnv, &out, &errb); code != 0 {
			t.Fatalf("%s: exit %d: %s", tc.name, code, errb.String())
		}
		switch {
		case tc.warn == "" && errb.Len() > 0:
			t.Errorf("%s: warned %q, want nothing", tc.name, errb.String())
		case tc.warn != "" && (!strings.Contains(errb.String(), "lsmtp: warning: ") || !strings.Contains(errb.String(), tc.warn)):
			t.Errorf("%s: stderr %q, want a warning with %q", tc.name, errb.String(), tc.warn)
		}
		if strings.Contains(errb.String(), "s3cret") {
			t.Errorf("%s: the warning shows the password: %q", tc.name, errb.String())
		}
	}

	// At start, the warning goes to the log.
	p := filepath.Join(dir, "start.yaml")
	os.WriteFile(p, []byte("listen: [127.0.0.1:0]\nsink: \"null\"\nadmin-listen: \"\"\namqp-username: u\namqp-password: s3cret\n"), 0o600)
	os.Chmod(p, 0o604)
	_, _, logs := startNode(t, []string{"--config", p})
	if !strings.Contains(logs.String(), "readable by group or others (mode 0604)") {
		t.Errorf("start did not log the readable secret:\n%s", logs.String())
	}
}
