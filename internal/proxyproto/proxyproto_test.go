package proxyproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"net/netip"
	"strings"
	"testing"
)

// v2 builds a version 2 header: ver_cmd, fam, then body (addresses and
// TLVs); the length field is len(body).
func v2(verCmd, fam byte, body ...[]byte) []byte {
	var rest []byte
	for _, p := range body {
		rest = append(rest, p...)
	}
	h := []byte(v2Signature)
	h = append(h, verCmd, fam)
	h = binary.BigEndian.AppendUint16(h, uint16(len(rest)))
	return append(h, rest...)
}

// v2Len is v2 with an explicit length field.
func v2Len(verCmd, fam byte, length uint16, body []byte) []byte {
	h := v2(verCmd, fam, body)
	binary.BigEndian.PutUint16(h[14:16], length)
	return h
}

func addrs4(src, dst string, sport, dport uint16) []byte {
	b := netip.MustParseAddr(src).AsSlice()
	b = append(b, netip.MustParseAddr(dst).AsSlice()...)
	b = binary.BigEndian.AppendUint16(b, sport)
	return binary.BigEndian.AppendUint16(b, dport)
}

func addrs6(src, dst string, sport, dport uint16) []byte {
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	b := append(s[:], d[:]...)
	b = binary.BigEndian.AppendUint16(b, sport)
	return binary.BigEndian.AppendUint16(b, dport)
}

func tlv(typ byte, val []byte) []byte {
	b := []byte{typ}
	b = binary.BigEndian.AppendUint16(b, uint16(len(val)))
	return append(b, val...)
}

