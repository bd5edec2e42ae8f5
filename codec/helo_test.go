package codec

import (
	"strings"
	"testing"
)

func TestValidHelo(t *testing.T) {
	label63 := strings.Repeat("a", 63)
	dom255 := label63 + "." + label63 + "." + label63 + "." + strings.Repeat("b", 63) // 255 octets
	for _, tc := range []struct {
		arg  string
		want bool
	}{
		{"mail.example.com", true},
		{"localhost", true},
		{"a", true},
		{"x1.example.c0m", true},
		{"123.example", true},
		{"[192.0.2.1]", true},
		{"[IPv6:2001:db8::1]", true},
		{"[x-tag:abc]", true},
		{dom255, true},
		{dom255 + "c", false},
		{"192.168.1.1", false}, // RFC 3696 §2: an all-numeric last label
		{"mail.123", false},
		{"localhost_pc", false},
		{"-a.example", false},
		{"a..b", false},
		{"a.", false},
		{"[192.0.2.256]", false},
		{"[10.0.0.1", false},
		{"", false},
		{"mail.bank.example [10.0.0.1]", false},
	} {
		if got := ValidHelo([]byte(tc.arg)); got != tc.want {
			t.Errorf("ValidHelo(%.40q) = %v, want %v", tc.arg, got, tc.want)
		}
	}
}
