package engine

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lsmtp/lsmtp/codec"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// TLS (RFC 3207 STARTTLS, RFC 8314 implicit TLS) and the listeners that
// need it. gnet has no TLS and crypto/tls wants blocking reads, so a
// session that starts TLS leaves its event loop: the loop writes the 220,
// drops whatever the client pipelined behind STARTTLS, duplicates the
// descriptor and closes its own copy, and the rest of the session runs on
// one goroutine over Go's network poller (tlsconn.go), driving the same
// state machine through the conn interface.

// listenerKind is what a listener speaks from the first byte.
type listenerKind uint8

const (
	kindPlain      listenerKind = iota // --listen: SMTP, STARTTLS offered when a certificate is loaded
	kindTLS                            // --listen-tls: TLS first (RFC 8314 §3), then SMTP
	kindSubmission                     // --listen-submission: like plain, but MAIL needs AUTH (RFC 6409 §4.3)
)

// listeners is every listener of c with its kind, in the order of Addrs.
func (c *Config) listeners() []listenerAddr {
	var all []listenerAddr
	for _, a := range c.Listen {
		all = append(all, listenerAddr{addr: a, kind: kindPlain})
	}
	for _, a := range c.ListenTLS {
		all = append(all, listenerAddr{addr: a, kind: kindTLS})
	}
	for _, a := range c.ListenSubmission {
		all = append(all, listenerAddr{addr: a, kind: kindSubmission})
	}
	return all
}

type listenerAddr struct {
	addr  string
	kind  listenerKind
	bound *net.TCPAddr // what the kernel gave it (OnBoot)
}

