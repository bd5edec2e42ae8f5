package engine

import (
	"testing"
	"time"
)

// Two connections from the load balancer open before either has sent its
// PROXY header: each is for a different client, so neither is over the
// per-IP limit of 1.
func TestProxyConnectionsAwaitingHeadersDoNotCountAgainstTheProxy(t *testing.T) {
	_, addr := startServer(t, Config{TrustedProxies: loopbackProxies(), MaxConnsPerIP: 1})
	a := dialNoGreeting(t, addr)
	b := dialNoGreeting(t, addr)
	time.Sleep(100 * time.Millisecond) // both accepted before the headers come
	a.send("PROXY TCP4 192.0.2.1 127.0.0.1 1000 25\r\n")
	a.expect("220 ")
	b.send("PROXY TCP4 192.0.2.2 127.0.0.1 1000 25\r\n")
	b.expect("220 ")
}
