// Package proxyproto parses the PROXY protocol header (HAProxy, "The PROXY
// protocol, Versions 1 & 2", 2020/03/05) that a trusted load balancer puts in
// front of a relayed connection to tell us who the client really is.
//
// Parse is a streaming parser for the first bytes of a connection: it can be
// called again each time more input arrives, it never allocates unless it
// reports an error, and it rejects garbage as soon as the bytes seen so far
// cannot begin a valid header. The spec forbids guessing (§2: "The receiver
// MUST be configured to only receive the protocol described in this
// specification and MUST not try to guess whether the protocol header is
// present or not"), so on a listener that expects the header anything else is
// an error.
//
// What is accepted, and why:
//
//   - Version 1 (§2.1): "PROXY TCP4|TCP6 src dst sport dport\r\n" or
//     "PROXY UNKNOWN...\r\n", at most MaxV1Length bytes including CRLF.
//     Exactly one space between fields, IPv4 as four decimal octets without
//     leading zeros, ports 0-65535 without leading zeros, and the line must
//     end in CRLF (a bare CR or LF is an error). IPv6 is 1-8 groups of 1-4
//     hex digits with at most one "::" that stands for at least one zero
//     group; a trailing dotted-quad IPv4 part ("::ffff:192.0.2.1") is
//     accepted because inet_ntop, which most senders use, writes mapped
//     addresses that way. The family decides the syntax: TCP4 with an IPv6
//     address is an error, and the other way round. After UNKNOWN anything
//     up to the CRLF is ignored, as the spec requires; the header is Local.
//
//   - Version 2 (§2.2): the 12-byte signature, version 2, command LOCAL or
//     PROXY. LOCAL (a health check by the proxy itself) is accepted with any
//     assigned family and protocol; its address block is skipped unread, as
//     §2.2 says it must be, and the header is Local. PROXY is accepted only
//     for TCP over IPv4 (0x11) or IPv6 (0x21): for UNSPEC, UNIX or DGRAM the
//     spec lets the receiver either reject or use the socket's addresses,
//     and we reject, because falling back to the proxy's address would put
//     every such client under the proxy's address in per-client policy
//     (allow lists, rate limits). Unassigned versions, commands, families
//     and protocols are errors (§2.2: "must be rejected as invalid").
//     The length field may be at most MaxV2Length. The TLVs after the
//     addresses are walked: each must fit inside the header (anything else
//     means the header is corrupt), a PP2_TYPE_CRC32C TLV is verified
//     (§2.2.3: a receiver that supports it MUST reject a mismatch), and all
//     other TLVs are skipped.
//
// Addresses are returned as sent: an IPv4-mapped IPv6 address in a TCP6 or
// AF_INET6 header stays an IPv6 address (netip.Addr.Unmap gives the IPv4
// form).
package proxyproto

import (
	"fmt"
	"net/netip"
)

const (
	// MaxV1Length is the longest version 1 header including CRLF (§2.1:
	// "PROXY UNKNOWN" with two full IPv6 addresses and ports).
	MaxV1Length = 107

	// MaxV2Length bounds the length field of a version 2 header (the
	// address block plus TLVs). The spec allows up to 65535, which would
	// let a proxy make us buffer 64 KiB before the first SMTP byte. The
	// largest address block is 216 bytes (AF_UNIX) and the registered TLVs
	// that real proxies send (ALPN, authority/SNI up to 255 bytes, CRC32C,
	// unique ID up to 128 bytes, SSL with version, CN and algorithm names,
	// cloud-provider IDs) stay well under 1 KiB together, so 1024 leaves
	// room to spare while keeping the whole header within 1040 bytes.
	MaxV2Length = 1024

	// MaxHeaderLength is the most input Parse may need before it decides:
	// a caller that has buffered this many bytes and still gets "need
	// more" cannot exist (Parse reports an error first).
	MaxHeaderLength = v2HeaderLen + MaxV2Length
)

// Header is a parsed PROXY protocol header.
type Header struct {
	// Version is 1 (text) or 2 (binary).
	Version int
	// Local is set for a version 2 LOCAL command or a version 1 UNKNOWN
	// line: the connection carries no client address, use the socket's.
	Local bool
	// Source is the original client, Destination the address it
	// connected to. Both are the zero AddrPort when Local is set.
	Source, Destination netip.AddrPort
}

// Error describes why the input is not a valid PROXY header.
type Error struct {
	// Version is 1 or 2 when the input started like that version's
	// header, 0 when it started like neither.
	Version int
	// Offset is the index of the first byte that cannot be part of a
	// valid header (for a too-long or too-short length, the index where
	// that length is written).
	Offset int
	// Field names the part of the header that is wrong, e.g. "source
	// address" or "length".
	Field string
	// Reason says what was expected.
	Reason string
}

func (e *Error) Error() string {
	if e.Version == 0 {
		return fmt.Sprintf("proxyproto: not a PROXY protocol header: byte %d (%s): %s", e.Offset, e.Field, e.Reason)
	}
	return fmt.Sprintf("proxyproto: invalid v%d header: byte %d (%s): %s", e.Version, e.Offset, e.Field, e.Reason)
}

// errNeedMore is the parsers' internal signal that the input ended while it
// was still a valid prefix; Parse turns it into (0, Header{}, nil).
var errNeedMore = &Error{Reason: "need more input"}

// Parse looks at the start of a connection's input (b may be a partial
// header). It returns:
//
//	n > 0, err == nil: the header is n bytes; hdr describes it.
//	n == 0, err == nil: need more input (the caller waits, and bounds the
//	  wait by time; at most MaxHeaderLength bytes are ever needed).
//	err != nil: not a valid PROXY header (the caller closes the
//	  connection); err is an *Error.
//
// Anything that is not a PROXY header is an error. "Need more" is returned
// only while b is a prefix of some valid header, so a peer that sends
// garbage is refused at the first wrong byte. The result for a given input
// does not depend on how it was split: feeding any prefix of a complete
// header gives "need more", and the complete header gives the same n and hdr
// whatever follows it. Parse does not allocate unless it returns an error.
func Parse(b []byte) (n int, hdr Header, err error) {
	if len(b) == 0 {
		return 0, Header{}, nil
	}
	switch b[0] {
	case v1Prefix[0]:
		n, hdr, err = parseV1(b)
	case v2Signature[0]:
		n, hdr, err = parseV2(b)
	default:
		return 0, Header{}, &Error{Offset: 0, Field: "signature", Reason: `expected "PROXY " (v1) or the v2 signature`}
	}
	if err == errNeedMore {
		return 0, Header{}, nil
	}
	return n, hdr, err
}
