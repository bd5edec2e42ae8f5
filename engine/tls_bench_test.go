package engine

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/sink"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// TLS benchmarks, each beside its plaintext figure:
//
//	go test -run '^$' -bench 'TLS|GoSMTP' -benchtime 3000x ./engine
//
// BenchmarkTLSHandshake: full handshakes (no session resumption) per
// second over loopback, clients in the same process, so that the figure
// is what the 2 cores do for both ends; "plain" is connect and greeting.
// BenchmarkTLSMessages: pipelined 2 KB messages, 1 or 100 per
// connection, each connection new (a handshake each for TLS). The
// clients share the process with the server, as in BenchmarkNullSink.
// BenchmarkTLSServerCPU: the server's own CPU time per message, the
// clients in a child process. BenchmarkTLSIdleMemory: the server's heap and stacks per idle session
// after EHLO, with the clients in a child process so that only the
// server's memory is counted.

// tlsBenchServer is a null-sink server with a certificate of keyType on
// --listen and --listen-tls.
func tlsBenchServer(b *testing.B, keyType string) (plain, implicit string, conf *tls.Config, ns *sink.Null) {
	dir := b.TempDir()
	crt := smtptest.WriteCert(b, dir, keyType)
	ns = &sink.Null{}
	srv, plain := startServer(b, Config{Sink: ns, TLSCert: crt.CertFile, TLSKey: crt.KeyFile,
		ListenTLS: []string{"127.0.0.2:0"}, MaxConnsPerIP: 0, MaxConns: 0, MaxHandshakes: 1024})
	return plain, srv.Addrs()[1].String(), &tls.Config{ServerName: "mx.test", RootCAs: crt.Pool}, ns
}

// dialBenchMaybeTLS connects, handshakes when conf is set, and reads the
// greeting and the reply to EHLO.
func dialBenchMaybeTLS(addr string, conf *tls.Config) (*benchConn, error) {
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = raw.SetDeadline(time.Now().Add(60 * time.Second))
	c := &benchConn{conn: raw}
	if conf != nil {
		tc := tls.Client(raw, conf)
		if err := tc.Handshake(); err != nil {
			raw.Close()
			return nil, err
		}
		c.conn = tc
	}
	if err := c.expect("220"); err != nil {
		c.conn.Close()
		return nil, err
	}
	if err := c.send(benchEHLO, "250"); err != nil {
		c.conn.Close()
		return nil, err
	}
	return c, nil
}

func BenchmarkTLSHandshake(b *testing.B) {
	for _, kt := range []string{"plain", "ecdsa", "rsa"} {
		name := map[string]string{"plain": "plain", "ecdsa": "ecdsa-p256", "rsa": "rsa-2048"}[kt]
		b.Run(name, func(b *testing.B) {
			keyType := kt
			if kt == "plain" {
				keyType = "ecdsa"
			}
			plain, implicit, conf, _ := tlsBenchServer(b, keyType)
			addr := implicit
			if kt == "plain" {
				addr, conf = plain, nil
			}
			var left atomic.Int64
			left.Store(int64(b.N))
			b.ResetTimer()
			runParallelDials(b, &left, addr, conf)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
		})
	}
}

// runParallelDials connects 8 clients at a time until left runs out:
// greeting and EHLO, after a handshake when conf is set.
func runParallelDials(b *testing.B, left *atomic.Int64, addr string, conf *tls.Config) {
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for left.Add(-1) >= 0 {
				c, err := dialBenchMaybeTLS(addr, conf)
				if err != nil {
					b.Error(err)
					left.Store(0)
					return
				}
				c.conn.Close()
			}
		})
	}
	wg.Wait()
}

