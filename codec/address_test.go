package codec

import (
	"strings"
	"testing"
)

var mailboxTests = []struct {
	path string
	utf8 bool
	err  *Reply
}{
	// The null reverse-path.
	{path: ""},

	// Dot-string local parts.
	{path: "a@b"},
	{path: "a.b.c@example.com"},
	{path: "!#$%&'*+-/=?^_`{|}~@example.com"},
	{path: "user+tag@example.com"},
	{path: ".a@b", err: ErrBadAddress},
	{path: "a.@b", err: ErrBadAddress},
	{path: "a..b@c", err: ErrBadAddress},
	{path: "a b@c", err: ErrBadAddress},
	{path: "a(b)@c", err: ErrBadAddress},
	{path: "a,b@c", err: ErrBadAddress},

	// Quoted-string local parts.
	{path: `"a b"@x`},
	{path: `""@x`},
	{path: `"a\"b"@x`},
	{path: `"a\\b"@x`},
	{path: `"a@b"@c`},
	{path: `"a>b"@c`},
	{path: `"a`, err: ErrBadAddress},
	{path: `"a"b@c`, err: ErrBadAddress},
	{path: `"a"`, err: ErrBadAddress},
	{path: `"a\`, err: ErrBadAddress},
	{path: `"a` + "\t" + `b"@c`, err: ErrBadAddress},

	// Missing parts.
	{path: "a", err: ErrBadAddress},
	{path: "postmaster", err: ErrBadAddress},
	{path: "@b", err: ErrBadAddress},
	{path: "a@", err: ErrBadAddress},
	{path: "a@b@c", err: ErrBadAddress},

	// Domains.
	{path: "a@localhost"},
	{path: "a@a-b.example"},
	{path: "a@1.2.3.4"},
	{path: "a@xn--bcher-kva.example"},
	{path: "a@b.", err: ErrBadAddress},
	{path: "a@.b", err: ErrBadAddress},
	{path: "a@b..c", err: ErrBadAddress},
	{path: "a@-b", err: ErrBadAddress},
	{path: "a@b-", err: ErrBadAddress},
	{path: "a@b-.c", err: ErrBadAddress},
	{path: "a@b.-c", err: ErrBadAddress},
	{path: "a@b_c", err: ErrBadAddress},

	// IPv4 address literals.
	{path: "a@[192.0.2.1]"},
	{path: "a@[0.0.0.0]"},
	{path: "a@[255.255.255.255]"},
	{path: "a@[1.2.3.256]", err: ErrBadAddress},
	{path: "a@[1.2.3]", err: ErrBadAddress},
	{path: "a@[1.2.3.4.5]", err: ErrBadAddress},
	{path: "a@[1.2.3.4", err: ErrBadAddress},
	{path: "a@[1..3.4]", err: ErrBadAddress},
	{path: "a@[1234.2.3.4]", err: ErrBadAddress},
	{path: "a@[]", err: ErrBadAddress},

	// IPv6 address literals.
	{path: "a@[IPv6:2001:db8::1]"},
	{path: "a@[ipv6:::1]"},
	{path: "a@[IPv6:::]"},
	{path: "a@[IPv6:1::]"},
	{path: "a@[IPv6:1:2:3:4:5:6:7:8]"},
	{path: "a@[IPv6:1:2:3::6:7:8]"},
	{path: "a@[IPv6:::ffff:192.0.2.1]"},
	{path: "a@[IPv6:1:2:3:4:5:6:192.0.2.1]"},
	{path: "a@[IPv6:1:2:3:4::192.0.2.1]"},
	{path: "a@[IPv6:1:2:3:4:5:6:7]", err: ErrBadAddress},
	{path: "a@[IPv6:1:2:3:4:5:6:7:8:9]", err: ErrBadAddress},
	{path: "a@[IPv6:1:2:3:4:5:6:7::]", err: ErrBadAddress},
	{path: "a@[IPv6:1::2::3]", err: ErrBadAddress},
	{path: "a@[IPv6:12345::]", err: ErrBadAddress},
	{path: "a@[IPv6:g::1]", err: ErrBadAddress},
	{path: "a@[IPv6::1]", err: ErrBadAddress},
	{path: "a@[IPv6:1:]", err: ErrBadAddress},
	{path: "a@[IPv6:1:2:3:4:5:6:7:192.0.2.1]", err: ErrBadAddress},
	{path: "a@[IPv6:1:2:3:4:5::192.0.2.1]", err: ErrBadAddress},
	{path: "a@[IPv6:::1.2.3]", err: ErrBadAddress},
	{path: "a@[IPv6:]", err: ErrBadAddress},

	// General address literals (RFC 5321 §4.1.3).
	{path: "a@[x-tag:anything-goes.here]"},
	{path: "a@[tag-:x]", err: ErrBadAddress},
	{path: "a@[tag:]", err: ErrBadAddress},
	{path: "a@[:x]", err: ErrBadAddress},
	{path: "a@[tag:a[b]", err: ErrBadAddress},
	{path: "a@[tag:a\\b]", err: ErrBadAddress},
	{path: "a@[ta_g:x]", err: ErrBadAddress},

	// Length limits (RFC 5321 §4.5.3.1).
	{path: strings.Repeat("l", 64) + "@b"},
	{path: strings.Repeat("l", 65) + "@b", err: ErrLocalPartTooLong},
	{path: `"` + strings.Repeat("l", 63) + `"@b`, err: ErrLocalPartTooLong},
	{path: "a@" + strings.Repeat("d", 252)}, // 254 octets, 256 with "<>"
	{path: "a@" + strings.Repeat("d", 253), err: ErrPathTooLong},
	{path: "a@" + strings.Repeat("d", 256), err: ErrDomainTooLong},
	{path: strings.Repeat("l", 64) + "@" + strings.Repeat("d.", 94) + "d"}, // 254 octets
	{path: strings.Repeat("l", 64) + "@" + strings.Repeat("d.", 95) + "d", err: ErrPathTooLong},

	// Non-ASCII (RFC 6531): only with SMTPUTF8, only well-formed UTF-8.
	{path: "δοκιμή@παράδειγμα.δοκιμή", utf8: true},
	{path: "δοκιμή@παράδειγμα.δοκιμή", err: ErrNeedSMTPUTF8},
	{path: "ascii@παράδειγμα.δοκιμή", err: ErrNeedSMTPUTF8},
	{path: "ü.ö@example.com", utf8: true},
	{path: `"ü ö"@example.com`, utf8: true},
	{path: `"ü ö"@example.com`, err: ErrNeedSMTPUTF8},
	{path: "a@ü", utf8: true},
	{path: "\xff@example.com", utf8: true, err: ErrBadUTF8},
	{path: "a@\xc3", utf8: true, err: ErrBadUTF8},
	{path: "\xff@example.com", err: ErrNeedSMTPUTF8},
	{path: "a@[ü]", utf8: true, err: ErrBadAddress},
	{path: "a@[IPv6:ü]", utf8: true, err: ErrBadAddress},
	{path: strings.Repeat("ü", 32) + "@b", utf8: true},
	{path: strings.Repeat("ü", 33) + "@b", utf8: true, err: ErrLocalPartTooLong},
}

func TestValidateMailbox(t *testing.T) {
	for _, tc := range mailboxTests {
		err := ValidateMailbox([]byte(tc.path), tc.utf8)
		if tc.err == nil {
			if err != nil {
				t.Errorf("%q utf8=%v: unexpected %v", tc.path, tc.utf8, err)
			}
			continue
		}
		if r, ok := err.(*Reply); !ok || r != tc.err {
			t.Errorf("%q utf8=%v: got %v, want %v", tc.path, tc.utf8, err, tc.err)
		}
	}
}

// Every ASCII mailbox valid without SMTPUTF8 stays valid with it.
func TestValidateMailboxUTF8IsSuperset(t *testing.T) {
	for _, tc := range mailboxTests {
		if tc.utf8 || tc.err != nil {
			continue
		}
		if err := ValidateMailbox([]byte(tc.path), true); err != nil {
			t.Errorf("%q: valid without SMTPUTF8 but %v with it", tc.path, err)
		}
	}
}

func TestAddressReplyCodes(t *testing.T) {
	for r, want := range map[*Reply]string{
		ErrBadAddress:       "501 5.1.3 ",
		ErrLocalPartTooLong: "501 5.1.3 ",
		ErrDomainTooLong:    "501 5.1.3 ",
		ErrPathTooLong:      "501 5.1.3 ",
		ErrBadUTF8:          "501 5.1.3 ",
		ErrNeedSMTPUTF8:     "553 5.6.7 ",
	} {
		if !strings.HasPrefix(r.Error(), want) {
			t.Errorf("%q: want prefix %q", r.Error(), want)
		}
	}
}

func TestIsPostmaster(t *testing.T) {
	for path, want := range map[string]bool{
		"postmaster":             true,
		"PostMaster":             true,
		"POSTMASTER":             true,
		"postmaster@example.com": false,
		"postmaste":              false,
		"postmasterr":            false,
		"":                       false,
		`"postmaster"`:           false,
	} {
		if got := IsPostmaster([]byte(path)); got != want {
			t.Errorf("IsPostmaster(%q) = %v, want %v", path, got, want)
		}
	}
}
