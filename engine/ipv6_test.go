package engine

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/lsmtp/lsmtp/codec"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// The per-IP connection count keys an IPv6 client by its /64 (the
// default IPv6Prefix) and an IPv4 client, in either form, by its address.
// Driven through the functions OnOpen, the PROXY path and OnClose call,
// with addresses no test can connect from.
func TestPerIPCountsIPv6Prefix(t *testing.T) {
	srv, err := New(Config{Sink: &smtptest.Recorder{}, MaxConnsPerIP: 2})
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	admit := func(ip string) bool {
		t.Helper()
		reason, ok := srv.admit(a(ip), true)
		if !ok && reason != RefusedPerIP {
			t.Fatalf("%s refused for %v, want the per-IP limit", ip, reason)
		}
		return ok
	}
	for _, ip := range []string{"2001:db8:1:1::1", "2001:db8:1:1::2"} {
		if !admit(ip) {
			t.Fatalf("%s refused below the limit", ip)
		}
	}
	for _, ip := range []string{"2001:db8:1:1::3", "2001:db8:1:1:ffff:ffff:ffff:fffe", "2001:db8:1:1::1"} {
		if admit(ip) {
			t.Errorf("%s admitted: its /64 already has 2 connections", ip)
		}
		if srv.bindIP(a(ip)) {
			t.Errorf("%s bound through a proxy: its /64 already has 2 connections", ip)
		}
	}
	if _, ok := srv.admit(a("127.0.0.2"), false); !ok { // a load balancer's connection, bound below
		t.Fatal("proxy connection refused")
	}
	if !admit("2001:db8:1:2::1") || !srv.bindIP(a("2001:db8:1:2::2")) || admit("2001:db8:1:2::3") {
		t.Error("the next /64 is not a client of its own with the same limit")
	}
	// IPv4: neighbours are distinct clients, the mapped form is the same.
	if !admit("192.0.2.1") || !admit("::ffff:192.0.2.1") || admit("192.0.2.1") || admit("::ffff:192.0.2.1") {
		t.Error("an IPv4 client and its mapped form are not one client")
	}
	if !admit("192.0.2.2") {
		t.Error("192.0.2.2 shares 192.0.2.1's count")
	}
	// Closing any address of the /64 frees a place for any other.
	srv.release(a("2001:db8:1:1::2"), true)
	if !admit("2001:db8:1:1::abcd") {
		t.Error("no place after a release in the /64")
	}
	for _, ip := range []string{"2001:db8:1:1::1", "2001:db8:1:1::abcd", "2001:db8:1:2::1", "2001:db8:1:2::2",
		"192.0.2.1", "::ffff:192.0.2.1", "192.0.2.2"} {
		srv.release(a(ip), true)
	}
	if len(srv.perIP) != 0 || srv.stats.Open.Load() != 0 {
		t.Fatalf("after every release: perIP %v, %d open", srv.perIP, srv.stats.Open.Load())
	}
}

func TestPerIPWithIPv6Prefix128CountsAddresses(t *testing.T) {
	srv, err := New(Config{Sink: &smtptest.Recorder{}, MaxConnsPerIP: 1, IPv6Prefix: 128})
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range []string{"2001:db8:1:1::1", "2001:db8:1:1::2"} {
		if _, ok := srv.admit(netip.MustParseAddr(ip), true); !ok {
			t.Errorf("%s refused with /128 keys", ip)
		}
	}
	if _, ok := srv.admit(netip.MustParseAddr("2001:db8:1:1::1"), true); ok {
		t.Error("a second connection from one address admitted at a limit of 1")
	}
}

// Reload keeps the prefix the server started with: a session admitted
// under one key must be released under the same.
func TestReloadKeepsIPv6Prefix(t *testing.T) {
	srv, err := New(Config{Sink: &smtptest.Recorder{}, MaxConnsPerIP: 1})
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr("2001:db8:1:1::1")
	if _, ok := srv.admit(ip, true); !ok {
		t.Fatal("refused")
	}
	restart, err := srv.Reload(Config{MaxConnsPerIP: 1, IPv6Prefix: 128})
	if err != nil || len(restart) != 1 || restart[0] != "ipv6-prefix" {
		t.Fatalf("Reload: restart needed for %v, %v; want [ipv6-prefix]", restart, err)
	}
	if got := srv.settings().IPv6Prefix; got != 64 {
		t.Fatalf("IPv6Prefix %d after Reload, want 64 kept", got)
	}
	srv.release(ip, true)
	if len(srv.perIP) != 0 {
		t.Fatalf("perIP %v after release", srv.perIP)
	}
}

func TestConfigBounds(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string // in the error; "" for valid
	}{
		{Config{MaxLineLength: codec.MaxLineLimit}, ""},
		{Config{MaxLineLength: codec.MaxLineLimit + 1}, "MaxLineLength: 65537 is above the 65536 octets"},
		{Config{MaxLineLength: 1 << 26}, "MaxLineLength: 67108864 is above"},
		{Config{IPv6Prefix: 32}, ""},
		{Config{IPv6Prefix: 128}, ""},
		{Config{IPv6Prefix: 31}, "IPv6Prefix: /31 is not between /32 and /128"},
		{Config{IPv6Prefix: 129}, "IPv6Prefix: /129"},
		{Config{IPv6Prefix: -1}, "IPv6Prefix: /-1"},
	} {
		tc.cfg.Sink = &smtptest.Recorder{}
		_, err := New(tc.cfg)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v", tc.cfg, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("MaxLineLength %d, IPv6Prefix %d: error %v, want %q", tc.cfg.MaxLineLength, tc.cfg.IPv6Prefix, err, tc.want)
		}
	}
	if Defaults.IPv6Prefix != 64 {
		t.Errorf("default IPv6Prefix %d, want 64", Defaults.IPv6Prefix)
	}
}

// Over real IPv6 loopback sockets: the third connection from ::1 at a
// per-IP limit of 2 gets exactly the 421 and is closed; the first two are
// served, and a place frees when one leaves.
func TestPerIPLimitOverIPv6Loopback(t *testing.T) {
	if ln, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		ln.Close()
	}
	_, addr := startServer(t, Config{Listen: []string{"[::1]:0"}, MaxConnsPerIP: 2})
	if !strings.HasPrefix(addr, "[::1]:") {
		t.Fatalf("listening on %s", addr)
	}
	a := dial(t, addr)
	b := dial(t, addr)
	c := dialNoGreeting(t, addr)
	if got := c.reply(); len(got) != 1 || got[0] != "421 4.7.0 mx.test Too many connections, try again later" {
		t.Fatalf("third connection: %q", got)
	}
	c.expectClosed()
	a.do("QUIT", "221 2.0.0")
	a.expectClosed()
	b.do("NOOP", "250 2.0.0")
	waitOpen(t, addr, 2)
}

// waitOpen dials until a connection is greeted: a closed session's place
// is freed in OnClose, a moment after the client saw the close.
func waitOpen(t *testing.T, addr string, tries int) {
	t.Helper()
	for i := 0; ; i++ {
		c := dialNoGreeting(t, addr)
		line := c.reply()[0]
		if strings.HasPrefix(line, "220 ") {
			c.do("QUIT", "221 2.0.0")
			return
		}
		if i >= tries*50 {
			t.Fatalf("no place freed: %q", line)
		}
		c.conn.Close()
	}
}
