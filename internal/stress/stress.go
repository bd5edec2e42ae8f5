// Package stress runs the lsmtp binary under loads meant to exhaust it:
// many large messages at once against the in-flight byte budget, and
// floods of idle connections. Its tests measure the server process from
// outside (peak RSS from /proc), so the clients do not count.
//
// `go test ./stress` runs small versions; `make stress` (LSMTP_STRESS=1)
// runs the sizes the README quotes.
package stress

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// Server is a running lsmtp process.
type Server struct {
	Addr string
	cmd  *exec.Cmd
	log  *os.File
}

// Build compiles cmd/lsmtp into dir and returns the binary's path.
func Build(dir string) (string, error) {
	bin := filepath.Join(dir, "lsmtp")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/lsmtp/lsmtp/cmd/lsmtp").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
}

// Start runs bin with args on a free port of 127.0.0.1 and waits for its
// greeting.
func Start(bin, logPath string, args ...string) (*Server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, append([]string{"--listen", addr, "--admin-listen", "", "--log-level", "warn"}, args...)...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, err
	}
	s := &Server{Addr: addr, cmd: cmd, log: log}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, greet, err := smtptest.Dial(addr, time.Second)
		if err == nil {
			c.Close()
			if greet.Code == 220 {
				return s, nil
			}
		}
		if time.Now().After(deadline) {
			s.Stop()
			return nil, fmt.Errorf("lsmtp did not greet on %s within 10s (log: %s)", addr, logPath)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop ends the process (SIGTERM, then SIGKILL after 10 s).
func (s *Server) Stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	s.log.Close()
}

// PeakRSS is the process's high-water resident set size (VmHWM), bytes.
func (s *Server) PeakRSS() (int64, error) { return procStatusKB(s.cmd.Process.Pid, "VmHWM:") }

// RSS is the process's resident set size now (VmRSS), bytes.
func (s *Server) RSS() (int64, error) { return procStatusKB(s.cmd.Process.Pid, "VmRSS:") }

func procStatusKB(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field) {
			f := strings.Fields(line)
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// RaiseFileLimit lifts RLIMIT_NOFILE: the hard limit too, to 1<<17, where
// the process may (root), else the soft one to the hard one. The server
// started afterwards inherits it.
func RaiseFileLimit() (uint64, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, err
	}
	if l.Max < 1<<17 {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: 1 << 17, Max: 1 << 17}); err == nil {
			return 1 << 17, nil
		}
	}
	l.Cur = l.Max
	return l.Cur, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
}

// Dialer spreads client connections over 127.0.0.0/8 source addresses so
// that tens of thousands of them do not run out of ephemeral ports.
type Dialer struct{ n int }

// Dial connects to addr from the next source address.
func (d *Dialer) Dial(ctx context.Context, addr string) (net.Conn, error) {
	d.n++
	src := net.IPv4(127, 0, byte(1+d.n/20000), byte(1+d.n%200))
	nd := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: src}}
	return nd.DialContext(ctx, "tcp", addr)
}

// Transaction says EHLO on c (greeting already read) and sends one
// message with MAIL, RCPT and DATA pipelined (RFC 2920); it returns the
// reply to the body. A reply other than 250 or 354 before it is an error.
func Transaction(c *smtptest.Conn, body []byte) (smtptest.Reply, error) {
	if _, err := c.Expect("EHLO stress", 250); err != nil {
		return smtptest.Reply{}, err
	}
	o := c.Transact("a@stress.test", []string{"b@stress.test"}, body, true)
	if o.Err == nil && !o.BodySent {
		o.Err = fmt.Errorf("refused before the body: %q", o.Final.String())
	}
	return o.Final, o.Err
}

// Body returns size octets of message in 100-octet lines ending in CRLF.
func Body(size int) []byte {
	line := []byte(strings.Repeat("x", 98) + "\r\n")
	b := make([]byte, 0, size+len(line))
	b = append(b, "Subject: stress\r\n\r\n"...)
	for len(b)+len(line) <= size {
		b = append(b, line...)
	}
	return b
}
