// Package policy holds the per-client controls of an SMTP listener: which
// client addresses may connect, how fast one address may open connections
// and send messages, and which recipient domains we accept mail for. It
// keeps its state in memory, bounded, with no service on the side.
//
// A *Policy is immutable configuration plus limiter state, and is safe for
// concurrent use by any number of event loops: the limiters are sharded maps
// whose mutexes are held for a map lookup and a few arithmetic operations,
// never across I/O. No method blocks, starts a goroutine or allocates on the
// per-message and per-recipient paths (TakeMessage and TakeConnection for an
// address already tracked, RecipientAllowed, ClientAllowed).
//
// Reloading: build a new Policy with New and swap it in (the engine keeps an
// atomic.Pointer[Policy]). New does not touch the old Policy and costs
// little (sorting the CIDR lists and the domain set; limiter memory grows
// only as clients arrive). Limiter state is not carried over: after a reload
// every client starts with full buckets. A reload is an operator's act, not
// something a client can trigger, so this forgives at most one burst per
// client per reload.
//
// A nil *Policy allows everything, so "no policy configured" needs no
// special case in the caller.
package policy

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"time"
)

// DefaultMaxTracked is the number of client addresses whose limiter state
// is kept when Config.MaxTracked is 0.
const DefaultMaxTracked = 100000

// Config describes a Policy. The zero Config allows everything.
type Config struct {
	// Allow and Deny are client address prefixes. Deny wins over Allow;
	// an empty Allow means every client that is not denied. An IPv4
	// client matches IPv4 prefixes whether it connected over IPv4 or as
	// an IPv4-mapped IPv6 address; an IPv4-mapped prefix
	// (::ffff:192.0.2.0/120) is read as the IPv4 prefix it maps
	// (192.0.2.0/24). Other IPv6 prefixes match only IPv6 clients, so
	// ::/0 means "every IPv6 client" and does not cover IPv4. A prefix
	// with host bits set (10.0.0.1/8) is an error: it is more often a
	// typo than a wish.
	Allow, Deny []netip.Prefix

	// ConnRate is how many new connections per second one client address
	// may open, sustained, and ConnBurst how many it may open at once
	// (a token bucket). 0 means unlimited. ConnBurst 0 means
	// max(1, ceil(ConnRate)).
	ConnRate  float64
	ConnBurst int

	// MsgRate and MsgBurst do the same for messages (each accepted
	// MAIL transaction, as the caller decides).
	MsgRate  float64
	MsgBurst int

	// RecipientDomains are the domains we accept mail for, matched
	// against the part of a recipient after the last '@'. Empty means
	// any domain. Syntax:
	//
	//	example.com   exactly example.com
	//	.example.com  any subdomain of example.com (a.example.com,
	//	              b.a.example.com), not example.com itself; list
	//	              both to accept both
	//
	// Matching ignores ASCII case and compares everything else as bytes:
	// a UTF-8 domain (bücher.example) matches only the same UTF-8 bytes,
	// not its A-label form (xn--bcher-kva.example) nor a different
	// Unicode case; list each form you accept. Address literals
	// ([192.0.2.1]) never match.
	RecipientDomains []string

	// IPv6Prefix is how many leading bits of an IPv6 address name one
	// client for ConnRate and MsgRate (MinIPv6Prefix to 128; 0 means
	// DefaultIPv6Prefix): all the addresses of one prefix share
	// their buckets. IPv4 clients are keyed by the whole address. See ClientKey.
	// Allow and Deny always match the whole address.
	IPv6Prefix int

	// MaxTracked bounds the number of client addresses that have limiter
	// state (default DefaultMaxTracked). When it is reached, the address
	// seen least recently is forgotten; if it comes back it starts again
	// with full buckets. Each tracked address costs about 110 bytes
	// (11 MB at the default).
	MaxTracked int
}

// Policy applies a Config. Build it with New.
type Policy struct {
	allow, deny  prefixSet
	allowAll     bool // Allow is empty
	conn, msg    bucketParams
	domains      domainSet
	limiter      *limiter // nil when neither rate is limited
	epoch        time.Time
	acceptAnyDom bool
	v6bits       int // Config.IPv6Prefix
}

