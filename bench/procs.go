package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Server is an SMTP server process started for a group of rows.
type Server struct {
	Name    string   // "lsmtp (null sink)", "Postfix smtp-sink", ...
	Addr    string   // SMTP listen address
	Admin   string   // lsmtp's admin listener ("" for others)
	Args    []string // the command line, for the report
	LogPath string

	cmd    *exec.Cmd
	exited chan error
}

// LsmtpOptions start an lsmtp server for the benchmark.
type LsmtpOptions struct {
	Binary        string
	Listen        string
	Admin         string
	Sink          string // "null", "amqp" or "nats" (its flags in ExtraArgs)
	AMQPURL       string
	Exchange      string
	Queue         string
	RoutingKey    string
	MaxConnsPerIP int // 0: no limit
	LogDir        string
	ExtraArgs     []string // appended to the command line, e.g. --queue-type classic
}

// StartLsmtp starts lsmtp and waits until it greets (and, with the amqp
// sink, until /readyz says the broker is connected).
func StartLsmtp(ctx context.Context, o LsmtpOptions) (*Server, error) {
	args := []string{o.Binary,
		"--listen", o.Listen,
		"--hostname", "bench.lsmtp.test",
		"--sink", o.Sink,
		"--max-conns", "0",
		"--max-conns-per-ip", strconv.Itoa(o.MaxConnsPerIP),
		"--admin-listen", o.Admin,
		"--log-level", "warn",
	}
	if o.Sink == "amqp" {
		args = append(args, "--amqp-url", o.AMQPURL, "--exchange", o.Exchange, "--queue", o.Queue, "--routing-key", o.RoutingKey)
	}
	args = append(args, o.ExtraArgs...)
	_, port, _ := net.SplitHostPort(o.Listen)
	var s *Server
	// A port that served many connections a moment ago may still have
	// them in TIME_WAIT; a listener without SO_REUSEADDR cannot bind it
	// until they expire (60 s on Linux).
	for deadline := time.Now().Add(70 * time.Second); ; {
		s = &Server{Name: "lsmtp (" + o.Sink + " sink)", Addr: o.Listen, Admin: o.Admin, Args: args}
		if err := s.start(o.LogDir, "lsmtp-"+o.Sink+"-"+port); err != nil {
			return nil, err
		}
		err := s.waitGreeting(ctx, 15*time.Second)
		if err == nil {
			break
		}
		s.Stop()
		if log, _ := os.ReadFile(s.LogPath); !strings.Contains(string(log), "address already in use") || time.Now().After(deadline) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
	if o.Sink == "amqp" || o.Sink == "nats" {
		if err := s.waitReady(ctx, 30*time.Second); err != nil {
			s.Stop()
			return nil, err
		}
	}
	return s, nil
}

// SmtpSinkPath finds Postfix's smtp-sink, "" if it is not installed.
func SmtpSinkPath() string {
	if p, err := exec.LookPath("smtp-sink"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink", "/usr/libexec/postfix/smtp-sink"} {
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// StartSmtpSink starts Postfix's smtp-sink (a single-process SMTP server
// that discards mail) taking up to maxConns connections at once.
func StartSmtpSink(ctx context.Context, binary, listen string, maxConns int, logDir string) (*Server, error) {
	args := []string{binary, "-m", strconv.Itoa(maxConns)}
	if os.Geteuid() == 0 {
		user := "postfix"
		if _, err := exec.Command("id", "-u", user).Output(); err != nil {
			user = "nobody"
		}
		args = append(args, "-u", user) // required when started as root
	}
	args = append(args, listen, "4096")
	s := &Server{Name: "Postfix smtp-sink", Addr: listen, Args: args}
	if err := s.start(logDir, "smtp-sink"); err != nil {
		return nil, err
	}
	if err := s.waitGreeting(ctx, 10*time.Second); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Server) start(logDir, name string) error {
	s.LogPath = filepath.Join(logDir, name+".log")
	logf, err := os.Create(s.LogPath)
	if err != nil {
		return err
	}
	s.cmd = exec.Command(s.Args[0], s.Args[1:]...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", s.Args[0], err)
	}
	s.exited = make(chan error, 1)
	go func() {
		s.exited <- s.cmd.Wait()
		logf.Close()
	}()
	return nil
}

// Pid is the server's process id.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// waitGreeting connects until the server sends a 220.
func (s *Server) waitGreeting(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case err := <-s.exited:
			s.exited <- err
			return fmt.Errorf("%s exited at start (%v); see %s", s.Name, err, s.LogPath)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		c, err := net.DialTimeout("tcp", s.Addr, time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(2 * time.Second))
			line, rerr := bufio.NewReader(c).ReadString('\n')
			c.Write([]byte("QUIT\r\n"))
			c.Close()
			if rerr == nil && strings.HasPrefix(line, "220") {
				return nil
			}
			err = fmt.Errorf("greeting %q: %v", line, rerr)
		}
		lastErr = err
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s did not greet on %s within %v: %v (log: %s)", s.Name, s.Addr, limit, lastErr, s.LogPath)
}

// waitReady polls lsmtp's /readyz until the broker is connected.
func (s *Server) waitReady(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	client := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		resp, err := client.Get("http://" + s.Admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready (broker not connected) within %v; see %s", s.Name, limit, s.LogPath)
}

// Stop sends SIGTERM and waits for the process, killing it after 30 s.
func (s *Server) Stop() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.exited:
		s.exited <- err
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ProcessState != nil && !ee.ProcessState.Exited() {
			return nil // ended by our signal (smtp-sink has no handler)
		}
		return err
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		return fmt.Errorf("%s did not stop within 30 s after SIGTERM; killed", s.Name)
	}
}

// Alive reports whether the process is still running.
func (s *Server) Alive() bool {
	select {
	case err := <-s.exited:
		s.exited <- err
		return false
	default:
		return true
	}
}

// ProcCPU is the user+system CPU time a process has used, from
// /proc/<pid>/stat.
func ProcCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; fields after it are
	// counted from the closing parenthesis.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / clockTicks
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// FindProcess returns the pid of the longest-running process whose
// command name is comm (e.g. "beam.smp" for RabbitMQ, whose command-line
// tools run short-lived beam.smp processes too), 0 if none.
func FindProcess(comm string) int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	best, bestStart := 0, int64(-1)
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil || strings.TrimSpace(string(b)) != comm {
			continue
		}
		start := procStart(pid)
		if bestStart < 0 || start < bestStart {
			best, bestStart = pid, start
		}
	}
	return best
}

