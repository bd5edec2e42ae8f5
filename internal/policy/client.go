package policy

import "net/netip"

// DefaultIPv6Prefix is the IPv6 prefix length that names one client when
// Config.IPv6Prefix is 0: the /64 of a single LAN (RFC 4291 §2.5.1), the
// least a site is given (RFC 6177).
const DefaultIPv6Prefix = 64

// MinIPv6Prefix is the shortest IPv6 prefix accepted as one client: /32 is
// the usual size of a whole provider's allocation, and anything shorter
// would put unrelated networks in one bucket.
const MinIPv6Prefix = 32

// ClientKey is the address that names ip's client for per-client limits:
// an IPv4 address (an IPv4-mapped IPv6 address counts as the IPv4 address
// it maps) as itself, an IPv6 address as the first address of its
// v6bits-long prefix, without zone. One host of an IPv6 network can take
// any address of its /64 for each connection; counting addresses would
// multiply every limit by 2^64. v6bits outside 0..128 keys each IPv6
// address by itself; the zero Addr stays the zero Addr. It does not
// allocate.
func ClientKey(ip netip.Addr, v6bits int) netip.Addr {
	ip = ip.Unmap().WithZone("")
	if !ip.Is6() {
		return ip
	}
	p, err := ip.Prefix(v6bits)
	if err != nil {
		return ip
	}
	return p.Addr()
}