func BenchmarkTLSMessages(b *testing.B) {
	msg := benchMessage()
	msgThenEnvelope := append(append([]byte(nil), msg...), benchEnvelope...)
	msgThenQuit := append(append([]byte(nil), msg...), benchQuit...)
	for _, secure := range []bool{false, true} {
		for _, perConn := range []int{1, 100} {
			name := fmt.Sprintf("plain/%d-per-conn", perConn)
			if secure {
				name = fmt.Sprintf("tls/%d-per-conn", perConn)
			}
			b.Run(name, func(b *testing.B) {
				plain, implicit, conf, ns := tlsBenchServer(b, "ecdsa")
				addr := implicit
				if !secure {
					addr, conf = plain, nil
				}
				var left atomic.Int64
				left.Store(int64(b.N))
				take := func() bool { return left.Add(-1) >= 0 }
				b.ResetTimer()
				var wg sync.WaitGroup
				for range min(benchClients, b.N) {
					wg.Go(func() {
						for take() {
							c, err := dialBenchMaybeTLS(addr, conf)
							if err == nil {
								err = pipelinedConn(c, perConn, take, msgThenEnvelope, msgThenQuit)
								c.conn.Close()
							}
							if err != nil {
								b.Error(err)
								left.Store(0)
								return
							}
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				if got := ns.Messages(); got != int64(b.N) && !b.Failed() {
					b.Fatalf("sink got %d messages, sent %d", got, b.N)
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}

// idleClientsEnv makes the test binary a process holding idle clients
// (TestIdleClientsHelper): "addr n tls|plain cafile".
const idleClientsEnv = "LSMTP_IDLE_CLIENTS"

func BenchmarkTLSIdleMemory(b *testing.B) {
	const n = 500
	for _, mode := range []string{"plain", "tls"} {
		b.Run(mode, func(b *testing.B) {
			dir := b.TempDir()
			crt := smtptest.WriteCert(b, dir, "ecdsa")
			srv, plain := startServer(b, Config{TLSCert: crt.CertFile, TLSKey: crt.KeyFile, ListenTLS: []string{"127.0.0.2:0"},
				MaxConnsPerIP: 0, Sink: &sink.Null{}})
			addr := plain
			if mode == "tls" {
				addr = srv.Addrs()[1].String()
			}
			perConn := childIdle(b, addr, n, mode, crt.CertFile, srv.Stats().Open.Load)
			b.ReportMetric(perConn, "B/idle-conn")
		})
	}
}

// childIdle holds n idle sessions open on addr from a child process and
// returns how much this process's heap and stacks grew per session, once
// open() counts them all.
func childIdle(b *testing.B, addr string, n int, mode, caFile string, open func() int64) float64 {
	// Measured once whatever b.N: the figure is a size, not a rate.
	b.StopTimer()
	var perConn float64
	{
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		exe, _ := os.Executable()
		cmd := exec.Command(exe, "-test.run", "^TestIdleClientsHelper$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %s %s", idleClientsEnv, addr, n, mode, caFile))
		stdin, _ := cmd.StdinPipe()
		stdout, _ := cmd.StdoutPipe()
		mustf(b, cmd.Start(), "child")
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "ready") {
			b.Fatalf("child: %q %v", line, err)
		}
		for open() < int64(n) {
			time.Sleep(10 * time.Millisecond)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		perConn = float64(int64(after.HeapInuse+after.StackInuse)-int64(before.HeapInuse+before.StackInuse)) / float64(n)
		stdin.Close()
		_ = cmd.Wait()
		for open() > 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	return perConn
}

// TestIdleClientsHelper is the child of BenchmarkTLSIdleMemory: it opens
// the connections, says EHLO on each, prints "ready" and waits for its
// standard input to close. Without the variable it does nothing.
func TestIdleClientsHelper(t *testing.T) {
	spec := os.Getenv(idleClientsEnv)
	if spec == "" {
		t.Skip("run by BenchmarkTLSIdleMemory")
	}
	f := strings.Fields(spec)
	n, _ := strconv.Atoi(f[1])
	var conf *tls.Config
	if f[2] == "tls" {
		pem, err := os.ReadFile(f[3])
		mustf(t, err, "ca")
		conf = &tls.Config{ServerName: "mx.test", RootCAs: x509Pool(pem)}
	}
	var conns []*benchConn
	for range n {
		c, err := dialBenchMaybeTLS(f[0], conf)
		mustf(t, err, "dial")
		_ = c.conn.SetDeadline(time.Time{})
		conns = append(conns, c)
	}
	fmt.Println("ready")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	for _, c := range conns {
		c.conn.Close()
	}
}

func x509Pool(pem []byte) *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(pem)
	return p
}

// loadClientsEnv makes the test binary a process that sends messages
// (TestLoadClientsHelper): "addr tls|plain perConn total cafile".
const loadClientsEnv = "LSMTP_LOAD_CLIENTS"

// BenchmarkTLSServerCPU is the server's own CPU time per message, user
// and system, with the clients in a child process: the figure that says
// what TLS costs the server, whatever the clients (which do the same
// cryptography on the same two cores) cost.
func BenchmarkTLSServerCPU(b *testing.B) {
	for _, mode := range []string{"plain", "tls"} {
		for _, perConn := range []int{1, 100} {
			b.Run(fmt.Sprintf("%s/%d-per-conn", mode, perConn), func(b *testing.B) {
				dir := b.TempDir()
				crt := smtptest.WriteCert(b, dir, "ecdsa")
				ns := &sink.Null{}
				srv, plain := startServer(b, Config{TLSCert: crt.CertFile, TLSKey: crt.KeyFile, ListenTLS: []string{"127.0.0.2:0"},
					MaxConnsPerIP: 0, MaxHandshakes: 1024, Sink: ns})
				addr := plain
				if mode == "tls" {
					addr = srv.Addrs()[1].String()
				}
				used := childLoad(b, addr, mode, perConn, crt.CertFile)
				if got := ns.Messages(); got != int64(b.N) {
					b.Fatalf("sink got %d of %d", got, b.N)
				}
				b.ReportMetric(float64(used.Microseconds())/float64(b.N), "server-µs/msg")
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}

// childLoad sends b.N messages to addr from a child process, perConn per
// connection, and returns the CPU time this process (the server) spent
// meanwhile. The benchmark timer runs only while the child does.
func childLoad(b *testing.B, addr, mode string, perConn int, caFile string) time.Duration {
	exe, _ := os.Executable()
	cmd := exec.Command(exe, "-test.run", "^TestLoadClientsHelper$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %d %d %s", loadClientsEnv, addr, mode, perConn, b.N, caFile))
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	before := cpuTime()
	b.ResetTimer()
	if err := cmd.Run(); err != nil {
		b.Fatalf("clients: %v\n%s", err, out.String())
	}
	b.StopTimer()
	return cpuTime() - before
}

// cpuTime is this process's user plus system time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestLoadClientsHelper is the child of BenchmarkTLSServerCPU.
func TestLoadClientsHelper(t *testing.T) {
	spec := os.Getenv(loadClientsEnv)
	if spec == "" {
		t.Skip("run by BenchmarkTLSServerCPU")
	}
	f := strings.Fields(spec)
	perConn, _ := strconv.Atoi(f[2])
	total, _ := strconv.Atoi(f[3])
	var conf *tls.Config
	if f[1] == "tls" {
		pem, err := os.ReadFile(f[4])
		mustf(t, err, "ca")
		conf = &tls.Config{ServerName: "mx.test", RootCAs: x509Pool(pem)}
	}
	msg := benchMessage()
	msgThenEnvelope := append(append([]byte(nil), msg...), benchEnvelope...)
	msgThenQuit := append(append([]byte(nil), msg...), benchQuit...)
	var left atomic.Int64
	left.Store(int64(total))
	take := func() bool { return left.Add(-1) >= 0 }
	var wg sync.WaitGroup
	for range min(benchClients, total) {
		wg.Go(func() {
			for take() {
				c, err := dialBenchMaybeTLS(f[0], conf)
				if err == nil {
					err = pipelinedConn(c, perConn, take, msgThenEnvelope, msgThenQuit)
					c.conn.Close()
				}
				if err != nil {
					t.Error(err)
					left.Store(0)
					return
				}
			}
		})
	}
	wg.Wait()
}