// TLS versions --tls-min-version takes. RFC 8996: TLS 1.0 and 1.1 are
// never negotiated.
var tlsVersions = map[string]uint16{"1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13}

// validateTLS checks the TLS and AUTH settings; Validate calls it.
func (c *Config) validateTLS(bad func(field, format string, args ...any)) {
	for _, a := range c.ListenTLS {
		if err := checkHostPort(a); err != nil {
			bad("ListenTLS", "%v", err)
		}
	}
	for _, a := range c.ListenSubmission {
		if err := checkHostPort(a); err != nil {
			bad("ListenSubmission", "%v", err)
		}
	}
	if _, ok := tlsVersions[c.TLSMinVersion]; !ok {
		bad("TLSMinVersion", "%q: want 1.2 or 1.3 (TLS 1.0 and 1.1 are deprecated by RFC 8996)", c.TLSMinVersion)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		bad("TLSCert", "needs both TLSCert and TLSKey")
	}
	noTLS := c.TLSCert == ""
	if noTLS && len(c.ListenTLS) > 0 {
		bad("ListenTLS", "needs TLSCert and TLSKey")
	}
	if noTLS && c.RequireTLS {
		bad("RequireTLS", "needs TLSCert and TLSKey")
	}
	if c.AuthFile != "" {
		if noTLS {
			bad("AuthFile", "needs TLSCert and TLSKey: AUTH is accepted only over TLS (RFC 4954 §4)")
		}
	}
	if c.AuthFile == "" && (c.RequireAuth || len(c.ListenSubmission) > 0) {
		bad("AuthFile", "RequireAuth and ListenSubmission need an AuthFile")
	}
	if c.HandshakeTimeout < 0 || c.MaxHandshakes < 0 || c.AuthFailDelay < 0 {
		bad("HandshakeTimeout", "HandshakeTimeout, MaxHandshakes and AuthFailDelay must not be negative")
	}
	if c.MaxHandshakesPerIP < 0 {
		bad("MaxHandshakesPerIP", "must not be negative")
	}
}

// CheckFiles loads the certificate pair and the auth file as New would,
// and says what is wrong with them, each problem named by its field like
// Validate's. Validate does not read files: on Reload a file that does
// not load keeps the one in force instead of failing the whole reload.
func (c *Config) CheckFiles() error {
	var errs []error
	if c.TLSCert != "" && c.TLSKey != "" {
		if _, err := loadKeyPair(c.TLSCert, c.TLSKey); err != nil {
			errs = append(errs, fmt.Errorf("engine: TLSCert: %w", err))
		}
	}
	if c.AuthFile != "" {
		if _, err := loadAuthFile(c.AuthFile); err != nil {
			errs = append(errs, fmt.Errorf("engine: AuthFile: %w", err))
		}
	}
	return errors.Join(errs...)
}

// tlsDefaults fills the zero TLS fields; withDefaults calls it.
func (c *Config) tlsDefaults() {
	d := Defaults
	orDefault(&c.TLSMinVersion, d.TLSMinVersion)
	orDefault(&c.HandshakeTimeout, d.HandshakeTimeout)
	orDefault(&c.AuthFailDelay, d.AuthFailDelay)
}

// tlsServer is the server's TLS and AUTH state.
type tlsServer struct {
	certs certStore
	auth  authStore
	fails failTracker
	// conf is the tls.Config in force (TLSMinVersion may change on
	// reload); certificates come from certs at each handshake.
	conf atomic.Pointer[tls.Config]
	// handshakes bounds the handshakes running at once: each costs CPU
	// the client chooses to make us spend; perIP bounds those of one
	// client, so that one address cannot hold every slot of handshakes.
	handshakes chan struct{}
	perIP      clientHandshakes
	// verifying bounds password hashes being checked at once.
	verifying chan struct{}
	// kinds of the listeners, with their bound addresses; set in OnBoot.
	// special is false when every listener is kindPlain, so that OnOpen
	// does not look.
	kinds   []listenerAddr
	special bool
}

// setupTLS loads the certificate and the auth file (New).
func (s *Server) setupTLS(cfg *Config) error {
	t := &s.tls
	t.certs.stats, t.auth.stats = s.stats, s.stats
	n := cfg.MaxHandshakes
	if n == 0 {
		n = 16 * runtime.GOMAXPROCS(0)
	}
	t.handshakes = make(chan struct{}, n)
	t.perIP = clientHandshakes{limit: cfg.MaxHandshakesPerIP, m: make(map[netip.Addr]*clientSlots)}
	t.verifying = make(chan struct{}, runtime.GOMAXPROCS(0))
	t.fails.init()
	if err := t.certs.load(cfg.TLSCert, cfg.TLSKey); err != nil {
		return err
	}
	if err := t.auth.load(cfg.AuthFile); err != nil {
		return err
	}
	t.configure(cfg)
	for _, l := range cfg.listeners() {
		t.special = t.special || l.kind != kindPlain
	}
	return nil
}

// reloadTLS re-reads the certificate and the auth file (Reload, SIGHUP).
// A pair or a file that does not load leaves the running one in force;
// certStore and authStore say so in one log line and a counter.
func (s *Server) reloadTLS(cfg *Config) {
	s.tls.certs.setLog(cfg.Logger)
	s.tls.auth.setLog(cfg.Logger)
	_ = s.tls.certs.load(cfg.TLSCert, cfg.TLSKey)
	_ = s.tls.auth.load(cfg.AuthFile)
	s.tls.configure(cfg)
}

func (t *tlsServer) configure(cfg *Config) {
	t.certs.setLog(cfg.Logger)
	t.auth.setLog(cfg.Logger)
	t.conf.Store(&tls.Config{
		GetCertificate: t.certs.get,
		MinVersion:     tlsVersions[cfg.TLSMinVersion],
	})
}

// kindOf names the listener a connection came in on by its local
// address: a listener on a wildcard address matches by port.
func (t *tlsServer) kindOf(fd int) listenerKind {
	ta, ok := boundAddr(fd, nil).(*net.TCPAddr)
	if !ok || ta == nil {
		return kindPlain
	}
	for _, l := range t.kinds {
		if l.bound != nil && l.bound.Port == ta.Port && (l.bound.IP.IsUnspecified() || l.bound.IP.Equal(ta.IP)) {
			return l.kind
		}
	}
	return kindPlain
}

// clientHandshakes bounds the handshakes one client runs at once
// (Config.MaxHandshakesPerIP), a client named by Server.clientKey like
// the per-IP connection limit. A client has an entry only while one of
// its handshakes runs or waits, so the map holds at most one entry per
// open connection. Any TLS goroutine may call its methods.
type clientHandshakes struct {
	limit int // 0: no bound of its own; never changes (Reload keeps it)

	mu sync.Mutex
	m  map[netip.Addr]*clientSlots // guarded by mu
}

// clientSlots are one client's: a slot is a value in sem; users counts
// the handshakes holding or waiting for one (guarded by
// clientHandshakes.mu), and the entry goes when it is back to 0.
type clientSlots struct {
	sem   chan struct{}
	users int
}

// take waits for one of key's slots, until wait fires; false when none
// came free. Its result goes back to give.
func (h *clientHandshakes) take(key netip.Addr, wait func() <-chan time.Time) (*clientSlots, bool) {
	if h.limit == 0 {
		return nil, true
	}
	h.mu.Lock()
	c := h.m[key]
	if c == nil {
		c = &clientSlots{sem: make(chan struct{}, h.limit)}
		h.m[key] = c
	}
	c.users++
	h.mu.Unlock()
	select {
	case c.sem <- struct{}{}:
		return c, true
	default:
	}
	select {
	case c.sem <- struct{}{}:
		return c, true
	case <-wait():
	}
	h.leave(key, c)
	return nil, false
}

// give returns a slot take gave (nil: none).
func (h *clientHandshakes) give(key netip.Addr, c *clientSlots) {
	if c == nil {
		return
	}
	<-c.sem
	h.leave(key, c)
}

func (h *clientHandshakes) leave(key netip.Addr, c *clientSlots) {
	h.mu.Lock()
	if c.users--; c.users == 0 {
		delete(h.m, key)
	}
	h.mu.Unlock()
}

// certStore holds the certificate in force. It is read at every
// handshake (GetCertificate, on the TLS goroutines); the files are looked
// at again at most once a minute, and on Reload.
type certStore struct {
	stats *Stats
	log   interface{ Warn(string, ...any) }

	mu                sync.Mutex // held while loading
	certFile, keyFile string     // guarded by mu
	certMod, keyMod   time.Time  // guarded by mu

	cur       atomic.Pointer[tls.Certificate]
	nextCheck atomic.Int64 // Unix ns
}

// fileCheckInterval is how often certificate and auth files are looked at
// for changes.
const fileCheckInterval = time.Minute

// loaded says whether a certificate is in force, so that STARTTLS can be
// offered.
func (c *certStore) loaded() bool { return c.cur.Load() != nil }

func (c *certStore) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.recheck(time.Now())
	if crt := c.cur.Load(); crt != nil {
		return crt, nil
	}
	return nil, errors.New("no certificate")
}

