package engine

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// The same loads against go-smtp (a goroutine per connection, crypto/tls
// on a net.Listener): the reference the issue compares TLS with.
//
//	go test -run '^$' -bench 'GoSMTP|TLS' -benchtime 3000x ./engine

// goSMTPBackend discards every message and counts it.
type goSMTPBackend struct{ messages atomic.Int64 }

func (be *goSMTPBackend) NewSession(*gosmtp.Conn) (gosmtp.Session, error) {
	return goSMTPSession{be}, nil
}

type goSMTPSession struct{ be *goSMTPBackend }

func (goSMTPSession) Reset()                                 {}
func (goSMTPSession) Logout() error                          { return nil }
func (goSMTPSession) Mail(string, *gosmtp.MailOptions) error { return nil }
func (goSMTPSession) Rcpt(string, *gosmtp.RcptOptions) error { return nil }
func (s goSMTPSession) Data(r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	s.be.messages.Add(1)
	return err
}

// goSMTPServer serves go-smtp on loopback, over TLS from the first byte
// when secure; open counts its connections.
func goSMTPServer(b *testing.B, keyType string, secure bool) (addr string, be *goSMTPBackend, crt smtptest.Cert, open *atomic.Int64) {
	crt = smtptest.WriteCert(b, b.TempDir(), keyType)
	pair, err := tls.LoadX509KeyPair(crt.CertFile, crt.KeyFile)
	mustf(b, err, "key pair")
	be = &goSMTPBackend{}
	srv := gosmtp.NewServer(be)
	srv.Domain = "mx.test"
	srv.MaxMessageBytes = 25 << 20
	srv.ReadTimeout, srv.WriteTimeout = 5*time.Minute, 5*time.Minute
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	mustf(b, err, "listen")
	open = &atomic.Int64{}
	var l net.Listener = countingListener{ln, open}
	if secure {
		l = tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12})
	}
	go func() { _ = srv.Serve(l) }()
	b.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String(), be, crt, open
}

// countingListener counts the connections open on it.
type countingListener struct {
	net.Listener
	open *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.open.Add(1)
	return &countedConn{Conn: c, open: l.open}, nil
}

type countedConn struct {
	net.Conn
	open   *atomic.Int64
	closed atomic.Bool
}

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.open.Add(-1)
	}
	return c.Conn.Close()
}

func BenchmarkGoSMTPHandshake(b *testing.B) {
	for _, kt := range []string{"ecdsa", "rsa"} {
		b.Run(map[string]string{"ecdsa": "ecdsa-p256", "rsa": "rsa-2048"}[kt], func(b *testing.B) {
			addr, _, crt, _ := goSMTPServer(b, kt, true)
			conf := &tls.Config{ServerName: "mx.test", RootCAs: crt.Pool}
			var left atomic.Int64
			left.Store(int64(b.N))
			b.ResetTimer()
			runParallelDials(b, &left, addr, conf)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
		})
	}
}

func BenchmarkGoSMTPServerCPU(b *testing.B) {
	for _, mode := range []string{"plain", "tls"} {
		for _, perConn := range []int{1, 100} {
			b.Run(fmt.Sprintf("%s/%d-per-conn", mode, perConn), func(b *testing.B) {
				addr, be, crt, _ := goSMTPServer(b, "ecdsa", mode == "tls")
				used := childLoad(b, addr, mode, perConn, crt.CertFile)
				if got := be.messages.Load(); got != int64(b.N) {
					b.Fatalf("backend got %d of %d", got, b.N)
				}
				b.ReportMetric(float64(used.Microseconds())/float64(b.N), "server-µs/msg")
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}

func BenchmarkGoSMTPIdleMemory(b *testing.B) {
	const n = 500
	for _, mode := range []string{"plain", "tls"} {
		b.Run(mode, func(b *testing.B) {
			addr, _, crt, open := goSMTPServer(b, "ecdsa", mode == "tls")
			b.ReportMetric(childIdle(b, addr, n, mode, crt.CertFile, open.Load), "B/idle-conn")
		})
	}
}
