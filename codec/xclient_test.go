package codec

import (
	"testing"
)

func TestAppendXtext(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"", "", true},
		{"mx.example", "mx.example", true},
		{"a+2Bb", "a+b", true},
		{"a+2bb", "a+b", true}, // lower-case hex, as Postfix takes it
		{"+3D+20+0D+0A", "= \r\n", true},
		{"[UNAVAILABLE]", "[UNAVAILABLE]", true},
		{"+C3+A9", "\xc3\xa9", true},
		{"a+", "", false},
		{"a+2", "", false},
		{"a+G0", "", false},
		{"a=b", "", false},
		{"a b", "", false},
		{"\x7f", "", false},
		{"\xc3\xa9", "", false}, // 8-bit octets only as +XX
	} {
		got, ok := AppendXtext([]byte("pre"), []byte(tc.in))
		if ok != tc.ok || (ok && string(got) != "pre"+tc.want) || (!ok && string(got) != "pre") {
			t.Errorf("AppendXtext(%q) = %q, %v; want %q, %v", tc.in, got, ok, "pre"+tc.want, tc.ok)
		}
	}
}

func TestNextXclientAttr(t *testing.T) {
	args := []byte("name=relay.example  Addr=IPV6:2001:db8::7 PORT=[UNAVAILABLE] PROTO=ESMTP HELO=mx LOGIN=a DESTADDR=192.0.2.1 DESTPORT=25 ")
	want := []struct {
		attr  XclientAttr
		value string
	}{
		{XclientNAME, "relay.example"}, {XclientADDR, "IPV6:2001:db8::7"}, {XclientPORT, "[UNAVAILABLE]"},
		{XclientPROTO, "ESMTP"}, {XclientHELO, "mx"}, {XclientLOGIN, "a"}, {XclientDESTADDR, "192.0.2.1"}, {XclientDESTPORT, "25"},
	}
	for i, w := range want {
		attr, v, rest, ok, err := NextXclientAttr(args)
		if err != nil || !ok || attr != w.attr || string(v) != w.value {
			t.Fatalf("attribute %d: %v %q %v %v, want %v %q", i, attr, v, ok, err, w.attr, w.value)
		}
		args = rest
	}
	if _, _, _, ok, err := NextXclientAttr(args); ok || err != nil {
		t.Fatalf("after the last: ok %v err %v", ok, err)
	}
	for _, bad := range []string{"FOO=1", "ADDR", "=x", "ADDRESS=1", "NAM=a"} {
		if _, _, _, _, err := NextXclientAttr([]byte(bad)); err != ErrXclientAttrName {
			t.Errorf("%q: err %v, want ErrXclientAttrName", bad, err)
		}
	}
}

func TestXclientAllocs(t *testing.T) {
	args := []byte("NAME=relay.example ADDR=192.0.2.7 HELO=mx+2Eexample LOGIN=alice")
	buf := make([]byte, 0, 128)
	assertNoAllocs(t, "XCLIENT attributes", func() {
		rest := args
		buf = buf[:0]
		for {
			_, v, r, ok, _ := NextXclientAttr(rest)
			if !ok {
				return
			}
			buf, _ = AppendXtext(buf, v)
			rest = r
		}
	})
}