// recheck reloads the pair when a file changed, at most once a minute.
func (c *certStore) recheck(now time.Time) {
	next := c.nextCheck.Load()
	if now.UnixNano() < next || !c.nextCheck.CompareAndSwap(next, now.Add(fileCheckInterval).UnixNano()) {
		return
	}
	c.mu.Lock()
	certFile, keyFile, cm, km := c.certFile, c.keyFile, c.certMod, c.keyMod
	c.mu.Unlock()
	if certFile == "" || (modTime(certFile).Equal(cm) && modTime(keyFile).Equal(km)) {
		return
	}
	_ = c.load(certFile, keyFile)
}

func modTime(name string) time.Time {
	fi, err := os.Stat(name)
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}

// setLog sets the logger of reload failures under mu: a TLS session may
// be reloading the pair through it.
func (c *certStore) setLog(log interface{ Warn(string, ...any) }) {
	c.mu.Lock()
	c.log = log
	c.mu.Unlock()
}

// load reads the pair; on failure the certificate in force stays.
func (c *certStore) load(certFile, keyFile string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextCheck.Store(time.Now().Add(fileCheckInterval).UnixNano())
	if certFile == "" {
		c.certFile, c.keyFile = "", ""
		c.cur.Store(nil)
		c.stats.TLS.CertExpiry.Store(0)
		return nil
	}
	cm, km := modTime(certFile), modTime(keyFile)
	crt, err := loadKeyPair(certFile, keyFile)
	if err != nil {
		c.stats.TLS.CertReloadFailures.Add(1)
		if c.log != nil && c.cur.Load() != nil {
			c.log.Warn("certificate not reloaded; the previous one stays in force", "cert", certFile, "key", keyFile, "err", err)
		}
		return err
	}
	c.certFile, c.keyFile, c.certMod, c.keyMod = certFile, keyFile, cm, km
	c.cur.Store(crt)
	c.stats.TLS.CertExpiry.Store(crt.Leaf.NotAfter.Unix())
	return nil
}

