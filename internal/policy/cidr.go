package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// u128 is an IPv6 address (IPv4 in its mapped form, ::ffff:a.b.c.d) as a
// number, so that prefixes become ranges and lookups a binary search.
type u128 struct{ hi, lo uint64 }

func (a u128) cmp(b u128) int {
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	return cmp.Compare(a.lo, b.lo)
}

func (a u128) isMapped() bool { return a.hi == 0 && a.lo>>32 == 0xffff }

func (a u128) plusOne() (u128, bool) {
	lo := a.lo + 1
	hi := a.hi
	if lo == 0 {
		hi++
	}
	return u128{hi, lo}, hi == 0 && lo == 0 // overflow past the last address
}

// keyOf maps ip to its number; As16 already writes IPv4 in mapped form, so
// an IPv4 client and the same client as ::ffff:a.b.c.d get one key, and a
// zone does not count.
func keyOf(ip netip.Addr) u128 {
	b := ip.As16()
	return u128{
		hi: uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 | uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7]),
		lo: uint64(b[8])<<56 | uint64(b[9])<<48 | uint64(b[10])<<40 | uint64(b[11])<<32 | uint64(b[12])<<24 | uint64(b[13])<<16 | uint64(b[14])<<8 | uint64(b[15]),
	}
}

// prefixRange is the first and last address of a prefix given in mapped
// form when it is IPv4; bits counts in the 128-bit space.
func prefixRange(first u128, bits int) (lo, hi u128) {
	lo = first
	hi = first
	host := 128 - bits
	switch {
	case host >= 128:
		hi = u128{^uint64(0), ^uint64(0)}
	case host >= 64:
		hi.lo = ^uint64(0)
		hi.hi |= (uint64(1) << (host - 64)) - 1
	case host > 0:
		hi.lo |= (uint64(1) << host) - 1
	}
	return lo, hi
}

// rangeSet is a set of addresses as sorted, disjoint, non-adjacent closed
// ranges.
type rangeSet struct{ lo, hi []u128 }

func (s *rangeSet) contains(x u128) bool {
	// The last range starting at or before x is the only one that can
	// hold it.
	i, j := 0, len(s.lo)
	for i < j {
		h := int(uint(i+j) >> 1)
		if s.lo[h].cmp(x) <= 0 {
			i = h + 1
		} else {
			j = h
		}
	}
	return i > 0 && x.cmp(s.hi[i-1]) <= 0
}

func newRangeSet(lo, hi []u128) rangeSet {
	idx := make([]int, len(lo))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return lo[a].cmp(lo[b]) })
	var s rangeSet
	for _, i := range idx {
		n := len(s.lo)
		if n > 0 {
			next, overflow := s.hi[n-1].plusOne()
			if overflow || lo[i].cmp(next) <= 0 { // overlaps or touches the last range
				if hi[i].cmp(s.hi[n-1]) > 0 {
					s.hi[n-1] = hi[i]
				}
				continue
			}
		}
		s.lo = append(s.lo, lo[i])
		s.hi = append(s.hi, hi[i])
	}
	return s
}

// prefixSet holds IPv4 and IPv6 prefixes apart: an IPv4 client (mapped
// key) is looked up among the IPv4 ones only, so ::/0 does not match it.
type prefixSet struct{ v4, v6 rangeSet }

func (s *prefixSet) contains(k u128) bool {
	if k.isMapped() {
		return s.v4.contains(k)
	}
	return s.v6.contains(k)
}

func newPrefixSet(field string, prefixes []netip.Prefix) (prefixSet, error) {
	var lo4, hi4, lo6, hi6 []u128
	for i, p := range prefixes {
		if !p.IsValid() {
			return prefixSet{}, fmt.Errorf("policy: %s[%d]: invalid prefix %q", field, i, p)
		}
		if m := p.Masked(); m != p {
			return prefixSet{}, fmt.Errorf("policy: %s[%d]: %s has host bits set (the network is %s)", field, i, p, m)
		}
		addr, bits := p.Addr(), p.Bits()
		switch {
		case addr.Is4():
			bits += 96
		case addr.Is4In6() && bits >= 96:
			// ::ffff:192.0.2.0/120 is 192.0.2.0/24.
		default:
			lo, hi := prefixRange(keyOf(addr), bits)
			lo6, hi6 = append(lo6, lo), append(hi6, hi)
			continue
		}
		lo, hi := prefixRange(keyOf(addr), bits)
		lo4, hi4 = append(lo4, lo), append(hi4, hi)
	}
	return prefixSet{v4: newRangeSet(lo4, hi4), v6: newRangeSet(lo6, hi6)}, nil
}
