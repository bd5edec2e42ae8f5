package policy_test

import (
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/lsmtp/lsmtp/internal/policy"
)

// The server keeps the current Policy in an atomic.Pointer and replaces it
// on reload; event loops load it for each decision.
func Example() {
	var current atomic.Pointer[policy.Policy]
	p, err := policy.New(policy.Config{
		Deny:             []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")},
		ConnRate:         1,
		ConnBurst:        2,
		RecipientDomains: []string{"example.com", ".example.com"},
	})
	if err != nil {
		panic(err)
	}
	current.Store(p)

	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	client := netip.MustParseAddr("192.0.2.7")
	pol := current.Load()
	fmt.Println(pol.ClientAllowed(client), pol.ClientAllowed(netip.MustParseAddr("::ffff:203.0.113.9")))
	fmt.Println(pol.TakeConnection(client, now), pol.TakeConnection(client, now), pol.TakeConnection(client, now))
	fmt.Println(pol.TakeConnection(client, now.Add(time.Second)))
	fmt.Println(pol.RecipientAllowed([]byte("a@MX.Example.com")), pol.RecipientAllowed([]byte("a@example.org")), pol.RecipientAllowed([]byte("Postmaster")))

	// Reload: a new Policy, with full buckets for everyone.
	_, err = policy.New(policy.Config{ConnRate: -1})
	fmt.Println(err)
	// Output:
	// true false
	// true true false
	// true
	// true false true
	// policy: ConnRate: -1 is not a finite number >= 0
}
