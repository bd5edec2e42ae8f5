package engine

import (
	"bytes"
	"context"
	"encoding/base64"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/lsmtp/lsmtp/codec"
)

// AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN, over TLS only. The
// exchange after the AUTH line (334 challenges, base64 responses) is a
// session state of its own, stAuth. Every step runs on the session's TLS
// goroutine, never on an event loop: AUTH in the clear is answered 538 at
// once, and a password hash is checked (milliseconds of CPU) and a failure
// delayed (time.Sleep) only there.

// authLineMax bounds one line of the AUTH exchange. RFC 4954 §4 asks
// servers to take 12288 octets for an AUTH line; a PLAIN response of
// three 255-octet fields is 1024 octets of base64, and that is all PLAIN
// and LOGIN need.
const authLineMax = 12288

// maxAuthUser bounds a user name: it is kept for the session and goes
// into the smtp-auth-user header (the broker reserves 255 octets for it).
const maxAuthUser = 255

// authMech is the mechanism of an exchange in progress.
type authMech uint8

const (
	mechNone authMech = iota
	mechPlain
	mechLoginUser // LOGIN, waiting for the user name
	mechLoginPass // LOGIN, waiting for the password
)

// authExchange is the state of an AUTH in progress; owned like the
// session.
type authExchange struct {
	mech    authMech
	user    []byte // LOGIN's user name, between its two steps
	scratch []byte // base64-decoded responses; zeroed after use
}

// AuthResult is what became of an AUTH command.
type AuthResult uint8

const (
	AuthOK        AuthResult = iota // 235 2.7.0
	AuthFailed                      // 535 5.7.8: unknown user or wrong password
	AuthMalformed                   // 501 5.5.2 (base64), or 535 for a PLAIN message that is not three fields
	AuthCancelled                   // 501: the client sent "*"
	AuthCleartext                   // 538 5.7.11: AUTH before STARTTLS
	numAuthResults
)

var authResultNames = [numAuthResults]string{"ok", "failed", "malformed", "cancelled", "cleartext"}

func (r AuthResult) String() string { return authResultNames[r] }

// AuthResults for the exporter.
func AuthResults() []AuthResult {
	r := make([]AuthResult, numAuthResults)
	for i := range r {
		r[i] = AuthResult(i)
	}
	return r
}

// LOGIN's challenges, base64 of "Username:" and "Password:".
var (
	replyLoginUser = &codec.Reply{Code: 334, Text: "VXNlcm5hbWU6"}
	replyLoginPass = &codec.Reply{Code: 334, Text: "UGFzc3dvcmQ6"}
	replyPlainGo   = []byte("334 \r\n") // RFC 4954 §4: an empty challenge
)

// authCmd answers AUTH mechanism [initial-response].
func (s *session) authCmd(now time.Time) {
	st := &s.srv.stats.TLS
	switch {
	case !s.srv.tls.auth.loaded():
		s.fail(replyNotImpl) // not offered
		return
	case s.tls.Load() == nil:
		// Whatever the line holds (a password, perhaps) is not looked at.
		st.Auth[AuthCleartext].Add(1)
		s.fail(replyAuthClear)
		return
	case s.sec.authUser != nil:
		s.fail(replyAuthTwice) // RFC 4954 §4
		return
	case s.hasMail:
		s.fail(replyAuthInTx)
		return
	}
	mech, ir, hasIR := bytes.Cut(s.cmd.Arg, []byte(" "))
	ir = bytes.TrimLeft(ir, " ")
	a := &s.sec.auth
	switch {
	case bytes.EqualFold(mech, []byte("PLAIN")):
		if !hasIR {
			a.mech = mechPlain
			s.out = append(s.out, replyPlainGo...)
			s.state = stAuth
			return
		}
		s.authStep(mechPlain, ir, now)
	case bytes.EqualFold(mech, []byte("LOGIN")):
		if !hasIR {
			a.mech = mechLoginUser
			s.reply(replyLoginUser)
			s.state = stAuth
			return
		}
		s.authStep(mechLoginUser, ir, now)
	default:
		s.fail(replyAuthMech)
	}
}

// readAuth reads one response line of the exchange. A drain or a forced
// shutdown ends it as readCommand ends a session between commands: an
// AUTH exchange is never inside a transaction (RFC 4954 §4).
func (s *session) readAuth(in []byte, now time.Time) (int, bool) {
	if s.srv.force.Load() || s.srv.draining.Load() {
		s.endAuth()
		s.closeWith(s.cfg.replies.shutdown)
		return 0, false
	}
	s.lines.MaxLine = authLineMax
	line, n, err := s.lines.Next(in)
	s.lines.MaxLine = s.cfg.MaxLineLength
	if n == 0 {
		return 0, false
	}
	switch {
	case err != nil:
		s.endAuth()
		s.fail(replyAuthLong)
	case line == nil:
		return n, true // inside an overlong line
	default:
		s.authStep(s.sec.auth.mech, line, now)
	}
	s.setDeadline(now)
	return n, true
}