// procStart is a process's start time in clock ticks since boot (field 22
// of /proc/<pid>/stat).
func procStart(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 1 << 62
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 1 << 62
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 1 << 62
	}
	v, err := strconv.ParseInt(f[19], 10, 64)
	if err != nil {
		return 1 << 62
	}
	return v
}

// SystemCPU is the busy (non-idle, non-iowait) CPU time of the whole
// machine, from /proc/stat.
func SystemCPU() time.Duration {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0
	}
	fields := strings.Fields(sc.Text())
	if len(fields) < 6 || fields[0] != "cpu" {
		return 0
	}
	var busy int64
	for i, v := range fields[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 8 { // guest times are already in user
			break
		}
		busy += n
	}
	return time.Duration(busy) * time.Second / clockTicks
}

// RabbitAlarms is what `rabbitmq-diagnostics alarms` reports when the
// local node has a resource alarm (memory or disk: publishers are then
// blocked), "" when it has none or cannot be asked.
func RabbitAlarms() string {
	out, err := exec.Command("rabbitmq-diagnostics", "-q", "alarms").CombinedOutput()
	text := strings.TrimSpace(string(out))
	if err != nil || strings.Contains(text, "no alarms") {
		return ""
	}
	return strings.Join(strings.Fields(text), " ")
}

// MetricValue reads one unlabelled counter or gauge from a Prometheus text
// endpoint (lsmtp's /metrics on the admin listener); ok is false when the
// endpoint or the metric is missing.
func MetricValue(admin, name string) (v float64, ok bool) {
	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get("http://" + admin + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, found := strings.CutPrefix(line, name+" "); found {
			f, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return f, err == nil
		}
	}
	return 0, false
}
