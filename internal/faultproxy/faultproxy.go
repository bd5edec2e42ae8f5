// Package faultproxy is a TCP proxy for tests that puts faults between a
// client and a server on the loopback: refuse connections (Down), cut the
// open ones (Cut), or stop forwarding bytes while keeping the connections
// open (Stall; HoldReplies for the server's direction alone). The chaos
// tests use it between lsmtp and RabbitMQ.
package faultproxy

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards every connection accepted on Addr to the target.
type Proxy struct {
	target string
	addr   string

	mu    sync.Mutex
	ln    net.Listener
	conns map[*link]struct{}
	gate  chan struct{} // non-nil while stalled; closed by Resume
	// replies is gate for the server-to-client direction alone
	// (HoldReplies); closed by Resume.
	replies chan struct{}
	closed  bool

	accepted atomic.Int64
	wg       sync.WaitGroup
}

// link is one proxied connection: the client side and the server side.
type link struct {
	client, server net.Conn
	once           sync.Once
	done           chan struct{}
}

func (l *link) close() {
	l.once.Do(func() {
		close(l.done)
		l.client.Close()
		l.server.Close()
	})
}

// New starts a proxy to target (host:port) on a free loopback port.
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	p := &Proxy{target: target, addr: ln.Addr().String(), conns: map[*link]struct{}{}}
	p.serve(ln)
	return p, nil
}

// TB is the part of testing.TB that ForTest uses.
type TB interface {
	Helper()
	Fatal(args ...any)
	Cleanup(func())
}

// ForTest is New(target) for a test: it fails t when the proxy cannot
// listen, and closes the proxy when t ends.
func ForTest(t TB, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// Addr is the host:port clients connect to; it stays the same across Down and Up.
func (p *Proxy) Addr() string { return p.addr }

// Accepted counts the connections accepted so far.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Conns is the number of connections open right now.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

func (p *Proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return // listener closed by Down or Close
			}
			p.accepted.Add(1)
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.handle(c)
			}()
		}
	}()
}

func (p *Proxy) handle(client net.Conn) {
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		client.Close()
		return
	}
	l := &link{client: client, server: server, done: make(chan struct{})}
	p.mu.Lock()
	if p.closed || p.ln == nil {
		p.mu.Unlock()
		l.close()
		return
	}
	p.conns[l] = struct{}{}
	p.mu.Unlock()

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(l, server, client, false) }()
	go func() { defer wg.Done(); p.pipe(l, client, server, true) }()
	wg.Wait()
	l.close()
	p.mu.Lock()
	delete(p.conns, l)
	p.mu.Unlock()
}

// pipe copies src to dst, holding each chunk while the proxy is stalled.
// toClient says src is the server.
func (p *Proxy) pipe(l *link, dst, src net.Conn, toClient bool) {
	defer l.close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.waitGate(l, toClient) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			// EOF or error on either side ends both directions: the
			// protocols proxied here do not half-close.
			return
		}
	}
}

func (p *Proxy) waitGate(l *link, toClient bool) bool {
	for {
		p.mu.Lock()
		g := p.gate
		if g == nil && toClient {
			g = p.replies
		}
		p.mu.Unlock()
		if g == nil {
			return true
		}
		select {
		case <-g:
		case <-l.done:
			return false
		}
	}
}

// Cut closes every open connection (both sides) and returns how many; new
// connections are still accepted.
func (p *Proxy) Cut() int {
	p.mu.Lock()
	links := make([]*link, 0, len(p.conns))
	for l := range p.conns {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.close()
	}
	return len(links)
}

// Down stops listening (new connections are refused) and cuts the open ones.
func (p *Proxy) Down() {
	p.mu.Lock()
	ln := p.ln
	p.ln = nil
	p.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	p.Cut()
}

// Up listens again on the same address after Down.
func (p *Proxy) Up() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return errors.New("faultproxy: closed")
	}
	up := p.ln != nil
	p.mu.Unlock()
	if up {
		return nil
	}
	var err error
	for i := 0; i < 50; i++ {
		var ln net.Listener
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			p.serve(ln)
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("faultproxy: listen again on %s: %w", p.addr, err)
}

// Stall stops forwarding in both directions; connections stay open, so the
// peers see a silent network until Resume.
func (p *Proxy) Stall() {
	p.mu.Lock()
	if p.gate == nil {
		p.gate = make(chan struct{})
	}
	p.mu.Unlock()
}

// HoldReplies stops forwarding what the server sends, and only that:
// the client's requests still reach the server, which acts on them, but
// no answer comes back until Resume (or a Cut, which loses them).
func (p *Proxy) HoldReplies() {
	p.mu.Lock()
	if p.replies == nil {
		p.replies = make(chan struct{})
	}
	p.mu.Unlock()
}

// Resume forwards again what Stall or HoldReplies held.
func (p *Proxy) Resume() {
	p.mu.Lock()
	if p.gate != nil {
		close(p.gate)
		p.gate = nil
	}
	if p.replies != nil {
		close(p.replies)
		p.replies = nil
	}
	p.mu.Unlock()
}

// Close stops the proxy and waits for its goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.Resume()
	p.Down()
	p.wg.Wait()
	return nil
}
