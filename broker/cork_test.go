package broker

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// countConn counts the writes that reach the socket and keeps what they
// carried.
type countConn struct {
	net.Conn
	mu     sync.Mutex
	writes int
	data   bytes.Buffer
	fail   error
}

func (c *countConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail != nil {
		return 0, c.fail
	}
	c.writes++
	c.data.Write(p)
	return len(p), nil
}

func (c *countConn) Close() error { return nil }

func (c *countConn) state() (int, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes, c.data.String()
}

// TestCorkGathersABatch: uncorked, every write goes out as it comes;
// corked, the batch goes out in one write when it ends, in order.
func TestCorkGathersABatch(t *testing.T) {
	raw := &countConn{}
	c := newCorkConn(raw)
	io.WriteString(c, "a")
	if n, _ := raw.state(); n != 1 {
		t.Fatalf("uncorked write: %d writes, want 1", n)
	}
	c.cork()
	for _, s := range []string{"b", "c", "d"} {
		io.WriteString(c, s)
	}
	if n, _ := raw.state(); n != 1 {
		t.Fatalf("corked writes reached the socket: %d writes", n)
	}
	if err := c.uncork(); err != nil {
		t.Fatal(err)
	}
	if n, data := raw.state(); n != 2 || data != "abcd" {
		t.Fatalf("after the batch: %d writes carrying %q, want 2 carrying abcd", n, data)
	}
	// A large batch goes out every corkMax octets.
	c.cork()
	chunk := bytes.Repeat([]byte("x"), 4096)
	for i := 0; i < corkMax/len(chunk)*2; i++ {
		c.Write(chunk)
	}
	if n, _ := raw.state(); n != 4 {
		t.Fatalf("corked %d KiB: %d writes, want 4 (2 of corkMax, uncorked)", 2*corkMax>>10, n)
	}
	c.uncork()
}

// TestCorkBoundsTheDelay: what is written while a batch stays open (a
// heartbeat while a worker publishes) reaches the socket after corkDelay,
// not when the batch ends.
func TestCorkBoundsTheDelay(t *testing.T) {
	raw := &countConn{}
	c := newCorkConn(raw)
	c.cork()
	defer c.uncork()
	io.WriteString(c, "heartbeat")
	deadline := time.Now().Add(5 * time.Second) // far above corkDelay: a loaded machine
	for {
		if _, data := raw.state(); data == "heartbeat" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("a write in an open batch never reached the socket")
		}
		time.Sleep(corkDelay)
	}
}

// TestCorkWriteFailureSticks: a gathered write that fails fails every
// later one, so that amqp091-go learns the connection is gone.
func TestCorkWriteFailureSticks(t *testing.T) {
	broken := errors.New("broken pipe")
	raw := &countConn{fail: broken}
	c := newCorkConn(raw)
	c.cork()
	if _, err := io.WriteString(c, "lost"); err != nil {
		t.Fatalf("corked write: %v", err)
	}
	if err := c.uncork(); !errors.Is(err, broken) {
		t.Fatalf("uncork: %v, want %v", err, broken)
	}
	raw.mu.Lock()
	raw.fail = nil
	raw.mu.Unlock()
	if _, err := io.WriteString(c, "later"); !errors.Is(err, broken) {
		t.Fatalf("write after the failure: %v, want %v", err, broken)
	}
}
