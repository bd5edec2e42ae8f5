package policy

import (
	"net/netip"
	"testing"
)

func TestClientKey(t *testing.T) {
	cases := []struct {
		ip     string
		v6bits int
		want   string
	}{
		{"192.0.2.1", 64, "192.0.2.1"},
		{"192.0.2.1", 128, "192.0.2.1"},
		{"::ffff:192.0.2.1", 64, "192.0.2.1"}, // mapped: the IPv4 client, whole
		{"::ffff:192.0.2.1", 128, "192.0.2.1"},
		{"2001:db8:1:1::1", 64, "2001:db8:1:1::"},
		{"2001:db8:1:1::2", 64, "2001:db8:1:1::"},
		{"2001:db8:1:1:ffff:ffff:ffff:fffe", 64, "2001:db8:1:1::"},
		{"2001:db8:1:2::1", 64, "2001:db8:1:2::"},
		{"2001:db8:1:1::1", 48, "2001:db8:1::"},
		{"2001:db8:1:1::1", 32, "2001:db8::"},
		{"2001:db8:1:1::1", 128, "2001:db8:1:1::1"},
		{"2001:db8:1:1::1", 127, "2001:db8:1:1::"},
		{"2001:db8:1:1::1", 129, "2001:db8:1:1::1"}, // out of range: the whole address
		{"2001:db8:1:1::1", -1, "2001:db8:1:1::1"},
		{"::1", 64, "::"},
		{"fe80::1%eth0", 64, "fe80::"},
		{"fe80::1%eth0", 128, "fe80::1"}, // zones never split a client
		{"::ffff:0:1", 64, "0.0.0.1"},
	}
	for _, tc := range cases {
		got := ClientKey(ip(tc.ip), tc.v6bits)
		if got != ip(tc.want) {
			t.Errorf("ClientKey(%s, %d) = %v, want %s", tc.ip, tc.v6bits, got, tc.want)
		}
	}
	if got := ClientKey(netip.Addr{}, 64); got.IsValid() {
		t.Errorf("ClientKey(zero) = %v, want the zero Addr", got)
	}
}

// The addresses of one IPv6 /64 are one client for both rates; the next
// /64 is another client, and so is every IPv4 address.
func TestIPv6PrefixSharesBuckets(t *testing.T) {
	same := []string{"2001:db8:1:1::1", "2001:db8:1:1::2", "2001:db8:1:1:ffff:ffff:ffff:fffe"}
	take := map[string]func(p *Policy, a netip.Addr) bool{
		"connection": func(p *Policy, a netip.Addr) bool { return p.TakeConnection(a, t0) },
		"message":    func(p *Policy, a netip.Addr) bool { return p.TakeMessage(a, t0) },
	}
	for kind, take := range take {
		p := mustNew(t, Config{ConnRate: 1, ConnBurst: 2, MsgRate: 1, MsgBurst: 2})
		if !take(p, ip(same[0])) || !take(p, ip(same[1])) {
			t.Fatalf("%s: burst of 2 refused", kind)
		}
		if take(p, ip(same[2])) {
			t.Errorf("%s: a third address of the same /64 got a token", kind)
		}
		if !take(p, ip("2001:db8:1:2::1")) || !take(p, ip("2001:db8:1:2::2")) {
			t.Errorf("%s: the next /64 shares the first one's bucket", kind)
		}
		for _, a := range []string{"192.0.2.1", "192.0.2.2", "::ffff:192.0.2.3"} {
			if !take(p, ip(a)) {
				t.Errorf("%s: IPv4 %s shares a neighbour's bucket", kind, a)
			}
		}
		if n := p.Tracked(); n != 5 {
			t.Errorf("%s: %d clients tracked, want 5", kind, n)
		}
	}

	// IPv6Prefix 128 counts addresses; 48 puts both /64s together.
	p := mustNew(t, Config{ConnRate: 1, ConnBurst: 1, IPv6Prefix: 128})
	for _, a := range same {
		if !p.TakeConnection(ip(a), t0) {
			t.Errorf("/128: %s refused", a)
		}
	}
	p = mustNew(t, Config{ConnRate: 1, ConnBurst: 1, IPv6Prefix: 48})
	if !p.TakeConnection(ip("2001:db8:1:1::1"), t0) || p.TakeConnection(ip("2001:db8:1:2::1"), t0) {
		t.Error("/48: two /64s of one /48 are not one client")
	}
}

// Allow and Deny match the whole address whatever IPv6Prefix says.
func TestIPv6PrefixLeavesListsExact(t *testing.T) {
	p := mustNew(t, Config{Deny: prefixes("2001:db8:1:1::1/128"), ConnRate: 1})
	if p.ClientAllowed(ip("2001:db8:1:1::1")) || !p.ClientAllowed(ip("2001:db8:1:1::2")) {
		t.Error("Deny of one address applied to its /64")
	}
}
