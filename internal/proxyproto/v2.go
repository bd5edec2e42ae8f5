package proxyproto

import (
	"encoding/binary"
	"hash/crc32"
	"net/netip"
)

// Version 2: binary (§2.2).

// v2Signature starts every version 2 header (§2.2).
const v2Signature = "\r\n\r\n\x00\r\nQUIT\n"

const (
	v2HeaderLen = 16 // signature, ver_cmd, fam, len

	cmdLocal = 0x0
	cmdProxy = 0x1

	// fam byte: address family in the high nibble, protocol in the low.
	famTCPv4 = 0x11
	famTCPv6 = 0x21

	tlvCRC32C = 0x03 // PP2_TYPE_CRC32C, §2.2.3
)

// v2AddrLen is the address block size of each address family (§2.2):
// AF_UNSPEC, AF_INET, AF_INET6, AF_UNIX.
var v2AddrLen = [4]int{0, 12, 36, 216}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// zeroCRC stands in for the CRC32C value while the checksum is computed. It
// is a package variable because crc32.Update may let its argument escape,
// and a local array would then be allocated on every call.
var zeroCRC [4]byte

func v2Error(off int, field, reason string) error {
	return &Error{Version: 2, Offset: off, Field: field, Reason: reason}
}

func parseV2(b []byte) (int, Header, error) {
	if _, err := expect(b, 0, v2Signature, 2, "signature", "expected the v2 signature"); err != nil {
		return 0, Header{}, err
	}
	// Each fixed field is checked as soon as it arrives.
	if len(b) < 13 {
		return 0, Header{}, errNeedMore
	}
	if b[12]>>4 != 2 {
		return 0, Header{}, v2Error(12, "version", "version must be 2")
	}
	cmd := b[12] & 0x0f
	if cmd != cmdLocal && cmd != cmdProxy {
		return 0, Header{}, v2Error(12, "command", "command must be LOCAL (0) or PROXY (1)")
	}
	if len(b) < 14 {
		return 0, Header{}, errNeedMore
	}
	fam := b[13]
	if fam>>4 > 3 {
		return 0, Header{}, v2Error(13, "family", "unassigned address family")
	}
	if fam&0x0f > 2 {
		return 0, Header{}, v2Error(13, "family", "unassigned transport protocol")
	}
	if cmd == cmdProxy && fam != famTCPv4 && fam != famTCPv6 {
		return 0, Header{}, v2Error(13, "family", "PROXY command is only accepted for TCP over IPv4 or IPv6")
	}
	if len(b) < v2HeaderLen {
		return 0, Header{}, errNeedMore
	}
	length := int(binary.BigEndian.Uint16(b[14:16]))
	if length > MaxV2Length {
		return 0, Header{}, v2Error(14, "length", "longer than 1024 bytes")
	}
	addrLen := v2AddrLen[fam>>4]
	if cmd == cmdProxy && length < addrLen {
		return 0, Header{}, v2Error(14, "length", "shorter than the address block")
	}
	total := v2HeaderLen + length
	if len(b) < total {
		return 0, Header{}, errNeedMore
	}
	if cmd == cmdLocal {
		// §2.2: the receiver "must use the real connection endpoints
		// and discard the protocol block including the family".
		return total, Header{Version: 2, Local: true}, nil
	}

	a := b[v2HeaderLen:total]
	var hdr Header
	hdr.Version = 2
	if fam == famTCPv4 {
		src := netip.AddrFrom4([4]byte(a[0:4]))
		dst := netip.AddrFrom4([4]byte(a[4:8]))
		hdr.Source = netip.AddrPortFrom(src, binary.BigEndian.Uint16(a[8:10]))
		hdr.Destination = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(a[10:12]))
	} else {
		src := netip.AddrFrom16([16]byte(a[0:16]))
		dst := netip.AddrFrom16([16]byte(a[16:32]))
		hdr.Source = netip.AddrPortFrom(src, binary.BigEndian.Uint16(a[32:34]))
		hdr.Destination = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(a[34:36]))
	}
	if err := checkTLVs(b[:total], v2HeaderLen+addrLen); err != nil {
		return 0, Header{}, err
	}
	return total, hdr, nil
}

// checkTLVs walks the type-length-value records in h[off:] (§2.2): each
// must fit in the header, and a CRC32C record must match the checksum of
// the whole header computed with its own value as zeros (§2.2.3). Other
// records are skipped: we have no use for them.
func checkTLVs(h []byte, off int) error {
	for off < len(h) {
		if len(h)-off < 3 {
			return v2Error(off, "TLV", "truncated TLV header")
		}
		typ := h[off]
		n := int(binary.BigEndian.Uint16(h[off+1 : off+3]))
		val := off + 3
		if n > len(h)-val {
			return v2Error(off+1, "TLV", "TLV value runs past the header length")
		}
		if typ == tlvCRC32C {
			if n != 4 {
				return v2Error(off+1, "TLV", "CRC32C value must be 4 bytes")
			}
			sum := crc32.Update(0, castagnoli, h[:val])
			sum = crc32.Update(sum, castagnoli, zeroCRC[:])
			sum = crc32.Update(sum, castagnoli, h[val+4:])
			if sum != binary.BigEndian.Uint32(h[val:val+4]) {
				return v2Error(val, "TLV", "CRC32C checksum mismatch")
			}
		}
		off = val + n
	}
	return nil
}
