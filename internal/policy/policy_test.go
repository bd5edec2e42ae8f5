package policy

import (
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func mustNew(t testing.TB, cfg Config) *Policy {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func prefixes(ss ...string) []netip.Prefix {
	var ps []netip.Prefix
	for _, s := range ss {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	return ps
}

var ip = netip.MustParseAddr

// t0 is an arbitrary injected clock start, far from New's epoch on purpose.
var t0 = time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)

func TestNewRejectsBadConfig(t *testing.T) {
	cases := []struct {
		name  string
		cfg   Config
		field string // must appear in the error
	}{
		{"invalid prefix", Config{Allow: []netip.Prefix{{}}}, "Allow[0]"},
		{"host bits", Config{Deny: prefixes("10.0.0.0/8", "10.0.0.1/8")}, "Deny[1]: 10.0.0.1/8 has host bits set (the network is 10.0.0.0/8)"},
		{"negative conn rate", Config{ConnRate: -1}, "ConnRate"},
		{"NaN msg rate", Config{MsgRate: nan()}, "MsgRate"},
		{"infinite conn rate", Config{ConnRate: inf()}, "ConnRate"},
		{"negative burst", Config{ConnRate: 1, ConnBurst: -1}, "ConnBurst"},
		{"burst without rate", Config{MsgBurst: 5}, "MsgBurst"},
		{"window too long", Config{MsgRate: 1e-9, MsgBurst: 10}, "MsgBurst/MsgRate"},
		{"negative max tracked", Config{MaxTracked: -1}, "MaxTracked"},
		{"IPv6 prefix too short", Config{IPv6Prefix: 31}, "IPv6Prefix: /31"},
		{"IPv6 prefix too long", Config{IPv6Prefix: 129}, "IPv6Prefix: /129"},
		{"negative IPv6 prefix", Config{IPv6Prefix: -64}, "IPv6Prefix"},
		{"empty domain", Config{RecipientDomains: []string{"example.com", ""}}, "RecipientDomains[1]"},
		{"star syntax", Config{RecipientDomains: []string{"*.example.com"}}, `".example.com"`},
		{"trailing dot", Config{RecipientDomains: []string{"example.com."}}, "RecipientDomains[0]"},
		{"double dot", Config{RecipientDomains: []string{"a..example"}}, "empty label"},
		{"lone dot", Config{RecipientDomains: []string{"."}}, "RecipientDomains[0]"},
		{"literal", Config{RecipientDomains: []string{"[192.0.2.1]"}}, "literal"},
		{"space", Config{RecipientDomains: []string{"exa mple.com"}}, "character"},
		{"at sign", Config{RecipientDomains: []string{"user@example.com"}}, "character"},
		{"hyphen edge", Config{RecipientDomains: []string{"-a.example"}}, "'-'"},
		{"long label", Config{RecipientDomains: []string{strings.Repeat("a", 64) + ".example"}}, "63"},
		{"long domain", Config{RecipientDomains: []string{strings.Repeat("a.", 128)}}, "255"},
		{"bad utf8", Config{RecipientDomains: []string{"b\xfcr.example"}}, "UTF-8"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(tc.cfg)
			if err == nil || p != nil {
				t.Fatalf("New accepted %+v", tc.cfg)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %q does not mention %q", err, tc.field)
			}
		})
	}
	// Several mistakes are reported together.
	_, err := New(Config{ConnRate: -1, MaxTracked: -5, RecipientDomains: []string{"*"}})
	for _, f := range []string{"ConnRate", "MaxTracked", "RecipientDomains[0]"} {
		if err == nil || !strings.Contains(err.Error(), f) {
			t.Errorf("error %v does not mention %s", err, f)
		}
	}
}

func nan() float64 { z := 0.0; return z / z }
func inf() float64 { z := 0.0; return 1 / z }

func TestZeroConfigAndNilAllowEverything(t *testing.T) {
	for _, p := range []*Policy{mustNew(t, Config{}), nil} {
		for i := 0; i < 1000; i++ {
			if !p.TakeConnection(ip("192.0.2.1"), t0) || !p.TakeMessage(ip("192.0.2.1"), t0) {
				t.Fatalf("%v: limited without limits", p)
			}
		}
		if !p.ClientAllowed(ip("192.0.2.1")) || !p.ClientAllowed(ip("2001:db8::1")) {
			t.Fatal("client refused without lists")
		}
		if !p.RecipientAllowed([]byte("a@anything.example")) || !p.AcceptsAnyDomain() {
			t.Fatal("domain refused without a domain list")
		}
		if p.Tracked() != 0 {
			t.Fatal("state kept without limits")
		}
	}
}

func TestClientAllowed(t *testing.T) {
	p := mustNew(t, Config{
		Allow: prefixes("192.0.2.0/24", "198.51.100.7/32", "2001:db8::/32", "::ffff:203.0.113.0/120"),
		Deny:  prefixes("192.0.2.128/25", "2001:db8:dead::/48", "198.51.100.7/32"),
	})
	cases := []struct {
		ip   string
		want bool
	}{
		{"192.0.2.0", true},
		{"192.0.2.127", true},
		{"192.0.2.128", false}, // deny wins over the wider allow
		{"192.0.2.255", false},
		{"192.0.3.0", false},       // just past the allowed /24
		{"192.0.1.255", false},     // just before it
		{"198.51.100.7", false},    // in both lists: deny wins
		{"::ffff:192.0.2.1", true}, // mapped is IPv4
		{"::ffff:192.0.2.200", false},
		{"203.0.113.9", true}, // allowed through a mapped prefix
		{"::ffff:203.0.113.9", true},
		{"2001:db8::1", true},
		{"2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", true},
		{"2001:db8:dead::1", false},
		{"2001:db8:dead:ffff::1", false},
		{"2001:db8:deae::1", true},
		{"2001:db9::", false},
		{"fe80::1%eth0", false},
		{"::1", false},
	}
	for _, tc := range cases {
		if got := p.ClientAllowed(ip(tc.ip)); got != tc.want {
			t.Errorf("ClientAllowed(%s) = %v; want %v", tc.ip, got, tc.want)
		}
	}
	if p.ClientAllowed(netip.Addr{}) {
		t.Error("the zero Addr is allowed")
	}
}

func TestClientAllowedDenyOnly(t *testing.T) {
	p := mustNew(t, Config{Deny: prefixes("::/0", "10.0.0.0/8")})
	for _, tc := range []struct {
		ip   string
		want bool
	}{
		{"10.1.2.3", false},
		{"::ffff:10.1.2.3", false},
		{"11.0.0.0", true},
		{"::ffff:11.0.0.0", true}, // ::/0 is every IPv6 client, not IPv4 ones
		{"2001:db8::1", false},
		{"::", false},
	} {
		if got := p.ClientAllowed(ip(tc.ip)); got != tc.want {
			t.Errorf("ClientAllowed(%s) = %v; want %v", tc.ip, got, tc.want)
		}
	}
	p = mustNew(t, Config{Deny: prefixes("0.0.0.0/0")})
	if p.ClientAllowed(ip("255.255.255.255")) || p.ClientAllowed(ip("::ffff:0.0.0.0")) || !p.ClientAllowed(ip("2001:db8::1")) {
		t.Error("0.0.0.0/0 does not deny exactly the IPv4 clients")
	}
}

// The sorted ranges are merged; lookups agree with netip's Contains over
// overlapping, nested and adjacent prefixes.
func TestPrefixSetMatchesNetip(t *testing.T) {
	list := prefixes("10.0.0.0/8", "10.1.0.0/16", "10.255.255.255/32", "11.0.0.0/8", "12.0.0.0/9", "12.128.0.0/9",
		"0.0.0.0/32", "255.255.255.255/32", "2001:db8::/64", "2001:db8:0:1::/64", "2001:db8::/63", "ffff::/16", "::/128")
	s, err := newPrefixSet("Allow", list)
	if err != nil {
		t.Fatal(err)
	}
	probe := []string{"9.255.255.255", "10.0.0.0", "10.200.1.1", "11.255.255.255", "12.127.255.255", "12.128.0.0",
		"12.255.255.255", "13.0.0.0", "0.0.0.0", "0.0.0.1", "255.255.255.254", "255.255.255.255",
		"2001:db8::", "2001:db8:0:1:ffff:ffff:ffff:ffff", "2001:db8:0:2::", "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff",
		"ffff::1", "fffe:ffff::", "::", "::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"}
	for _, a := range probe {
		want := false
		for _, p := range list {
			want = want || p.Contains(ip(a))
		}
		if got := s.contains(keyOf(ip(a))); got != want {
			t.Errorf("%s: got %v; want %v", a, got, want)
		}
	}
	// 10/8 11/8 12/9 12.128/9 touch and become one range 10.0.0.0-12.255.255.255;
	// 2001:db8::/63 swallows both /64s.
	if len(s.v4.lo) != 3 || len(s.v6.lo) != 3 {
		t.Errorf("ranges: %d IPv4, %d IPv6; want 3 and 3 after merging", len(s.v4.lo), len(s.v6.lo))
	}
}

func TestConnectionBurstAndRefill(t *testing.T) {
	const burst = 5
	p := mustNew(t, Config{ConnRate: 2, ConnBurst: burst})
	a := ip("192.0.2.1")
	for i := 0; i < burst; i++ {
		if !p.TakeConnection(a, t0) {
			t.Fatalf("connection %d of a burst of %d refused", i+1, burst)
		}
	}
	if p.TakeConnection(a, t0) {
		t.Fatal("connection past the burst accepted")
	}
	// One token comes back after 1/rate = 500ms, not a nanosecond sooner.
	if p.TakeConnection(a, t0.Add(500*time.Millisecond-1)) {
		t.Fatal("token back before 1/rate")
	}
	if !p.TakeConnection(a, t0.Add(500*time.Millisecond)) {
		t.Fatal("token not back after 1/rate")
	}
	if p.TakeConnection(a, t0.Add(500*time.Millisecond)) {
		t.Fatal("two tokens back after 1/rate")
	}
	// A long pause refills to the burst, not beyond.
	later := t0.Add(time.Hour)
	for i := 0; i < burst; i++ {
		if !p.TakeConnection(a, later) {
			t.Fatalf("after a pause: connection %d refused", i+1)
		}
	}
	if p.TakeConnection(a, later) {
		t.Fatal("after a pause: bucket holds more than the burst")
	}
	// Other clients, and the message bucket, are not affected.
	if !p.TakeConnection(ip("192.0.2.2"), t0) || !p.TakeMessage(a, t0) {
		t.Fatal("one client's connection bucket limited another bucket")
	}
}

func TestMessageBurstAndRefill(t *testing.T) {
	// rate 3/s: 1/rate is 333333333.33ns, rounded to 333333333ns.
	p := mustNew(t, Config{MsgRate: 3, MsgBurst: 2, ConnRate: 1000})
	a := ip("2001:db8::25")
	if !p.TakeMessage(a, t0) || !p.TakeMessage(a, t0) {
		t.Fatal("burst of 2 refused")
	}
	if p.TakeMessage(a, t0) {
		t.Fatal("third message accepted")
	}
	step := time.Second / 3
	if p.TakeMessage(a, t0.Add(step-1)) || !p.TakeMessage(a, t0.Add(step)) || p.TakeMessage(a, t0.Add(step)) {
		t.Fatal("refill is not one token per 1/rate")
	}
	// Refused takes do not use tokens up: at 2*step exactly one more.
	if !p.TakeMessage(a, t0.Add(2*step)) || p.TakeMessage(a, t0.Add(2*step)) {
		t.Fatal("refused takes changed the bucket")
	}
	// The connection bucket is separate and still full.
	for i := 0; i < 1000; i++ {
		if !p.TakeConnection(a, t0) {
			t.Fatalf("connection %d refused", i+1)
		}
	}
	if p.TakeConnection(a, t0) {
		t.Fatal("connection 1001 of a default burst of 1000 accepted")
	}
}

func TestDefaultBurst(t *testing.T) {
	for _, tc := range []struct {
		rate  float64
		burst int
	}{{0.1, 1}, {1, 1}, {2.5, 3}, {10, 10}} {
		p := mustNew(t, Config{ConnRate: tc.rate})
		a := ip("192.0.2.9")
		n := 0
		for p.TakeConnection(a, t0) && n < 100 {
			n++
		}
		if n != tc.burst {
			t.Errorf("rate %v: default burst %d; want %d", tc.rate, n, tc.burst)
		}
	}
}

// A slow rate: one connection a minute, burst 1.
func TestSlowRate(t *testing.T) {
	p := mustNew(t, Config{ConnRate: 1.0 / 60})
	a := ip("192.0.2.1")
	if !p.TakeConnection(a, t0) || p.TakeConnection(a, t0.Add(59*time.Second)) || !p.TakeConnection(a, t0.Add(60*time.Second)) {
		t.Fatal("1/60 per second is not one a minute")
	}
}

// Time going backwards (a wall-clock step) neither refills nor breaks the
// bucket.
func TestClockGoesBack(t *testing.T) {
	p := mustNew(t, Config{MsgRate: 1, MsgBurst: 1})
	a := ip("192.0.2.1")
	if !p.TakeMessage(a, t0) {
		t.Fatal("first refused")
	}
	if p.TakeMessage(a, t0.Add(-time.Hour)) {
		t.Fatal("going back in time refilled the bucket")
	}
	if !p.TakeMessage(a, t0.Add(time.Second)) {
		t.Fatal("bucket stuck after the clock went back")
	}
}

func TestMappedAndPlainIPv4ShareABucket(t *testing.T) {
	p := mustNew(t, Config{ConnRate: 1, ConnBurst: 1})
	if !p.TakeConnection(ip("192.0.2.1"), t0) {
		t.Fatal("first refused")
	}
	if p.TakeConnection(ip("::ffff:192.0.2.1"), t0) {
		t.Fatal("the mapped form of the same client got its own bucket")
	}
	if !p.TakeConnection(ip("fe80::1%eth0"), t0) || p.TakeConnection(ip("fe80::1%eth1"), t0) {
		t.Fatal("zones split one address into several buckets")
	}
}

// A flood of distinct addresses keeps exactly MaxTracked of them, and the
// least recently seen ones are the ones forgotten.
func TestEvictionBoundsMemory(t *testing.T) {
	const maxTracked = 1000
	p := mustNew(t, Config{ConnRate: 1, ConnBurst: 1, MaxTracked: maxTracked})
	hot := ip("2001:db8::1")
	if !p.TakeConnection(hot, t0) {
		t.Fatal("hot client refused")
	}
	var b [4]byte
	for i := 0; i < 1_000_000; i++ {
		b = [4]byte{byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)}
		if !p.TakeConnection(netip.AddrFrom4(b), t0) {
			t.Fatalf("new client %d refused", i)
		}
		if i%64 == 0 {
			// The hot client keeps coming back, so it is never the
			// least recently used and keeps its empty bucket.
			if p.TakeConnection(hot, t0) {
				t.Fatalf("hot client forgotten after %d others", i)
			}
		}
		if i%100_000 == 0 {
			if n := p.Tracked(); n > maxTracked {
				t.Fatalf("after %d clients: %d tracked > %d", i, n, maxTracked)
			}
		}
	}
	if n := p.Tracked(); n != maxTracked {
		t.Fatalf("tracked %d; want %d", n, maxTracked)
	}
	// The last clients are remembered (still empty), the first ones
	// forgotten (full again).
	if p.TakeConnection(netip.AddrFrom4(b), t0) {
		t.Fatal("most recent client forgotten")
	}
	if !p.TakeConnection(netip.AddrFrom4([4]byte{0, 0, 0, 1}), t0) {
		t.Fatal("an early client is still tracked")
	}
	for i := range p.limiter.shards {
		s := &p.limiter.shards[i]
		if len(s.entries) > s.capacity || len(s.index) > s.capacity {
			t.Fatalf("shard %d holds %d entries, %d indexed, capacity %d", i, len(s.entries), len(s.index), s.capacity)
		}
	}
}

