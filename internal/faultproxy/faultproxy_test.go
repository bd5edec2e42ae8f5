package faultproxy

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"
)

// echoServer answers every line with the same line.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(c net.Conn, r *bufio.Reader, line string) (string, error) {
	c.SetDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		return "", err
	}
	got, err := r.ReadString('\n')
	return got, err
}

func TestProxyFaults(t *testing.T) {
	p, err := New(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	if got, err := roundTrip(c, r, "hello"); err != nil || got != "hello\n" {
		t.Fatalf("through the proxy: %q, %v", got, err)
	}

	p.Stall()
	if got, err := roundTrip(c, r, "held"); err == nil {
		t.Fatalf("stalled proxy forwarded %q", got)
	}
	p.Resume()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if got, err := r.ReadString('\n'); err != nil || got != "held\n" {
		t.Fatalf("after Resume: %q, %v", got, err)
	}

	if n := p.Cut(); n != 1 {
		t.Fatalf("Cut closed %d connections, want 1", n)
	}
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("connection still open after Cut")
	}
	c.Close()

	p.Down()
	if c, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatal("connect succeeded while Down")
	}
	if err := p.Up(); err != nil {
		t.Fatal(err)
	}
	c, err = net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r = bufio.NewReader(c)
	if got, err := roundTrip(c, r, "again"); err != nil || got != "again\n" {
		t.Fatalf("after Up: %q, %v", got, err)
	}
	if got := p.Accepted(); got != 2 {
		t.Fatalf("Accepted = %d, want 2", got)
	}
}

// TestHoldReplies: the client's bytes still reach the server, which acts
// on them; only its answers wait for Resume.
func TestHoldReplies(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	seen := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			seen <- line
			c.Write([]byte(line))
		}
	}()
	p, err := New(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	p.HoldReplies()
	if got, err := roundTrip(c, r, "request"); err == nil {
		t.Fatalf("held reply came through: %q", got)
	}
	select {
	case line := <-seen:
		if line != "request\n" {
			t.Fatalf("server got %q", line)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the request did not reach the server")
	}
	p.Resume()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if got, err := r.ReadString('\n'); err != nil || got != "request\n" {
		t.Fatalf("after Resume: %q, %v", got, err)
	}
}