// loadKeyPair reads a PEM certificate (its chain may follow) and key.
func loadKeyPair(certFile, keyFile string) (*tls.Certificate, error) {
	crt, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("certificate %s, key %s: %w", certFile, keyFile, err)
	}
	if crt.Leaf == nil {
		return nil, fmt.Errorf("certificate %s: no leaf certificate", certFile)
	}
	return &crt, nil
}

// secState is a session's TLS and AUTH state; owned like the session.
type secState struct {
	kind        listenerKind
	requireAuth bool // MAIL needs AUTH (RequireAuth or a submission listener)
	startTLS    bool // hand the connection off once the 220 is out
	version     string
	cipher      string
	authUser    []byte // nil until AUTH succeeded
	auth        authExchange
}

// Replies of TLS and AUTH (RFC 3207, RFC 4954 §6).
var (
	replyReadyTLS     = &codec.Reply{Code: 220, Enhanced: "2.0.0", Text: "Ready to start TLS"}
	replyTLSActive    = &codec.Reply{Code: 503, Enhanced: "5.5.1", Text: "TLS already active"}
	replyTLSInTx      = &codec.Reply{Code: 503, Enhanced: "5.5.1", Text: "STARTTLS not allowed during a mail transaction"}
	replyNoArgs       = &codec.Reply{Code: 501, Enhanced: "5.5.4", Text: "Syntax error, no parameters allowed"}
	replyNeedTLS      = &codec.Reply{Code: 530, Enhanced: "5.7.0", Text: "Must issue a STARTTLS command first"}
	replyNeedAuth     = &codec.Reply{Code: 530, Enhanced: "5.7.0", Text: "Authentication required"}
	replyAuthOK       = &codec.Reply{Code: 235, Enhanced: "2.7.0", Text: "Authentication successful"}
	replyAuthFailed   = &codec.Reply{Code: 535, Enhanced: "5.7.8", Text: "Authentication credentials invalid"}
	replyAuthClear    = &codec.Reply{Code: 538, Enhanced: "5.7.11", Text: "Encryption required for requested authentication mechanism"}
	replyAuthTwice    = &codec.Reply{Code: 503, Enhanced: "5.5.1", Text: "Already authenticated"}
	replyAuthInTx     = &codec.Reply{Code: 503, Enhanced: "5.5.1", Text: "AUTH not allowed during a mail transaction"}
	replyAuthMech     = &codec.Reply{Code: 504, Enhanced: "5.5.4", Text: "Unrecognized authentication type"}
	replyAuthBase64   = &codec.Reply{Code: 501, Enhanced: "5.5.2", Text: "Cannot Base64-decode client response"}
	replyAuthCancel   = &codec.Reply{Code: 501, Enhanced: "5.0.0", Text: "Authentication cancelled"}
	replyAuthLong     = &codec.Reply{Code: 500, Enhanced: "5.5.6", Text: "Authentication exchange line is too long"}
	replyAuthTempFail = &codec.Reply{Code: 454, Enhanced: "4.7.0", Text: "Temporary authentication failure"}
)