func TestMaxTrackedSmallerThanShards(t *testing.T) {
	for _, max := range []int{1, 2, 3, 63, 65, 100} {
		p := mustNew(t, Config{MsgRate: 1, MaxTracked: max})
		for i := 0; i < 10*max+100; i++ {
			p.TakeMessage(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), t0)
		}
		if n := p.Tracked(); n > max {
			t.Errorf("MaxTracked %d: %d tracked", max, n)
		}
		total := 0
		for i := range p.limiter.shards {
			total += p.limiter.shards[i].capacity
		}
		if total != max {
			t.Errorf("MaxTracked %d: shard capacities add up to %d", max, total)
		}
	}
}

// Several goroutines (as event loops would) share one client's bucket:
// exactly the burst gets through.
func TestConcurrentTakesHonourTheBurst(t *testing.T) {
	const burst = 1000
	p := mustNew(t, Config{MsgRate: 1, MsgBurst: burst, ConnRate: 5, MaxTracked: 500})
	a := ip("192.0.2.77")
	var got atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				if p.TakeMessage(a, t0) {
					got.Add(1)
				}
				// Churn other addresses in the same table meanwhile.
				p.TakeConnection(netip.AddrFrom4([4]byte{10, byte(g), byte(i >> 8), byte(i)}), t0)
				p.ClientAllowed(a)
			}
		}(g)
	}
	wg.Wait()
	if got.Load() != burst {
		t.Fatalf("%d messages got through; want %d", got.Load(), burst)
	}
	if n := p.Tracked(); n > 500 {
		t.Fatalf("%d tracked", n)
	}
}

