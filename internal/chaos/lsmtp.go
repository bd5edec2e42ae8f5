package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// buildLSMTP builds ./cmd/lsmtp of the module in moduleDir (empty: the
// module of the working directory) into dir.
func buildLSMTP(ctx context.Context, moduleDir, dir string) (string, error) {
	if moduleDir == "" {
		out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
		if err != nil {
			return "", fmt.Errorf("finding the module: go env GOMOD: %w", err)
		}
		gomod := strings.TrimSpace(string(out))
		if gomod == "" || gomod == os.DevNull {
			return "", errors.New("not inside the lsmtp module: run from its checkout or pass the lsmtp binary")
		}
		moduleDir = filepath.Dir(gomod)
	}
	bin := filepath.Join(dir, "lsmtp")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/lsmtp")
	cmd.Dir = moduleDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/lsmtp in %s: %w\n%s", moduleDir, err, out)
	}
	return bin, nil
}

// process is one running lsmtp.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when Wait returned
	err    error         // Wait's result, once exited is closed
}

// lsmtpRunner starts lsmtp processes, all with the same command line
// (but for --listen) and log file.
type lsmtpRunner struct {
	bin     string
	args    []string
	logPath string
	smtp    atomic.Pointer[string] // the SMTP address it listens on; read by the load generator
	starts  int
}

func (r *lsmtpRunner) addr() string { return *r.smtp.Load() }

// errAddrInUse: lsmtp could not bind its SMTP address.
var errAddrInUse = errors.New("lsmtp could not bind its SMTP address: address already in use")

// start starts lsmtp on listen and waits until it greets there.
func (r *lsmtpRunner) start(listen string, within time.Duration) (*process, error) {
	r.smtp.Store(&listen)
	logf, err := os.OpenFile(r.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	r.starts++
	args := append([]string{"--listen", listen}, r.args...)
	fmt.Fprintf(logf, "=== lsmtp start %d at %s: %s %s\n", r.starts, time.Now().Format(time.RFC3339Nano), r.bin, strings.Join(args, " "))
	cmd := exec.Command(r.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = cleanEnv()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting lsmtp: %w", err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	deadline := time.Now().Add(within)
	for {
		if c, greet, err := smtptest.Dial(listen, time.Second); err == nil {
			c.Cmd("QUIT")
			c.Close()
			if greet.Code == 220 {
				return p, nil
			}
		}
		select {
		case <-p.exited:
			if strings.Contains(tail(r.logPath, 3), "address already in use") {
				return nil, fmt.Errorf("%w (%s)", errAddrInUse, listen)
			}
			return nil, fmt.Errorf("lsmtp exited at start-up (%v); see %s", p.err, r.logPath)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.kill()
			return nil, fmt.Errorf("lsmtp did not greet on %s within %s; see %s", listen, within, r.logPath)
		}
	}
}

// cleanEnv is the environment without LSMTP_* variables, so that only
// the command line configures the process under test.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LSMTP_") {
			env = append(env, kv)
		}
	}
	return env
}

// stop sends SIGTERM and waits up to grace for the exit; a process still
// running then is killed, which is reported as an error: lsmtp must
// finish its drain within --shutdown-timeout.
func (p *process) stop(grace time.Duration) error {
	select {
	case <-p.exited:
		return fmt.Errorf("lsmtp had already exited: %v", p.err)
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("SIGTERM: %w", err)
	}
	select {
	case <-p.exited:
		if p.err != nil {
			return fmt.Errorf("lsmtp exited after SIGTERM with %v", p.err)
		}
		return nil
	case <-time.After(grace):
		p.kill()
		return fmt.Errorf("lsmtp still running %s after SIGTERM; killed", grace)
	}
}

func (p *process) kill() {
	p.cmd.Process.Kill()
	<-p.exited
}

// alive reports whether the process still runs.
func (p *process) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
