package proxyproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

// FuzzParse: no input panics; n stays within the input; errors are *Error
// pointing inside the looked-at bytes; "need more" is never returned once
// MaxHeaderLength bytes are there; the answer does not depend on how the
// input was split; and what is accepted agrees with the standard library's
// address parser and with the length field.
func FuzzParse(f *testing.F) {
	for _, tc := range validCases {
		f.Add(tc.in)
	}
	for _, tc := range badCases {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		n, hdr, err := Parse(in)
		if n < 0 || n > len(in) {
			t.Fatalf("n = %d for %d bytes", n, len(in))
		}
		var pe *Error
		switch {
		case err != nil:
			if !errors.As(err, &pe) {
				t.Fatalf("error %T is not *Error", err)
			}
			if n != 0 || hdr != (Header{}) {
				t.Fatalf("error with n=%d hdr=%+v", n, hdr)
			}
			if pe.Offset < 0 || pe.Offset > len(in) || pe.Offset >= MaxHeaderLength || pe.Field == "" || pe.Reason == "" {
				t.Fatalf("error %+v for %d bytes", *pe, len(in))
			}
		case n == 0:
			if hdr != (Header{}) {
				t.Fatalf("need-more with hdr=%+v", hdr)
			}
			if len(in) >= MaxHeaderLength {
				t.Fatalf("need-more after %d bytes", len(in))
			}
		default:
			checkAccepted(t, in[:n], hdr)
		}

		// Split invariance: a prefix gives "need more" or the same
		// answer as the whole, and once it has an answer every longer
		// prefix gives that answer.
		answered := false
		for k := 0; k <= len(in); k++ {
			kn, khdr, kerr := Parse(in[:k])
			if kerr == nil && kn == 0 {
				if answered {
					t.Fatalf("prefix %d needs more after a shorter one was answered", k)
				}
				continue
			}
			answered = true
			if kn != n || khdr != hdr {
				t.Fatalf("prefix %d: %d, %+v; whole: %d, %+v", k, kn, khdr, n, hdr)
			}
			var kpe *Error
			if (kerr == nil) != (err == nil) || (kerr != nil && (!errors.As(kerr, &kpe) || *kpe != *pe)) {
				t.Fatalf("prefix %d: %v; whole: %v", k, kerr, err)
			}
		}
	})
}

// checkAccepted cross-checks an accepted header h against what it says.
func checkAccepted(t *testing.T, h []byte, hdr Header) {
	t.Helper()
	switch hdr.Version {
	case 1:
		if len(h) > MaxV1Length || !bytes.HasPrefix(h, []byte("PROXY ")) || !bytes.HasSuffix(h, []byte("\r\n")) {
			t.Fatalf("v1 header %q", h)
		}
		if bytes.IndexByte(h, '\n') != len(h)-1 {
			t.Fatalf("v1 header %q has an LF before its end", h)
		}
		if hdr.Local {
			if !bytes.HasPrefix(h, []byte("PROXY UNKNOWN")) || hdr.Source.IsValid() || hdr.Destination.IsValid() {
				t.Fatalf("local v1 header %q: %+v", h, hdr)
			}
			return
		}
		f := bytes.Split(h[:len(h)-2], []byte(" "))
		if len(f) != 6 {
			t.Fatalf("v1 header %q has %d fields", h, len(f))
		}
		for i, want := range []netip.Addr{hdr.Source.Addr(), hdr.Destination.Addr()} {
			got, err := netip.ParseAddr(string(f[2+i]))
			if err != nil || got != want {
				t.Fatalf("v1 header %q: address %q parsed as %v; netip says %v, %v", h, f[2+i], want, got, err)
			}
			if (string(f[1]) == "TCP4") != got.Is4() {
				t.Fatalf("v1 header %q: family %s with %v", h, f[1], got)
			}
		}
		if string(f[4]) != fmt.Sprint(hdr.Source.Port()) || string(f[5]) != fmt.Sprint(hdr.Destination.Port()) {
			t.Fatalf("v1 header %q: ports %d %d", h, hdr.Source.Port(), hdr.Destination.Port())
		}
	case 2:
		if len(h) < v2HeaderLen || !bytes.HasPrefix(h, []byte(v2Signature)) {
			t.Fatalf("v2 header %q", h)
		}
		if l := int(binary.BigEndian.Uint16(h[14:16])); len(h) != v2HeaderLen+l || l > MaxV2Length {
			t.Fatalf("v2 header of %d bytes with length field %d", len(h), l)
		}
		if hdr.Local != (h[12] == 0x20) {
			t.Fatalf("v2 header ver_cmd %#x: Local=%v", h[12], hdr.Local)
		}
		if !hdr.Local && (h[13] == famTCPv4) != hdr.Source.Addr().Is4() {
			t.Fatalf("v2 header fam %#x: %+v", h[13], hdr)
		}
	default:
		t.Fatalf("accepted with version %d", hdr.Version)
	}
}