func TestRecipientAllowed(t *testing.T) {
	p := mustNew(t, Config{RecipientDomains: []string{"Example.COM", ".Sub.Example.org", "bücher.example", "xn--bcher-kva.example", "localhost"}})
	if p.AcceptsAnyDomain() {
		t.Fatal("AcceptsAnyDomain with a list")
	}
	cases := []struct {
		addr string
		want bool
	}{
		{"user@example.com", true},
		{"user@EXAMPLE.Com", true},
		{"User.Name+tag@eXample.com", true},
		{`"quoted@local"@example.com`, true}, // the domain follows the last '@'
		{"user@a.example.com", false},        // exact entry: no subdomains
		{"user@example.com.evil", false},
		{"user@notexample.com", false},
		{"user@xample.com", false},
		{"user@sub.example.org", false}, // ".sub.example.org" is only for its subdomains
		{"user@a.sub.example.org", true},
		{"user@A.B.SUB.EXAMPLE.ORG", true},
		{"user@asub.example.org", false},
		{"user@.sub.example.org", false}, // an empty first label is no subdomain
		{"user@example.org", false},
		{"user@bücher.example", true},
		{"user@BÜCHER.example", false}, // no Unicode case folding: bytes after ASCII lower-casing
		{"user@Bücher.EXAMPLE", true},
		{"user@XN--BCHER-KVA.example", true},
		{"user@localhost", true},
		{"postmaster", true},
		{"PostMaster", true},
		{"postmaster@other.example", false},
		{"postmaster@example.com", true},
		{"postmasters", false},
		{"user", false},
		{"", false},
		{"user@", false},
		{"user@[192.0.2.1]", false},
		{"user@" + strings.Repeat("a", 300), false},
	}
	for _, tc := range cases {
		if got := p.RecipientAllowed([]byte(tc.addr)); got != tc.want {
			t.Errorf("RecipientAllowed(%q) = %v; want %v", tc.addr, got, tc.want)
		}
	}
	// The caller's bytes are not changed by lower-casing.
	in := []byte("user@EXAMPLE.COM")
	p.RecipientAllowed(in)
	if string(in) != "user@EXAMPLE.COM" {
		t.Fatalf("input changed to %q", in)
	}
}

