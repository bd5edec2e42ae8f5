package bench

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// TLSConfig configures the TLS section: lsmtp (the real binary) beside
// the go-smtp bridge's TLS (a goroutine per connection), both with null
// sinks, under the same loads from this process.
type TLSConfig struct {
	Lsmtp   string // lsmtp binary
	PeerDir string // the bridge's source, built for the run
	Go      string // go command that builds it

	Pairs     int           // rounds of every load; each round runs every server and mode once
	Window    time.Duration // measurement window per run
	Sessions  int           // concurrent sessions of the message loads
	Dialers   int           // concurrent clients of the handshake loads
	Size      int           // message size, octets
	IdleConns int           // sessions held idle for the memory row

	BasePort int // lsmtp and the bridge listen on 127.0.0.1 from here (8 ports), lsmtp's admin on BasePort+10 and +11
	LogDir   string
	Progress io.Writer
}

func (c *TLSConfig) setDefaults() {
	if c.Lsmtp == "" {
		c.Lsmtp = "bin/lsmtp"
	}
	if c.PeerDir == "" {
		c.PeerDir = "../shared/peers/gosmtp-amqp"
	}
	if c.Go == "" {
		c.Go = "go"
	}
	if c.Pairs <= 0 {
		c.Pairs = 3
	}
	if c.Window <= 0 {
		c.Window = 4 * time.Second
	}
	if c.Sessions <= 0 {
		c.Sessions = 50
	}
	if c.Dialers <= 0 {
		c.Dialers = 16
	}
	if c.Size <= 0 {
		c.Size = 2048
	}
	if c.IdleConns <= 0 {
		c.IdleConns = 1000
	}
	if c.BasePort == 0 {
		c.BasePort = 2551
	}
}

// TLS loads, in the order of the report.
const (
	TLSHandshakeECDSA = "handshake-ecdsa"
	TLSHandshakeRSA   = "handshake-rsa"
	TLSMsg1           = "msg-1"
	TLSMsg100         = "msg-100"
	TLSIdle           = "idle"
)

// tlsLoad is one load of the section.
type tlsLoad struct {
	ID, Label string
	Unit      string // what Rate counts per second
	perConn   int    // messages per connection; 0: handshake (or connect) and EHLO only
	key       string // certificate of the TLS runs: "ecdsa" or "rsa"
	plain     bool   // runs in the clear too (beside TLS)
}

func tlsLoads() []tlsLoad {
	return []tlsLoad{
		{ID: TLSHandshakeECDSA, Label: "handshakes/s, ECDSA P-256 (plaintext: connect, greeting, EHLO)", Unit: "handshakes", key: "ecdsa", plain: true},
		{ID: TLSHandshakeRSA, Label: "handshakes/s, RSA 2048", Unit: "handshakes", key: "rsa"},
		{ID: TLSMsg1, Label: "msg/s, 1 per connection", Unit: "msgs", perConn: 1, key: "ecdsa", plain: true},
		{ID: TLSMsg100, Label: "msg/s, 100 per connection", Unit: "msgs", perConn: 100, key: "ecdsa", plain: true},
		{ID: TLSIdle, Label: "memory per idle session after EHLO", key: "ecdsa", plain: true},
	}
}

// TLSRun is one run of one server in one mode under one load.
type TLSRun struct {
	Rate        float64 // per second: messages or handshakes
	Count       int64   // what Rate counted in the window
	ServerCPUus float64 // server CPU per counted unit, µs
	ClientCPUus float64 // this process's CPU per counted unit, µs
	IdleBytes   float64 // the idle row: server RSS growth per session
	Err         string
}

// Server and mode names in TLSReport.Runs.
const (
	TLSModePlain = "plaintext"
	TLSModeTLS   = "TLS"
)

