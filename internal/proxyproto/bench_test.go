package proxyproto

import "testing"

func benchParse(b *testing.B, in []byte) {
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if n, _, err := Parse(in); n == 0 || err != nil {
			b.Fatal(n, err)
		}
	}
}

func BenchmarkParseV1TCP4(b *testing.B) {
	benchParse(b, []byte("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"))
}

func BenchmarkParseV1TCP6(b *testing.B) {
	benchParse(b, []byte("PROXY TCP6 2001:db8:1234:5678::1 2001:db8::25 56324 25\r\n"))
}

func BenchmarkParseV2TCP4(b *testing.B) {
	benchParse(b, v2(0x21, famTCPv4, addrs4("192.0.2.1", "198.51.100.2", 40000, 25)))
}

func BenchmarkParseV2TCP6WithTLVsAndCRC(b *testing.B) {
	benchParse(b, withCRC(v2(0x21, famTCPv6, addrs6("2001:db8::1", "2001:db8::2", 3, 4),
		tlv(0x01, []byte("smtp")), tlv(0x05, make([]byte, 32)))))
}

// Garbage is refused at its first byte.
func BenchmarkParseGarbage(b *testing.B) {
	in := []byte("EHLO client.example\r\n")
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Parse(in); err == nil {
			b.Fatal("accepted")
		}
	}
}
