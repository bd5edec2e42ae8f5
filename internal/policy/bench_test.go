package policy

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

func benchPolicy(b *testing.B) *Policy {
	var allow, deny []netip.Prefix
	for i := 0; i < 1000; i++ {
		allow = append(allow, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24))
		deny = append(deny, netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(i >> 8), byte(i)}), 48))
	}
	return mustNew(b, Config{
		Allow:            allow,
		Deny:             deny,
		ConnRate:         1e9,
		MsgRate:          1e9,
		RecipientDomains: []string{"example.com", "example.net", ".example.org"},
	})
}

// One client, many messages: the per-message path.
func BenchmarkTakeMessageKnownIP(b *testing.B) {
	p := benchPolicy(b)
	a := netip.MustParseAddr("10.1.2.3")
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		p.TakeMessage(a, now)
	}
}

// Event loops on every core, each with its own set of clients.
func BenchmarkTakeMessageParallel(b *testing.B) {
	p := benchPolicy(b)
	var g atomic.Uint32
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		id := g.Add(1)
		i := 0
		for pb.Next() {
			i++
			p.TakeMessage(netip.AddrFrom4([4]byte{10, byte(id), byte(i>>8) & 3, byte(i)}), now)
		}
	})
}

// A flood of new addresses: every call inserts and, past MaxTracked,
// evicts.
func BenchmarkTakeConnectionFloodParallel(b *testing.B) {
	p := mustNew(b, Config{ConnRate: 1, MaxTracked: 10000})
	var g atomic.Uint32
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		id := g.Add(1)
		i := 0
		for pb.Next() {
			i++
			p.TakeConnection(netip.AddrFrom4([4]byte{byte(id), byte(i >> 16), byte(i >> 8), byte(i)}), now)
		}
	})
}

func BenchmarkClientAllowed1000Prefixes(b *testing.B) {
	p := benchPolicy(b)
	v4, v6 := netip.MustParseAddr("10.3.200.1"), netip.MustParseAddr("2001:db8:1::1")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !p.ClientAllowed(v4) || p.ClientAllowed(v6) {
				panic("wrong answer")
			}
		}
	})
}

func BenchmarkRecipientAllowed(b *testing.B) {
	p := benchPolicy(b)
	exact := []byte("someone@Example.COM")
	sub := []byte("someone@mail.deep.sub.example.org")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !p.RecipientAllowed(exact) || !p.RecipientAllowed(sub) {
				panic("refused")
			}
		}
	})
}

// New must be cheap enough to run on every SIGHUP.
func BenchmarkNew(b *testing.B) {
	var allow []netip.Prefix
	for i := 0; i < 1000; i++ {
		allow = append(allow, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24))
	}
	cfg := Config{Allow: allow, ConnRate: 10, MsgRate: 10, RecipientDomains: []string{"example.com", ".example.org"}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := New(cfg); err != nil {
			b.Fatal(err)
		}
	}
}