// withCRC appends a CRC32C TLV to a v2 header and fills in its checksum.
func withCRC(h []byte) []byte {
	h = append(h, tlv(tlvCRC32C, make([]byte, 4))...)
	binary.BigEndian.PutUint16(h[14:16], uint16(len(h)-v2HeaderLen))
	sum := crc32.Checksum(h, crc32.MakeTable(crc32.Castagnoli))
	binary.BigEndian.PutUint32(h[len(h)-4:], sum)
	return h
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

const ffff8 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"

type validCase struct {
	name string
	in   []byte
	n    int // header length; in may go on after it
	hdr  Header
}

func tcp(v int, src, dst string) Header {
	return Header{Version: v, Source: ap(src), Destination: ap(dst)}
}

var validCases = []validCase{
	// Version 1, §2.1.
	{"v1 tcp4 spec example", []byte("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n"), 47,
		tcp(1, "192.168.0.1:56324", "192.168.0.11:443")},
	{"v1 tcp4 longest", []byte("PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"), 56,
		tcp(1, "255.255.255.255:65535", "255.255.255.255:65535")},
	{"v1 tcp4 zeros", []byte("PROXY TCP4 0.0.0.0 10.0.0.1 0 0\r\n"), 33,
		tcp(1, "0.0.0.0:0", "10.0.0.1:0")},
	{"v1 tcp4 followed by SMTP", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 25\r\nEHLO x\r\n"), 33,
		tcp(1, "1.2.3.4:1", "5.6.7.8:25")},
	{"v1 tcp6 compressed", []byte("PROXY TCP6 2001:db8::1 2001:db8::2 40000 25\r\n"), 45,
		tcp(1, "[2001:db8::1]:40000", "[2001:db8::2]:25")},
	{"v1 tcp6 longest", []byte("PROXY TCP6 " + ffff8 + " " + ffff8 + " 65535 65535\r\n"), 104,
		tcp(1, "["+ffff8+"]:65535", "["+ffff8+"]:65535")},
	{"v1 tcp6 all zeros and loopback", []byte("PROXY TCP6 :: ::1 1 2\r\n"), 23,
		tcp(1, "[::]:1", "[::1]:2")},
	{"v1 tcp6 upper case and full groups", []byte("PROXY TCP6 ABCD:EF01:2345:6789:0000:0000:0000:0001 abcd::Ef01 1 2\r\n"), 67,
		tcp(1, "[abcd:ef01:2345:6789::1]:1", "[abcd::ef01]:2")},
	{"v1 tcp6 :: at either end", []byte("PROXY TCP6 1:2:3:4:5:6:7:: ::2:3:4:5:6:7:8 1 2\r\n"), 48,
		tcp(1, "[1:2:3:4:5:6:7:0]:1", "[0:2:3:4:5:6:7:8]:2")},
	{"v1 tcp6 mapped ipv4 as inet_ntop writes it", []byte("PROXY TCP6 ::ffff:192.0.2.1 ::ffff:10.0.0.1 1025 25\r\n"), 53,
		tcp(1, "[::ffff:192.0.2.1]:1025", "[::ffff:10.0.0.1]:25")},
	{"v1 tcp6 dotted tail after six groups", []byte("PROXY TCP6 1:2:3:4:5:6:1.2.3.4 1::5:0.0.0.0 1 2\r\n"), 49,
		tcp(1, "[1:2:3:4:5:6:102:304]:1", "[1::5:0:0]:2")},
	{"v1 unknown short", []byte("PROXY UNKNOWN\r\n"), 15, Header{Version: 1, Local: true}},
	{"v1 unknown longest", []byte("PROXY UNKNOWN " + ffff8 + " " + ffff8 + " 65535 65535\r\n"), 107,
		Header{Version: 1, Local: true}},
	{"v1 unknown ignores the rest of the line", []byte("PROXY UNKNOWN whatever \x00\xff\tgoes\r\nQUIT\r\n"), 32,
		Header{Version: 1, Local: true}},

	// Version 2, §2.2.
	{"v2 tcp4", v2(0x21, famTCPv4, addrs4("192.0.2.1", "198.51.100.2", 40000, 25)), 28,
		tcp(2, "192.0.2.1:40000", "198.51.100.2:25")},
	{"v2 tcp4 followed by SMTP", append(v2(0x21, famTCPv4, addrs4("192.0.2.1", "198.51.100.2", 0, 65535)), "EHLO x\r\n"...), 28,
		tcp(2, "192.0.2.1:0", "198.51.100.2:65535")},
	{"v2 tcp6", v2(0x21, famTCPv6, addrs6("2001:db8::1", "2001:db8::25", 1, 25)), 52,
		tcp(2, "[2001:db8::1]:1", "[2001:db8::25]:25")},
	{"v2 tcp6 mapped stays ipv6", v2(0x21, famTCPv6, addrs6("::ffff:192.0.2.1", "::1", 1, 25)), 52,
		tcp(2, "[::ffff:192.0.2.1]:1", "[::1]:25")},
	{"v2 local unspec", v2(0x20, 0x00), 16, Header{Version: 2, Local: true}},
	{"v2 local ignores family and zero length", v2(0x20, famTCPv4), 16, Header{Version: 2, Local: true}},
	{"v2 local skips a unix block unread", v2(0x20, 0x31, bytes.Repeat([]byte{0xee}, 216)), 232, Header{Version: 2, Local: true}},
	{"v2 local skips garbage unread", v2(0x20, 0x00, []byte{1, 2}), 18, Header{Version: 2, Local: true}},
	{"v2 tlvs skipped", v2(0x21, famTCPv4, addrs4("192.0.2.1", "192.0.2.2", 1, 2),
		tlv(0x01, []byte("smtp")), tlv(0x04, nil), tlv(0x02, []byte("mx.example")), tlv(0xe0, []byte{9})), 28 + 7 + 3 + 13 + 4,
		tcp(2, "192.0.2.1:1", "192.0.2.2:2")},
	{"v2 crc32c verified", withCRC(v2(0x21, famTCPv6, addrs6("2001:db8::1", "2001:db8::2", 3, 4), tlv(0x05, []byte("id")))), 52 + 5 + 7,
		tcp(2, "[2001:db8::1]:3", "[2001:db8::2]:4")},
	{"v2 longest allowed", v2(0x21, famTCPv4, addrs4("192.0.2.1", "192.0.2.2", 1, 2), tlv(0x04, make([]byte, MaxV2Length-12-3))), 16 + MaxV2Length,
		tcp(2, "192.0.2.1:1", "192.0.2.2:2")},
}

func TestParseValid(t *testing.T) {
	for _, tc := range validCases {
		t.Run(tc.name, func(t *testing.T) {
			n, hdr, err := Parse(tc.in)
			if err != nil || n != tc.n || hdr != tc.hdr {
				t.Fatalf("Parse = %d, %+v, %v; want %d, %+v", n, hdr, err, tc.n, tc.hdr)
			}
		})
	}
}

// Every prefix shorter than the header needs more input, and every longer
// input gives the same answer: the result does not depend on how TCP split
// the bytes.
func TestParseValidEverySplit(t *testing.T) {
	for _, tc := range validCases {
		t.Run(tc.name, func(t *testing.T) {
			for k := 0; k <= len(tc.in); k++ {
				n, hdr, err := Parse(tc.in[:k])
				if k < tc.n {
					if n != 0 || err != nil || hdr != (Header{}) {
						t.Fatalf("prefix %d of %d: got %d, %+v, %v; want need-more", k, tc.n, n, hdr, err)
					}
					continue
				}
				if err != nil || n != tc.n || hdr != tc.hdr {
					t.Fatalf("prefix %d: got %d, %+v, %v; want %d, %+v", k, n, hdr, err, tc.n, tc.hdr)
				}
			}
		})
	}
}

type badCase struct {
	name    string
	in      []byte
	version int
	offset  int
	field   string
	reason  string // substring of Reason
	// early: the error is reported as soon as the byte at offset arrives
	// (false where the spec makes us wait, e.g. for a length or a CRC).
	early bool
}

func rep(s string, n int) string { return strings.Repeat(s, n) }

var badCases = []badCase{
	{"empty lines", []byte("\r\n\r\n\r\n"), 2, 4, "signature", "v2 signature", true},
	{"http", []byte("GET / HTTP/1.1\r\n"), 0, 0, "signature", "PROXY", true},
	{"smtp", []byte("EHLO x\r\n"), 0, 0, "signature", "PROXY", true},
	{"lower case", []byte("proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n"), 0, 0, "signature", "PROXY", true},
	{"v1 no space after PROXY", []byte("PROXYTCP4"), 1, 5, "signature", `"PROXY "`, true},
	{"v1 two spaces before family", []byte("PROXY  TCP4 1.2.3.4"), 1, 6, "family", "TCP4", true},
	{"v1 unknown family", []byte("PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n"), 1, 9, "family", "TCP4", true},
	{"v1 udp4", []byte("PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n"), 1, 7, "family", "TCP4", true},
	{"v1 family without space", []byte("PROXY TCP4\r\n"), 1, 10, "family", "TCP4", true},
	{"v1 unknown glued", []byte("PROXY UNKNOWNX\r\n"), 1, 13, "family", "UNKNOWN", true},
	{"v1 unknown bare LF", []byte("PROXY UNKNOWN\n"), 1, 13, "family", "CRLF", true},
	{"v1 unknown CR without LF", []byte("PROXY UNKNOWN\r\r\n"), 1, 14, "line end", "LF", true},
	{"v1 unknown tail bare LF", []byte("PROXY UNKNOWN 1.2.3.4\n"), 1, 21, "line end", "bare LF", true},
	{"v1 unknown too long", []byte("PROXY UNKNOWN " + rep("a", 92) + "\r\n"), 1, 105, "line", "107", true},
	{"v1 ipv4 leading zero", []byte("PROXY TCP4 192.168.0.01 1.2.3.4 1 2\r\n"), 1, 22, "source address", "leading zero", true},
	{"v1 ipv4 octet 256", []byte("PROXY TCP4 256.1.1.1 1.2.3.4 1 2\r\n"), 1, 13, "source address", "above 255", true},
	{"v1 ipv4 four-digit octet", []byte("PROXY TCP4 1.2.3.1000 1.2.3.4 1 2\r\n"), 1, 20, "source address", "above 255", true},
	{"v1 ipv4 three octets", []byte("PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n"), 1, 16, "source address", "'.'", true},
	{"v1 ipv4 five octets", []byte("PROXY TCP4 1.2.3.4.5 1.2.3.4 1 2\r\n"), 1, 18, "source address", "' '", true},
	{"v1 ipv4 empty octet", []byte("PROXY TCP4 1..3.4 1.2.3.4 1 2\r\n"), 1, 13, "source address", "digit", true},
	{"v1 ipv4 hex", []byte("PROXY TCP4 0x1.2.3.4 1.2.3.4 1 2\r\n"), 1, 12, "source address", "'.'", true},
	{"v1 ipv6 in tcp4", []byte("PROXY TCP4 ::1 ::1 1 2\r\n"), 1, 11, "source address", "digit", true},
	{"v1 ipv4 in tcp6", []byte("PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n"), 1, 12, "source address", "last 32 bits", true},
	{"v1 two spaces between addresses", []byte("PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n"), 1, 19, "destination address", "digit", true},
	{"v1 dst ipv4 bad", []byte("PROXY TCP4 1.2.3.4 1.2.3.-4 1 2\r\n"), 1, 25, "destination address", "digit", true},
	{"v1 port leading zero", []byte("PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n"), 1, 28, "source port", "leading zero", true},
	{"v1 port zero zero", []byte("PROXY TCP4 1.2.3.4 1.2.3.4 1 00\r\n"), 1, 30, "destination port", "leading zero", true},
	{"v1 port 65536", []byte("PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n"), 1, 31, "source port", "above 65535", true},
	{"v1 port 100000", []byte("PROXY TCP4 1.2.3.4 1.2.3.4 1 100000\r\n"), 1, 34, "destination port", "above 65535", true},
	{"v1 port missing", []byte("PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n"), 1, 28, "source port", "' '", true},
	{"v1 port negative", []byte("PROXY TCP4 1.2.3.4 1.2.3.4 -1 2\r\n"), 1, 27, "source port", "digit", true},
	{"v1 bare LF", []byte("PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n"), 1, 30, "destination port", "CRLF", true},
	{"v1 CR without LF", []byte("PROXY TCP4 1.2.3.4 1.2.3.4 1 2\rX"), 1, 31, "line end", "LF", true},
	{"v1 trailing space", []byte("PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n"), 1, 30, "destination port", "CRLF", true},
	{"v1 ipv6 triple colon", []byte("PROXY TCP6 :::1 ::1 1 2\r\n"), 1, 13, "source address", ":::", true},
	{"v1 ipv6 two double colons", []byte("PROXY TCP6 1::2::3 ::1 1 2\r\n"), 1, 16, "source address", `more than one "::"`, true},
	{"v1 ipv6 five digits", []byte("PROXY TCP6 12345::1 ::1 1 2\r\n"), 1, 15, "source address", "4 hex digits", true},
	{"v1 ipv6 nine groups", []byte("PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n"), 1, 26, "source address", "too many", true},
	{"v1 ipv6 :: for no group", []byte("PROXY TCP6 1:2:3:4:5:6:7::8 ::1 1 2\r\n"), 1, 26, "source address", "too many", true},
	{"v1 ipv6 eight groups then ::", []byte("PROXY TCP6 1:2:3:4:5:6:7:8:: ::1 1 2\r\n"), 1, 26, "source address", "too many", true},
	{"v1 ipv6 seven groups", []byte("PROXY TCP6 1:2:3:4:5:6:7 ::1 1 2\r\n"), 1, 24, "source address", "too few", true},
	{"v1 ipv6 single leading colon", []byte("PROXY TCP6 :1::2 ::1 1 2\r\n"), 1, 12, "source address", "single ':'", true},
	{"v1 ipv6 single trailing colon", []byte("PROXY TCP6 1:2:3:4:5:6:7: ::1 1 2\r\n"), 1, 25, "source address", "hex digit", true},
	{"v1 ipv6 empty", []byte("PROXY TCP6  ::1 1 2\r\n"), 1, 11, "source address", "hex digit", true},
	{"v1 ipv6 zone", []byte("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"), 1, 18, "source address", "unexpected", true},
	{"v1 ipv6 tail too early", []byte("PROXY TCP6 1:2:3:4:5:6:7:1.2.3.4 ::1 1 2\r\n"), 1, 26, "source address", "last 32 bits", true},
	{"v1 ipv6 tail with :: and seven groups", []byte("PROXY TCP6 1:2:3:4:5::6:1.2.3.4 ::1 1 2\r\n"), 1, 25, "source address", "last 32 bits", true},
	{"v1 ipv6 tail hex octet", []byte("PROXY TCP6 ::ffff:1a.2.3.4 ::1 1 2\r\n"), 1, 20, "source address", "decimal", true},
	{"v1 ipv6 tail leading zero", []byte("PROXY TCP6 ::ffff:01.2.3.4 ::1 1 2\r\n"), 1, 20, "source address", "decimal", true},
	{"v1 ipv6 tail 256", []byte("PROXY TCP6 ::ffff:256.2.3.4 ::1 1 2\r\n"), 1, 21, "source address", "decimal", true},
	{"v1 ipv6 tail leading zero later", []byte("PROXY TCP6 ::ffff:1.2.3.04 ::1 1 2\r\n"), 1, 25, "source address", "leading zero", true},
	{"v1 ipv6 tail five octets", []byte("PROXY TCP6 ::ffff:1.2.3.4.5 ::1 1 2\r\n"), 1, 25, "source address", "' '", true},
	{"v1 ipv6 group after tail", []byte("PROXY TCP6 ::1.2.3.4:5 ::1 1 2\r\n"), 1, 20, "source address", "' '", true},
	{"v1 no CRLF in 107 bytes", []byte("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 65535 65535\r\n"),
		1, 107, "line", "107", false},

	{"v2 bad signature", []byte("\r\n\r\n\x00\r\nQUIT\r"), 2, 11, "signature", "signature", true},
	{"v2 signature with NUL replaced", []byte("\r\n\r\n \r\nQUIT\n"), 2, 4, "signature", "signature", true},
	{"v2 version 1", v2(0x11, famTCPv4, addrs4("1.2.3.4", "1.2.3.4", 1, 2)), 2, 12, "version", "2", true},
	{"v2 version 3", v2(0x31, famTCPv4, addrs4("1.2.3.4", "1.2.3.4", 1, 2)), 2, 12, "version", "2", true},
	{"v2 command 2", v2(0x22, famTCPv4, addrs4("1.2.3.4", "1.2.3.4", 1, 2)), 2, 12, "command", "LOCAL", true},
	{"v2 command 15", v2(0x2f, 0x00), 2, 12, "command", "LOCAL", true},
	{"v2 family 4", v2(0x21, 0x41, make([]byte, 12)), 2, 13, "family", "address family", true},
	{"v2 protocol 3", v2(0x21, 0x13, make([]byte, 12)), 2, 13, "family", "transport protocol", true},
	{"v2 local with unassigned family", v2(0x20, 0x50), 2, 13, "family", "address family", true},
	{"v2 local with unassigned protocol", v2(0x20, 0x03), 2, 13, "family", "transport protocol", true},
	{"v2 proxy unspec", v2(0x21, 0x00), 2, 13, "family", "TCP over IPv4 or IPv6", true},
	{"v2 proxy udp4", v2(0x21, 0x12, addrs4("1.2.3.4", "1.2.3.4", 1, 2)), 2, 13, "family", "TCP over IPv4 or IPv6", true},
	{"v2 proxy udp6", v2(0x21, 0x22, addrs6("::1", "::1", 1, 2)), 2, 13, "family", "TCP over IPv4 or IPv6", true},
	{"v2 proxy unix stream", v2(0x21, 0x31, make([]byte, 216)), 2, 13, "family", "TCP over IPv4 or IPv6", true},
	{"v2 proxy inet unspec protocol", v2(0x21, 0x10, make([]byte, 12)), 2, 13, "family", "TCP over IPv4 or IPv6", true},
	{"v2 length over the bound", v2Len(0x21, famTCPv4, MaxV2Length+1, nil), 2, 14, "length", "1024", false},
	{"v2 length 65535", v2Len(0x20, 0x00, 65535, nil), 2, 14, "length", "1024", false},
	{"v2 tcp4 length short", v2(0x21, famTCPv4, make([]byte, 11)), 2, 14, "length", "shorter", false},
	{"v2 tcp6 length short", v2(0x21, famTCPv6, make([]byte, 35)), 2, 14, "length", "shorter", false},
	{"v2 tcp6 with tcp4 length", v2(0x21, famTCPv6, addrs4("1.2.3.4", "1.2.3.4", 1, 2)), 2, 14, "length", "shorter", false},
	{"v2 truncated tlv header", v2(0x21, famTCPv4, addrs4("1.2.3.4", "1.2.3.4", 1, 2), []byte{0x04, 0x00}), 2, 28, "TLV", "truncated", false},
	{"v2 tlv past the end", v2(0x21, famTCPv4, addrs4("1.2.3.4", "1.2.3.4", 1, 2), tlv(0x04, nil), []byte{0x01, 0x00, 0x05, 'a'}), 2, 32, "TLV", "past", false},
	{"v2 crc mismatch", func() []byte {
		h := withCRC(v2(0x21, famTCPv4, addrs4("1.2.3.4", "1.2.3.4", 1, 2)))
		h[20] ^= 1 // an address bit flipped after the checksum was made
		return h
	}(), 2, 31, "TLV", "mismatch", false},
	{"v2 crc wrong size", v2(0x21, famTCPv4, addrs4("1.2.3.4", "1.2.3.4", 1, 2), tlv(tlvCRC32C, []byte{1, 2, 3})), 2, 29, "TLV", "4 bytes", false},
}

// firstError feeds in byte by byte and returns the length of the shortest
// prefix that is refused, checking that all shorter ones need more.
func firstError(t *testing.T, in []byte) (int, *Error) {
	t.Helper()
	for k := 0; k <= len(in); k++ {
		n, hdr, err := Parse(in[:k])
		if err == nil {
			if n != 0 || hdr != (Header{}) {
				t.Fatalf("prefix %d: accepted %d bytes: %+v", k, n, hdr)
			}
			continue
		}
		if n != 0 || hdr != (Header{}) {
			t.Fatalf("prefix %d: error %v with n=%d hdr=%+v", k, err, n, hdr)
		}
		var pe *Error
		if !errors.As(err, &pe) {
			t.Fatalf("prefix %d: error %T is not *Error", k, err)
		}
		return k, pe
	}
	t.Fatalf("no prefix of %q is refused", in)
	return 0, nil
}

func TestParseMalformed(t *testing.T) {
	for _, tc := range badCases {
		t.Run(tc.name, func(t *testing.T) {
			k, pe := firstError(t, tc.in)
			if pe.Version != tc.version || pe.Offset != tc.offset || pe.Field != tc.field || !strings.Contains(pe.Reason, tc.reason) {
				t.Fatalf("error %+v (after %d bytes); want version %d offset %d field %q reason ~%q",
					*pe, k, tc.version, tc.offset, tc.field, tc.reason)
			}
			if tc.early && k != tc.offset+1 {
				t.Fatalf("refused after %d bytes; the bad byte is at %d", k, tc.offset)
			}
			// Longer input, including the whole and more, gives the same error.
			more := append(append([]byte(nil), tc.in...), bytes.Repeat([]byte("x"), 2*MaxHeaderLength)...)
			for j := k; j <= len(more); j += 1 + j/8 {
				_, _, err := Parse(more[:j])
				var pe2 *Error
				if !errors.As(err, &pe2) || *pe2 != *pe {
					t.Fatalf("prefix %d: got %v; want %v", j, err, pe)
				}
			}
			if !strings.Contains(pe.Error(), pe.Field) {
				t.Fatalf("message %q does not name the field", pe.Error())
			}
		})
	}
}

// Every byte value at every position of a valid header either keeps it
// valid (same length), or is refused no later than the bytes the spec
// requires us to see.
func TestParseSingleByteCorruptionNeverPanics(t *testing.T) {
	for _, tc := range validCases {
		in := append([]byte(nil), tc.in[:tc.n]...)
		for i := range in {
			orig := in[i]
			for c := 0; c < 256; c++ {
				in[i] = byte(c)
				n, _, err := Parse(in)
				if n < 0 || n > len(in) || (err != nil && n != 0) {
					t.Fatalf("%s: byte %d = %#x: n=%d err=%v", tc.name, i, c, n, err)
				}
			}
			in[i] = orig
		}
	}
}

func TestErrorMessage(t *testing.T) {
	_, _, err := Parse([]byte("PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n"))
	want := "proxyproto: invalid v1 header: byte 31 (source port): port above 65535"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v; want %s", err, want)
	}
	_, _, err = Parse([]byte("EHLO"))
	want = `proxyproto: not a PROXY protocol header: byte 0 (signature): expected "PROXY " (v1) or the v2 signature`
	if err == nil || err.Error() != want {
		t.Fatalf("got %v; want %s", err, want)
	}
}

func TestParseEmptyNeedsMore(t *testing.T) {
	if n, hdr, err := Parse(nil); n != 0 || err != nil || hdr != (Header{}) {
		t.Fatalf("Parse(nil) = %d, %+v, %v", n, hdr, err)
	}
}

func TestParseAllocs(t *testing.T) {
	for _, tc := range validCases {
		in := tc.in
		partial := tc.in[:tc.n-1]
		if a := testing.AllocsPerRun(100, func() { _, _, _ = Parse(in) }); a != 0 {
			t.Errorf("%s: %v allocs per complete Parse", tc.name, a)
		}
		if a := testing.AllocsPerRun(100, func() { _, _, _ = Parse(partial) }); a != 0 {
			t.Errorf("%s: %v allocs per need-more Parse", tc.name, a)
		}
	}
}
