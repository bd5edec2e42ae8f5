package engine

import (
	"bytes"
	"net/netip"
	"time"
	"unicode/utf8"

	"github.com/lsmtp/lsmtp/codec"
)

// XCLIENT (Postfix XCLIENT_README): a relay or content filter in front
// of us names the client it speaks for, as a PROXY header does for a
// load balancer. Only a session whose TCP peer is in TrustedProxies or
// XclientFrom may send it (xclientAllowed); anyone else could claim any
// address, so gets 550 5.7.0 and does not see the EHLO keyword.

var (
	replyXclientDenied = &codec.Reply{Code: 550, Enhanced: "5.7.0", Text: "Error: insufficient authorization"}
	replyXclientInTx   = &codec.Reply{Code: 503, Enhanced: "5.5.1", Text: "Error: MAIL transaction in progress"}
)

// xclientKeyword is the EHLO keyword with the attributes we act on
// (XCLIENT_README: the keyword is followed by the supported names).
// DESTADDR and DESTPORT are accepted too but not advertised: they change
// nothing here.
const xclientKeyword = "XCLIENT NAME ADDR PORT PROTO HELO LOGIN"

// xclientMaxValue bounds a decoded value: XCLIENT_README Note 1 allows
// NAME and HELO 255 characters, which is also a domain's limit (RFC 5321
// §4.5.3.1.2).
const xclientMaxValue = 255

// xclientAllowed: the TCP peer, before any PROXY header, may send XCLIENT.
func xclientAllowed(cfg *settings, peer netip.Addr) bool {
	return trusted(cfg.TrustedProxies, peer) || trusted(cfg.XclientFrom, peer)
}

// appendXclientKeyword adds the XCLIENT line to the EHLO reply that ends
// out: its last line "250 ..." becomes "250-..." and ours ends the reply
// (RFC 5321 §4.2.1).
func appendXclientKeyword(out []byte) []byte {
	body := out[:len(out)-2] // without the last CRLF
	last := bytes.LastIndex(body, []byte("\r\n")) + 2
	if last+3 < len(out) && out[last+3] == ' ' {
		out[last+3] = '-'
	}
	return codec.AppendReply(out, 250, "", xclientKeyword)
}

// xclientUpdate is what one XCLIENT command asks for, checked whole
// before any of it is applied. Values point into session.xbuf.
type xclientUpdate struct {
	addr     netip.Addr // invalid: not given or unknown
	port     int        // -1: not given or unknown
	helo     []byte
	hasHelo  bool // given and known
	login    []byte
	hasLogin bool
}

// xclient handles XCLIENT. On success the session starts over as if the
// client had just connected from the named address: the client policy
// and the per-IP limit are applied to it as to a PROXY header's client,
// and the reply is our 220 greeting, after which the client sends EHLO
// again.
func (s *session) xclient(now time.Time) {
	switch {
	case !s.xclientOK:
		s.fail(replyXclientDenied)
		return
	case s.hasMail:
		// XCLIENT_README: any time except between MAIL and the end of
		// the message or RSET.
		s.fail(replyXclientInTx)
		return
	}
	var u xclientUpdate
	defer s.dropXbuf()
	if err := s.parseXclient(&u); err != nil {
		s.fail(err)
		return
	}
	if u.addr.IsValid() || u.port >= 0 {
		client := s.remote
		if u.addr.IsValid() {
			client = netip.AddrPortFrom(u.addr, 0) // a port not given is not the relay's
		}
		if u.port >= 0 {
			client = netip.AddrPortFrom(client.Addr(), uint16(u.port))
		}
		if !s.rebind(client) {
			return
		}
		if u.addr.IsValid() {
			if reply, ok := s.admitClient(now); !ok {
				s.closeWith(reply)
				return
			}
		}
	}
	s.resetTransaction()
	s.ehlo = false
	s.sizeOffered = 0
	s.xhelo = u.hasHelo
	s.helo = s.helo[:0]
	s.heloOK = false
	if u.hasHelo {
		s.heloOK = codec.ValidHelo(u.helo)
		if s.heloOK {
			s.helo = append(s.helo, u.helo...)
		} else {
			s.helo = appendHeloComment(s.helo, u.helo)
		}
	}
	// LOGIN= is the relay's word for who authenticated with it: the
	// same as our own AUTH for what follows (smtp-auth-user, ESMTPA).
	var login []byte // none without LOGIN= or with LOGIN=[UNAVAILABLE]
	if u.hasLogin {
		login = u.login
	}
	s.setAuthUser(login)
	s.out = append(s.out, s.cfg.replies.greeting...)
}

// dropXbuf forgets the decoded values of a long XCLIENT line once
// applied, as flush drops a large out: they are not kept for the life of
// the connection.
func (s *session) dropXbuf() {
	if cap(s.xbuf) > outKeep {
		s.xbuf = nil
	}
}