// TLSReport is what the section measured.
type TLSReport struct {
	Config  TLSConfig
	Loads   []tlsLoad
	Runs    map[string]map[string]map[string][]TLSRun // load → server (lsmtp, bridge) → mode → runs
	Args    map[string]string                         // server → command line
	Started time.Time
	Took    time.Duration
	Load    [2]float64
	Notes   []string
}

// tlsServers are the processes of the section: lsmtp and the bridge,
// each with an ECDSA and an RSA certificate, each on a plaintext and a
// TLS-from-the-first-byte listener.
type tlsServers struct {
	byName map[string]*tlsServer // "lsmtp-ecdsa", "bridge-rsa", ...
}

type tlsServer struct {
	srv          *Server
	plain, tlsAt string
	start        func() (*Server, error) // for the idle row's fresh processes
}

// RunTLS runs the section.
func RunTLS(ctx context.Context, cfg TLSConfig) (*TLSReport, error) {
	cfg.setDefaults()
	rep := &TLSReport{Config: cfg, Loads: tlsLoads(), Runs: map[string]map[string]map[string][]TLSRun{}, Args: map[string]string{}, Started: time.Now()}
	rep.Load[0] = loadAvg()
	defer func() { rep.Took, rep.Load[1] = time.Since(rep.Started), loadAvg() }()
	if cfg.LogDir == "" {
		dir, err := os.MkdirTemp("", "lsmtp-tls-")
		if err != nil {
			return nil, err
		}
		cfg.LogDir = dir
		rep.Config.LogDir = dir
	}
	if _, err := RaiseFileLimit(uint64(2*cfg.IdleConns) + 1024); err != nil {
		rep.Notes = append(rep.Notes, err.Error())
	}
	certDir, err := os.MkdirTemp("", "lsmtp-tls-certs-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(certDir)
	pool := x509.NewCertPool()
	certs := map[string][2]string{}
	for _, kt := range []string{"ecdsa", "rsa"} {
		crt, key, err := writeBenchCert(certDir, kt, pool)
		if err != nil {
			return nil, err
		}
		certs[kt] = [2]string{crt, key}
	}
	client := &tls.Config{ServerName: benchTLSName, RootCAs: pool} // no session cache: every handshake is a full one
	bridgeBin, err := BuildPeer(ctx, cfg.Go, cfg.PeerDir)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(filepath.Dir(bridgeBin))

	servers := tlsServers{byName: map[string]*tlsServer{}}
	port := cfg.BasePort
	addr := func() string { port++; return "127.0.0.1:" + strconv.Itoa(port-1) }
	admin := cfg.BasePort + 10
	for _, kt := range []string{"ecdsa", "rsa"} {
		crt, key := certs[kt][0], certs[kt][1]
		ls := &tlsServer{plain: addr(), tlsAt: addr()}
		adminAddr := "127.0.0.1:" + strconv.Itoa(admin)
		admin++
		ls.start = func() (*Server, error) {
			return StartLsmtp(ctx, LsmtpOptions{Binary: cfg.Lsmtp, Listen: ls.plain, Admin: adminAddr, Sink: "null", LogDir: cfg.LogDir,
				// All clients come from 127.0.0.1: no per-IP bound on
				// their handshakes.
				ExtraArgs: []string{"--listen-tls", ls.tlsAt, "--tls-cert", crt, "--tls-key", key, "--max-tls-handshakes-per-ip", "0"}})
		}
		bs := &tlsServer{plain: addr(), tlsAt: addr()}
		name := "bridge-" + kt
		bs.start = func() (*Server, error) {
			b := &Server{Name: "go-smtp bridge", Addr: bs.plain,
				Args: []string{bridgeBin, "-addr", bs.plain, "-tls-cert", crt, "-tls-key", key, "-tls-addr", bs.tlsAt}}
			if err := b.start(cfg.LogDir, name); err != nil {
				return nil, err
			}
			if err := b.waitGreeting(ctx, 15*time.Second); err != nil {
				b.Stop()
				return nil, err
			}
			return b, nil
		}
		servers.byName["lsmtp-"+kt], servers.byName[name] = ls, bs
	}
	for name, s := range servers.byName {
		srv, err := s.start()
		if err != nil {
			servers.stop()
			return nil, fmt.Errorf("tls: starting %s: %w", name, err)
		}
		s.srv = srv
	}
	defer servers.stop()
	rep.Args[PeerLsmtp] = strings.Join(servers.byName["lsmtp-ecdsa"].srv.Args, " ")
	rep.Args[PeerBridge] = "gosmtp-amqp " + strings.Join(servers.byName["bridge-ecdsa"].srv.Args[1:], " ")

	msg := Message(cfg.Size)
	// A short unmeasured run of each: goroutines, buffers and pools exist
	// before the first measured run.
	for _, s := range servers.byName {
		warm := tlsLoadRun{addr: s.tlsAt, conf: client, clients: 8, perConn: 10, msg: msg, window: 500 * time.Millisecond}
		if _, err := warm.run(ctx, s.srv.Pid()); err != nil {
			return rep, fmt.Errorf("tls: warm-up of %s: %w", s.srv.Name, err)
		}
	}
	for _, load := range rep.Loads {
		rep.Runs[load.ID] = map[string]map[string][]TLSRun{PeerLsmtp: {}, PeerBridge: {}}
		modes := []string{TLSModeTLS}
		if load.plain {
			modes = []string{TLSModePlain, TLSModeTLS}
		}
		for pair := 0; pair < cfg.Pairs; pair++ {
			for _, server := range []string{PeerLsmtp, PeerBridge} {
				for _, mode := range modes {
					if ctx.Err() != nil {
						return rep, ctx.Err()
					}
					s := servers.byName[server+"-"+load.key]
					if cfg.Progress != nil {
						fmt.Fprintf(cfg.Progress, "\rtls %-16s pair %d/%d %-6s %-9s ", load.ID, pair+1, cfg.Pairs, server, mode)
					}
					var tr TLSRun
					if load.ID == TLSIdle {
						tr = rep.idleRun(ctx, cfg, s, mode, client)
					} else {
						lr := tlsLoadRun{addr: s.tlsAt, conf: client, perConn: load.perConn, msg: msg, window: cfg.Window, clients: cfg.Sessions}
						if mode == TLSModePlain {
							lr.addr, lr.conf = s.plain, nil
						}
						if load.perConn == 0 {
							lr.clients = cfg.Dialers
						}
						var err error
						tr, err = lr.run(ctx, s.srv.Pid())
						if err != nil {
							tr.Err = err.Error()
						}
					}
					if cfg.Progress != nil {
						fmt.Fprintf(cfg.Progress, "%8.0f/s server %6.1f µs idle %6.0f B %s   ", tr.Rate, tr.ServerCPUus, tr.IdleBytes, tr.Err)
					}
					if tr.Err != "" {
						rep.Notes = append(rep.Notes, fmt.Sprintf("%s, %s %s, pair %d: %s", load.ID, server, mode, pair+1, tr.Err))
					}
					rep.Runs[load.ID][server][mode] = append(rep.Runs[load.ID][server][mode], tr)
					if !s.srv.Alive() {
						return rep, fmt.Errorf("tls: %s exited; see %s", s.srv.Name, s.srv.LogPath)
					}
				}
			}
		}
	}
	if cfg.Progress != nil {
		fmt.Fprintln(cfg.Progress)
	}
	return rep, nil
}

func (ss tlsServers) stop() {
	for _, s := range ss.byName {
		if s.srv != nil {
			s.srv.Stop()
		}
	}
}

// idleRun measures a fresh process of s: its resident memory with
// IdleConns sessions idle after EHLO, less its memory before them, per
// session. The load rows' process stays up (and idle) meanwhile, on
// other ports.
func (rep *TLSReport) idleRun(ctx context.Context, cfg TLSConfig, s *tlsServer, mode string, client *tls.Config) (tr TLSRun) {
	// The fresh process takes the ports of the one running: stop it, and
	// start it again after.
	s.srv.Stop()
	defer func() {
		srv, err := s.start()
		if err != nil {
			tr.Err = strings.TrimSpace(tr.Err + " restart: " + err.Error())
			return
		}
		s.srv = srv
	}()
	srv, err := s.start()
	if err != nil {
		tr.Err = err.Error()
		return tr
	}
	defer srv.Stop()
	addr, conf := s.tlsAt, client
	if mode == TLSModePlain {
		addr, conf = s.plain, nil
	}
	time.Sleep(200 * time.Millisecond)
	before := procRSS(srv.Pid())
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range cfg.IdleConns {
		if ctx.Err() != nil {
			tr.Err = ctx.Err().Error()
			return tr
		}
		c, _, err := dialBenchSession(addr, conf)
		if err != nil {
			tr.Err = err.Error()
			return tr
		}
		conns = append(conns, c)
	}
	time.Sleep(time.Second) // the server's last allocations for them settle
	after := procRSS(srv.Pid())
	tr.IdleBytes = float64(after-before) / float64(cfg.IdleConns)
	tr.Count = int64(cfg.IdleConns)
	return tr
}

// procRSS is a process's resident set size in octets (VmRSS).
func procRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// tlsLoadRun is one run of clients against one listener: each client
// connects (and handshakes when conf is set), reads the greeting, says
// EHLO, then sends perConn pipelined messages (RFC 2920: MAIL, RCPT and
// DATA in one write; each body with the next MAIL, RCPT and DATA, or
// the QUIT) and connects again; with perConn 0 it closes after EHLO.
type tlsLoadRun struct {
	addr    string
	conf    *tls.Config // nil: plaintext
	clients int
	perConn int
	msg     []byte
	window  time.Duration
}

// benchTLSName is the name in the certificates and the clients' SNI.
const benchTLSName = "bench.lsmtp.test"

var (
	tlsBenchEnvelope = []byte("MAIL FROM:<bench@lsmtp.test>\r\nRCPT TO:<rcpt1@lsmtp.test>\r\nDATA\r\n")
	tlsBenchQuit     = []byte("QUIT\r\n")
)

// run drives the clients for a second of warm-up and the window, and
// counts what completed in the window: messages answered 250, or
// sessions that got their reply to EHLO.
func (lr tlsLoadRun) run(ctx context.Context, serverPid int) (TLSRun, error) {
	var count atomic.Int64
	var stop atomic.Bool
	var firstErr atomic.Pointer[error]
	bodyThenEnvelope := append(append(append([]byte(nil), lr.msg...), ".\r\n"...), tlsBenchEnvelope...)
	bodyThenQuit := append(append(append([]byte(nil), lr.msg...), ".\r\n"...), tlsBenchQuit...)
	var wg sync.WaitGroup
	for range lr.clients {
		wg.Go(func() {
			for !stop.Load() && ctx.Err() == nil {
				err := lr.session(&count, &stop, bodyThenEnvelope, bodyThenQuit)
				if err != nil && !stop.Load() {
					firstErr.CompareAndSwap(nil, &err)
					stop.Store(true)
				}
			}
		})
	}
	var tr TLSRun
	time.Sleep(time.Second)
	c0, s0, p0, t0 := count.Load(), ProcCPU(serverPid), cpuTime(), time.Now()
	select {
	case <-time.After(lr.window):
	case <-ctx.Done():
	}
	c1, s1, p1, elapsed := count.Load(), ProcCPU(serverPid), cpuTime(), time.Since(t0)
	stop.Store(true)
	wg.Wait()
	tr.Count = c1 - c0
	if tr.Count > 0 {
		tr.Rate = float64(tr.Count) / elapsed.Seconds()
		tr.ServerCPUus = float64(s1-s0) / float64(time.Microsecond) / float64(tr.Count)
		tr.ClientCPUus = float64(p1-p0) / float64(time.Microsecond) / float64(tr.Count)
	}
	if e := firstErr.Load(); e != nil {
		return tr, *e
	}
	if tr.Count == 0 {
		return tr, errors.New("nothing completed in the window")
	}
	return tr, nil
}

// session is one connection of a client.
func (lr tlsLoadRun) session(count *atomic.Int64, stop *atomic.Bool, bodyThenEnvelope, bodyThenQuit []byte) error {
	c, r, err := dialBenchSession(lr.addr, lr.conf)
	if err != nil {
		return err
	}
	defer c.Close()
	if lr.perConn == 0 {
		count.Add(1)
		return nil
	}
	if _, err := c.Write(tlsBenchEnvelope); err != nil {
		return err
	}
	if err := expectCodes(r, "250", "250", "354"); err != nil {
		return err
	}
	for sent := 1; ; sent++ {
		if sent >= lr.perConn || stop.Load() {
			if _, err := c.Write(bodyThenQuit); err != nil {
				return err
			}
			if err := expectCodes(r, "250"); err != nil {
				return err
			}
			count.Add(1)
			return expectCodes(r, "221")
		}
		if _, err := c.Write(bodyThenEnvelope); err != nil {
			return err
		}
		if err := expectCodes(r, "250"); err != nil {
			return err
		}
		count.Add(1)
		if err := expectCodes(r, "250", "250", "354"); err != nil {
			return err
		}
	}
}

// dialBenchSession connects, handshakes when conf is set, and reads the
// greeting and the reply to EHLO.
func dialBenchSession(addr string, conf *tls.Config) (net.Conn, *bufio.Reader, error) {
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, nil, err
	}
	_ = raw.SetDeadline(time.Now().Add(60 * time.Second))
	c := raw
	if conf != nil {
		tc := tls.Client(raw, conf)
		if err := tc.Handshake(); err != nil {
			raw.Close()
			return nil, nil, fmt.Errorf("handshake with %s: %w", addr, err)
		}
		c = tc
	}
	r := bufio.NewReader(c)
	if err := expectCodes(r, "220"); err != nil {
		c.Close()
		return nil, nil, err
	}
	if _, err := c.Write([]byte("EHLO bench.lsmtp.test\r\n")); err != nil {
		c.Close()
		return nil, nil, err
	}
	if err := expectCodes(r, "250"); err != nil {
		c.Close()
		return nil, nil, err
	}
	_ = raw.SetDeadline(time.Time{})
	return c, r, nil
}

// expectCodes reads one reply per code (multiline replies whole) and
// checks each.
func expectCodes(r *bufio.Reader, codes ...string) error {
	for _, code := range codes {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return fmt.Errorf("reading the reply (want %s): %w", code, err)
			}
			if !strings.HasPrefix(line, code) {
				return fmt.Errorf("reply %q, want %s", strings.TrimSpace(line), code)
			}
			if len(line) < 4 || line[3] != '-' {
				break
			}
		}
	}
	return nil
}

// writeBenchCert writes a self-signed certificate for benchTLSName with a
// P-256 (ecdsa) or RSA 2048 key, and adds it to pool.
func writeBenchCert(dir, keyType string, pool *x509.CertPool) (certFile, keyFile string, err error) {
	var key, pub any
	switch keyType {
	case "rsa":
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return "", "", err
		}
		key, pub = k, &k.PublicKey
	default:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return "", "", err
		}
		key, pub = k, &k.PublicKey
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: benchTLSName},
		DNSNames:     []string{benchTLSName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		return "", "", err
	}
	crt, err := x509.ParseCertificate(der)
	if err != nil {
		return "", "", err
	}
	pool.AddCert(crt)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, keyType+".crt"), filepath.Join(dir, keyType+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}