func TestRecipientSubdomainsOnlyList(t *testing.T) {
	p := mustNew(t, Config{RecipientDomains: []string{".example"}})
	if !p.RecipientAllowed([]byte("a@mx.example")) || p.RecipientAllowed([]byte("a@example")) || p.RecipientAllowed([]byte("a@example.mx")) {
		t.Fatal(".example does not mean exactly the subdomains of example")
	}
	// A domain at the 255-octet limit is looked up.
	long := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 55) + ".example"
	if len(long) != 255 {
		t.Fatalf("len %d", len(long))
	}
	if !p.RecipientAllowed([]byte("u@" + strings.ToUpper(long))) {
		t.Fatal("255-octet domain not matched")
	}
}

func TestAllocs(t *testing.T) {
	p := mustNew(t, Config{
		Allow:            prefixes("192.0.2.0/24", "2001:db8::/32"),
		Deny:             prefixes("192.0.2.128/25"),
		ConnRate:         1e6,
		MsgRate:          1e6,
		RecipientDomains: []string{"example.com", ".example.org"},
	})
	a := ip("192.0.2.1")
	a6 := ip("2001:db8:1:1::1%eth0")
	p.TakeConnection(a, t0)
	p.TakeConnection(a6, t0)
	now := t0
	rcpt := []byte("Someone@Deep.Sub.Example.ORG")
	for name, f := range map[string]func(){
		"TakeConnection":   func() { now = now.Add(time.Second); p.TakeConnection(a, now) },
		"TakeConnection6":  func() { now = now.Add(time.Second); p.TakeConnection(a6, now) },
		"ClientKey":        func() { _ = ClientKey(a6, 64) },
		"TakeMessage":      func() { now = now.Add(time.Second); p.TakeMessage(a, now) },
		"RecipientAllowed": func() { p.RecipientAllowed(rcpt) },
		"ClientAllowed":    func() { p.ClientAllowed(a) },
	} {
		if n := testing.AllocsPerRun(1000, f); n != 0 {
			t.Errorf("%s: %v allocs per call", name, n)
		}
	}
	if !p.RecipientAllowed(rcpt) {
		t.Fatal("the measured recipient is not even allowed")
	}
}