// tlsReplies are the EHLO replies with STARTTLS or AUTH added, rendered
// once per configuration like the others.
type tlsReplies struct {
	ehloStartTLS []byte // in the clear, a certificate loaded
	ehloAuth     []byte // over TLS, an auth file loaded
}

func makeTLSReplies(base serverReplies) tlsReplies {
	return tlsReplies{
		ehloStartTLS: addEHLOLine(base.ehlo, "STARTTLS"),
		ehloAuth:     addEHLOLine(base.ehlo, "AUTH PLAIN LOGIN"),
	}
}

// addEHLOLine appends a keyword line to a multiline 250 reply.
func addEHLOLine(ehlo []byte, kw string) []byte {
	out := slices.Clone(ehlo)
	last := len(out) - 2 // the CRLF ending the last line
	for last > 0 && out[last-1] != '\n' {
		last--
	}
	out[last+3] = '-'
	return append(out, "250 "+kw+"\r\n"...)
}

// ehloReply is the EHLO reply for the session's state: STARTTLS is
// offered in the clear, AUTH only over TLS (RFC 4954 §4: no plaintext
// passwords on the wire), neither once TLS is up and no auth file is set.
// SIZE is the bound in force now (settings.maxSize).
func (s *session) ehloReply() []byte {
	s.sizeOffered = s.cfg.maxSize()
	e := s.cfg.ehloFor(s.sizeOffered)
	switch {
	case s.tls.Load() != nil:
		if s.srv.tls.auth.loaded() {
			return e.auth
		}
	case s.srv.tls.certs.loaded():
		return e.startTLS
	}
	return e.plain
}

// startTLSCmd answers STARTTLS (RFC 3207 §4). The 220 goes out with the
// replies before it; the loop then hands the connection off (OnClose)
// instead of closing it, and drops everything the client sent after the
// command in the clear.
func (s *session) startTLSCmd() {
	switch {
	case s.tls.Load() != nil:
		s.fail(replyTLSActive)
	case !s.srv.tls.certs.loaded():
		s.fail(replyNotImpl)
	case len(s.cmd.Arg) > 0:
		s.fail(replyNoArgs)
	case s.hasMail:
		s.fail(replyTLSInTx)
	default:
		s.reply(replyReadyTLS)
		s.sec.startTLS = true
		s.closeAfter = true // ends this pass: nothing behind it is read
	}
}

// setKind notes the listener a connection came in on (OnOpen; kindOf
// names it by the socket's local address: gnet's Conn.LocalAddr is the
// listener's address as configured, port 0 stays 0).
func (s *session) setKind(k listenerKind) {
	s.sec.kind = k
	s.sec.requireAuth = k == kindSubmission
}

// refusal is what a connection refused before its greeting is told: the
// reply, except on a TLS listener, where the client's first bytes are a
// ClientHello and it reads nothing but TLS records (RFC 8314 §3.3). A
// 421 there would need a handshake first, and a handshake is CPU the
// client makes us spend, the very thing a limit is there to stop; so the
// connection is closed without a word, and the client retries later as
// after any connection that fails (RFC 5321 §4.5.4.1).
func refusal(k listenerKind, reply []byte) []byte {
	if k == kindTLS {
		return nil
	}
	return reply
}

// implicitTLS makes open hand the connection off instead of greeting.
func (s *session) implicitTLS() []byte {
	s.sec.startTLS = true
	s.closeAfter = true
	return nil
}