// rebind moves the session's per-IP count from its current client to
// client, as readProxyHeader counts a PROXY header's client (bindIP). On
// refusal the session closes with the 421 a PROXY header gets; its old
// count is released when it closes.
func (s *session) rebind(client netip.AddrPort) bool {
	old := s.remote.Addr()
	srv := s.srv
	if !s.countedIP || srv.clientKey(client.Addr()) != srv.clientKey(old) {
		if !srv.bindIP(client.Addr()) {
			srv.stats.Refused[RefusedPerIP].Add(1)
			s.closeWith(s.cfg.replies.tooMany)
			return false
		}
		if s.countedIP {
			srv.unbindIP(old)
		}
	}
	s.countedIP = true
	if client.Addr() != old {
		s.ipText = client.Addr().String()
	}
	s.remote = client
	return true
}

// unbindIP gives back one count of ip's client in perIP (release without
// the connection count).
func (s *Server) unbindIP(ip netip.Addr) {
	key := s.clientKey(ip)
	s.perIPMu.Lock()
	if n := s.perIP[key]; n <= 1 {
		delete(s.perIP, key)
	} else {
		s.perIP[key] = n - 1
	}
	s.perIPMu.Unlock()
}

// parseXclient checks every attribute of the command into u. Decoded
// values go to s.xbuf, which the command line bounds (xtext never
// decodes longer than it is written).
func (s *session) parseXclient(u *xclientUpdate) *codec.Reply {
	*u = xclientUpdate{port: -1}
	s.xbuf = s.xbuf[:0]
	args := s.cmd.Arg
	for n := 0; ; n++ {
		attr, raw, rest, ok, err := codec.NextXclientAttr(args)
		if err != nil {
			return err.(*codec.Reply)
		}
		if !ok {
			if n == 0 {
				return codec.ErrSyntaxXclient
			}
			return nil
		}
		args = rest
		start := len(s.xbuf)
		var good bool
		if s.xbuf, good = codec.AppendXtext(s.xbuf, raw); !good {
			return codec.ErrXclientAttrValue
		}
		v := s.xbuf[start:]
		if len(v) > xclientMaxValue {
			return codec.ErrXclientAttrValue
		}
		// "[UNAVAILABLE]" and "[TEMPUNAVAIL]": the relay does not know.
		unknown := bytes.EqualFold(v, []byte("[UNAVAILABLE]")) || bytes.EqualFold(v, []byte("[TEMPUNAVAIL]"))
		switch attr {
		case codec.XclientADDR, codec.XclientDESTADDR:
			a := netip.Addr{}
			if !unknown {
				if a, good = xclientAddr(v); !good {
					return codec.ErrXclientAttrValue
				}
			}
			if attr == codec.XclientADDR {
				// Unknown keeps the address we have: the per-IP count and
				// the policy need one.
				u.addr = a
			}
		case codec.XclientPORT, codec.XclientDESTPORT:
			p := -1
			if !unknown {
				if p, good = xclientPort(v); !good {
					return codec.ErrXclientAttrValue
				}
			}
			if attr == codec.XclientPORT {
				u.port = p
			}
		case codec.XclientPROTO:
			// Only checked: the protocol in our Received: header is the
			// one the relay speaks to us next (HELO or EHLO).
			if !unknown && !bytes.EqualFold(v, []byte("SMTP")) && !bytes.EqualFold(v, []byte("ESMTP")) {
				return codec.ErrXclientAttrValue
			}
		case codec.XclientHELO:
			// As a HELO argument (hello): blanks make no name.
			if !textOK(v) || bytes.IndexByte(v, ' ') >= 0 || len(v) == 0 {
				return codec.ErrXclientAttrValue
			}
			u.helo, u.hasHelo = v, !unknown
		case codec.XclientLOGIN:
			if !textOK(v) || len(v) == 0 {
				return codec.ErrXclientAttrValue
			}
			u.login, u.hasLogin = v, !unknown
		case codec.XclientNAME:
			// We look up no names; a bad one is still an error.
			if !textOK(v) || bytes.IndexByte(v, ' ') >= 0 {
				return codec.ErrXclientAttrValue
			}
		}
	}
}

// textOK: no control character (xtext can encode CR and LF, which must
// not reach a header) and valid UTF-8.
func textOK(v []byte) bool {
	for _, c := range v {
		if c < ' ' || c == 0x7f {
			return false
		}
	}
	return utf8.Valid(v)
}

// xclientAddr parses ADDR's value: an IPv4 address, or "IPV6:" and an
// IPv6 address (XCLIENT_README), without brackets or zone.
func xclientAddr(v []byte) (netip.Addr, bool) {
	v6 := len(v) > 5 && bytes.EqualFold(v[:5], []byte("IPV6:"))
	if v6 {
		v = v[5:]
	}
	a, err := netip.ParseAddr(string(v))
	if err != nil || a.Zone() != "" || a.Is6() != v6 {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// xclientPort parses a decimal TCP port.
func xclientPort(v []byte) (int, bool) {
	if len(v) == 0 || len(v) > 5 {
		return 0, false
	}
	n := 0
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, n <= 65535
}