// authStep takes one base64 response: the initial response or a line
// after a 334.
func (s *session) authStep(mech authMech, resp []byte, now time.Time) {
	st := &s.srv.stats.TLS
	a := &s.sec.auth
	if len(resp) == 1 && resp[0] == '*' {
		s.endAuth()
		st.Auth[AuthCancelled].Add(1)
		s.fail(replyAuthCancel) // RFC 4954 §4: "*" cancels, 501
		return
	}
	dec := a.scratch[:0]
	if !(len(resp) == 1 && resp[0] == '=') { // "=": an empty response
		var err error
		if dec, err = base64.StdEncoding.AppendDecode(dec, resp); err != nil {
			s.endAuth()
			st.Auth[AuthMalformed].Add(1)
			s.fail(replyAuthBase64)
			return
		}
	}
	a.scratch = dec
	switch mech {
	case mechPlain:
		// RFC 4616 §2: [authzid] NUL authcid NUL passwd. An authzid
		// other than the user would be acting as someone else: refused.
		authz, rest, ok1 := bytes.Cut(dec, []byte{0})
		user, pass, ok2 := bytes.Cut(rest, []byte{0})
		if !ok1 || !ok2 || bytes.IndexByte(pass, 0) >= 0 || len(user) == 0 || len(user) > maxAuthUser ||
			(len(authz) > 0 && !bytes.Equal(authz, user)) {
			s.endAuth()
			st.Auth[AuthMalformed].Add(1)
			s.authFailed(now)
			return
		}
		s.verify(user, pass, now)
	case mechLoginUser:
		a.user = append(a.user[:0], dec...)
		clear(dec)
		a.mech = mechLoginPass
		s.state = stAuth
		s.reply(replyLoginPass)
	case mechLoginPass:
		if len(a.user) == 0 || len(a.user) > maxAuthUser {
			s.endAuth()
			st.Auth[AuthMalformed].Add(1)
			s.authFailed(now)
			return
		}
		s.verify(a.user, dec, now)
	}
}

// verify checks the credentials and answers; the exchange is over.
func (s *session) verify(user, pass []byte, now time.Time) {
	srv := s.srv
	st := &srv.stats.TLS
	ok, err := srv.tls.auth.check(user, pass, srv.tls.verifying)
	if err != nil {
		s.endAuth()
		s.reply(replyAuthTempFail)
		return
	}
	if !ok {
		s.endAuth()
		st.Auth[AuthFailed].Add(1)
		s.authFailed(now)
		return
	}
	s.setAuthUser(user)
	s.endAuth()
	st.Auth[AuthOK].Add(1)
	srv.tls.fails.forget(srv.keyOf(s.remote.Addr()))
	if log := s.cfg.Logger; log.Enabled(context.Background(), slog.LevelDebug) {
		log.LogAttrs(context.Background(), slog.LevelDebug, "authenticated",
			slog.String("client", s.ipText), slog.String("user", string(s.sec.authUser)))
	}
	s.reply(replyAuthOK)
}

// setAuthUser names the session's authenticated user (AUTH, XCLIENT
// LOGIN=; nil or empty forgets it) and keeps Stats.TLS.AuthSessions: it
// counts the sessions on TLS that have one, and tlsConn.run takes the
// session's count back when it ends. A user named in the clear is not
// counted: STARTTLS forgets it (established) before the session counts
// as on TLS.
func (s *session) setAuthUser(user []byte) {
	had := s.sec.authUser != nil
	s.sec.authUser = nil
	if len(user) > 0 {
		s.sec.authUser = append(make([]byte, 0, len(user)), user...)
	}
	has := s.sec.authUser != nil
	if t := s.tls.Load(); had != has && t != nil && t.ready.Load() {
		if has {
			s.srv.stats.TLS.AuthSessions.Add(1)
		} else {
			s.srv.stats.TLS.AuthSessions.Add(-1)
		}
	}
}

// authFailed answers 535 after the delay this client IP has earned; it
// counts against MaxErrors like any 5xx.
func (s *session) authFailed(now time.Time) {
	d := s.srv.tls.fails.add(s.srv.keyOf(s.remote.Addr()), now, s.cfg.AuthFailDelay)
	time.Sleep(d) // the session's own goroutine: nobody else waits
	s.fail(replyAuthFailed)
}

// endAuth leaves the exchange and forgets what the client sent.
func (s *session) endAuth() {
	a := &s.sec.auth
	clear(a.scratch[:cap(a.scratch)])
	clear(a.user[:cap(a.user)])
	a.scratch, a.user = a.scratch[:0], a.user[:0]
	a.mech = mechNone
	if s.state == stAuth {
		s.state = stCommand
	}
}

// failTracker counts failed AUTH attempts per client IP, so that the
// delay before each 535 grows for an address that keeps guessing, across
// its sessions. It is bounded: past maxTrackedFailures addresses, those
// idle longest are forgotten.
type failTracker struct {
	mu sync.Mutex
	m  map[netip.Addr]failEntry // guarded by mu
}

type failEntry struct {
	n    int
	last time.Time
}

const (
	maxTrackedFailures = 65536
	// failMemory is how long an address's failures are remembered after
	// its last one.
	failMemory = 15 * time.Minute
	// maxFailShift caps the delay at base << maxFailShift.
	maxFailShift = 5
)

func (f *failTracker) init() { f.m = make(map[netip.Addr]failEntry) }

// add counts a failure and returns the delay before its reply: base,
// doubling with each failure, up to 32 × base.
func (f *failTracker) add(ip netip.Addr, now time.Time, base time.Duration) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.m[ip]
	if now.Sub(e.last) > failMemory {
		e.n = 0
	}
	e.n++
	e.last = now
	if _, known := f.m[ip]; !known && len(f.m) >= maxTrackedFailures {
		for k, v := range f.m {
			if now.Sub(v.last) > failMemory {
				delete(f.m, k)
			}
		}
		if len(f.m) >= maxTrackedFailures {
			clear(f.m)
		}
	}
	f.m[ip] = e
	return failDelay(e.n, base)
}

// failDelay is the delay before the reply to the n-th failure.
func failDelay(n int, base time.Duration) time.Duration {
	return base << min(n-1, maxFailShift)
}

// failures is how many failures ip has to its name.
func (f *failTracker) failures(ip netip.Addr) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.m[ip].n
}

func (f *failTracker) forget(ip netip.Addr) {
	f.mu.Lock()
	delete(f.m, ip)
	f.mu.Unlock()
}