// keepTLSListeners keeps the running values of what Reload cannot change
// and names them.
func (c *Config) keepTLSListeners(cur *Config) (restartNeeded []string) {
	if !slices.Equal(c.ListenTLS, cur.ListenTLS) {
		restartNeeded = append(restartNeeded, "listen-tls")
		c.ListenTLS = cur.ListenTLS
	}
	if !slices.Equal(c.ListenSubmission, cur.ListenSubmission) {
		restartNeeded = append(restartNeeded, "listen-submission")
		c.ListenSubmission = cur.ListenSubmission
	}
	if c.MaxHandshakes != cur.MaxHandshakes {
		restartNeeded = append(restartNeeded, "max-tls-handshakes")
		c.MaxHandshakes = cur.MaxHandshakes
	}
	if c.MaxHandshakesPerIP != cur.MaxHandshakesPerIP {
		restartNeeded = append(restartNeeded, "max-tls-handshakes-per-ip")
		c.MaxHandshakesPerIP = cur.MaxHandshakesPerIP
	}
	return restartNeeded
}

// mailGate refuses MAIL until the session is as secure as it must be:
// 530 5.7.0 (RFC 3207 §4, RFC 4954 §6).
func (s *session) mailGate() *codec.Reply {
	switch {
	case s.cfg.RequireTLS && s.tls.Load() == nil:
		return replyNeedTLS
	case (s.sec.requireAuth || s.cfg.RequireAuth) && s.sec.authUser == nil:
		return replyNeedAuth
	}
	return nil
}

// established resets the session once the handshake is done (RFC 3207
// §4.2: the client must EHLO again; nothing said in the clear counts,
// an XCLIENT HELO= neither, as Postfix forgets it at STARTTLS).
func (s *session) established(st *tls.ConnectionState, now time.Time) {
	s.resetTransaction()
	s.helo = s.helo[:0]
	s.heloOK = false
	s.xhelo = false
	s.ehlo = false
	s.sizeOffered = 0
	s.setAuthUser(nil) // not yet counted: the session is not ready
	s.sec.startTLS = false
	s.sec.version = tls.VersionName(st.Version)
	s.sec.cipher = tls.CipherSuiteName(st.CipherSuite)
	s.closeAfter = false
	s.spoke = true
	if s.sec.kind == kindTLS {
		s.out = append(s.out, s.open(now)...) // RFC 8314 §3.3: the greeting comes after the handshake
		return
	}
	s.state = stCommand
	s.setDeadline(now)
}

// fillSecurity puts the session's TLS and AUTH facts on the message.
func (s *session) fillSecurity(m *sink.Message) {
	m.TLSVersion = s.sec.version
	m.TLSCipher = s.sec.cipher
	m.AuthUser = s.sec.authUser
}

// protocols are the Received: "with" values: RFC 3848 §2 (ESMTPS, ESMTPA,
// ESMTPSA) and RFC 6531 §3.7.3 (UTF8SMTP, UTF8SMTPS, UTF8SMTPA,
// UTF8SMTPSA), by base protocol and by TLS (1) and AUTH (2).
var protocols = [3][4]string{
	{"SMTP", "SMTP", "SMTP", "SMTP"}, // HELO: RFC 3848 has no secure names for plain SMTP
	{"ESMTP", "ESMTPS", "ESMTPA", "ESMTPSA"},
	{"UTF8SMTP", "UTF8SMTPS", "UTF8SMTPA", "UTF8SMTPSA"},
}

func (s *session) secIndex() int {
	i := 0
	if s.sec.version != "" {
		i |= 1
	}
	if s.sec.authUser != nil {
		i |= 2
	}
	return i
}

// appendTLSComment appends " (TLS 1.3 TLS_AES_128_GCM_SHA256)" after the
// protocol of a session over TLS.
func (s *session) appendTLSComment(dst []byte) []byte {
	if s.sec.version == "" {
		return dst
	}
	dst = append(dst, " ("...)
	dst = append(dst, s.sec.version...)
	dst = append(dst, ' ')
	dst = append(dst, s.sec.cipher...)
	return append(dst, ')')
}

// keyOf names a client for the AUTH failure delay like the per-IP limit.
func (s *Server) keyOf(ip netip.Addr) netip.Addr { return s.clientKey(ip) }