// New checks cfg and builds a Policy. Errors name the offending field.
func New(cfg Config) (*Policy, error) {
	p := &Policy{epoch: time.Now()}
	var errs []error
	var err error
	if p.allow, err = newPrefixSet("Allow", cfg.Allow); err != nil {
		errs = append(errs, err)
	}
	p.allowAll = len(cfg.Allow) == 0
	if p.deny, err = newPrefixSet("Deny", cfg.Deny); err != nil {
		errs = append(errs, err)
	}
	if p.conn, err = newBucketParams("ConnRate", "ConnBurst", cfg.ConnRate, cfg.ConnBurst); err != nil {
		errs = append(errs, err)
	}
	if p.msg, err = newBucketParams("MsgRate", "MsgBurst", cfg.MsgRate, cfg.MsgBurst); err != nil {
		errs = append(errs, err)
	}
	if p.domains, err = newDomainSet(cfg.RecipientDomains); err != nil {
		errs = append(errs, err)
	}
	p.acceptAnyDom = len(cfg.RecipientDomains) == 0
	switch p.v6bits = cfg.IPv6Prefix; {
	case p.v6bits == 0:
		p.v6bits = DefaultIPv6Prefix
	case p.v6bits < MinIPv6Prefix || p.v6bits > 128:
		errs = append(errs, fmt.Errorf("policy: IPv6Prefix: /%d is not between /%d and /128", p.v6bits, MinIPv6Prefix))
	}
	maxTracked := cfg.MaxTracked
	switch {
	case maxTracked < 0:
		errs = append(errs, fmt.Errorf("policy: MaxTracked: %d is negative", maxTracked))
	case maxTracked == 0:
		maxTracked = DefaultMaxTracked
	case maxTracked > math.MaxInt32:
		errs = append(errs, fmt.Errorf("policy: MaxTracked: %d is above %d", maxTracked, math.MaxInt32))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if p.conn.limited() || p.msg.limited() {
		p.limiter = newLimiter(maxTracked, rand.Uint64())
	}
	return p, nil
}

// ClientAllowed reports whether a client at ip may connect: it is not in
// Deny, and Allow is empty or contains it. An IPv4-mapped IPv6 address is
// treated as the IPv4 address; a zone is ignored. The zero Addr is refused.
func (p *Policy) ClientAllowed(ip netip.Addr) bool {
	if p == nil {
		return true
	}
	if !ip.IsValid() {
		return false
	}
	k := keyOf(ip)
	if p.deny.contains(k) {
		return false
	}
	return p.allowAll || p.allow.contains(k)
}

// TakeConnection takes one token from the connection bucket of ip's client
// (ClientKey: an IPv6 address shares it with its whole IPv6Prefix) and
// reports whether there was one. Call it when a connection is accepted (after
// ClientAllowed, so that refused clients do not take up limiter state);
// now is the current time (tests inject it).
func (p *Policy) TakeConnection(ip netip.Addr, now time.Time) bool {
	if p == nil || !p.conn.limited() {
		return true
	}
	return p.limiter.take(keyOf(ClientKey(ip, p.v6bits)), bucketConn, &p.conn, int64(now.Sub(p.epoch)))
}

// TakeMessage takes one token from the message bucket of ip's client
// (ClientKey, as for TakeConnection) and reports whether there was one.
func (p *Policy) TakeMessage(ip netip.Addr, now time.Time) bool {
	if p == nil || !p.msg.limited() {
		return true
	}
	return p.limiter.take(keyOf(ClientKey(ip, p.v6bits)), bucketMsg, &p.msg, int64(now.Sub(p.epoch)))
}

// RecipientAllowed reports whether we accept mail for the mailbox addr
// (a forward-path without angle brackets, as "local@domain"), by its
// domain: the bytes after the last '@', compared per RecipientDomains.
// "Postmaster" without a domain, in any case, is always accepted
// (RFC 5321 §4.5.1 requires it). It does not allocate.
func (p *Policy) RecipientAllowed(addr []byte) bool {
	if p == nil || p.acceptAnyDom {
		return true
	}
	return p.domains.allowed(addr)
}

// AcceptsAnyDomain reports whether RecipientDomains was empty, i.e.
// RecipientAllowed is always true.
func (p *Policy) AcceptsAnyDomain() bool {
	return p == nil || p.acceptAnyDom
}

// Tracked is the number of client addresses that currently have limiter
// state; it never exceeds MaxTracked.
func (p *Policy) Tracked() int {
	if p == nil || p.limiter == nil {
		return 0
	}
	return p.limiter.len()
}
