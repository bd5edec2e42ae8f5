package broker

import (
	"net"
	"sync"
	"time"
)

// corkConn is the AMQP connection's socket as amqp091-go writes to it.
// amqp091-go flushes its buffer after every publish, one write(2) each;
// while a worker publishes a batch (worker.fill) the socket is corked:
// writes are gathered and go out in one when the batch ends (uncork),
// when corkMax octets are waiting, or at the latest corkDelay after the
// first of them, so that nothing amqp091-go writes meanwhile (a
// heartbeat, another worker's publish, a channel close) waits longer than
// corkDelay. RabbitMQ's work per message is the same either way
// (bench/factors.md: 32 publishes per write changed nothing for it); what
// falls is lsmtp's system calls per message.
type corkConn struct {
	net.Conn

	mu    sync.Mutex
	buf   []byte
	corks int   // batches open
	armed bool  // timer set for what waits in buf
	err   error // the write that failed: every later one fails too
	timer *time.Timer
}

const (
	// corkDelay bounds how long a write waits in a corked socket.
	corkDelay = time.Millisecond
	// corkMax is the most octets gathered before they are written.
	corkMax = 64 << 10
)

// corking turns corkConn's gathering on; off, it writes through (for the
// benchmark that compares the two).
var corking = true

func newCorkConn(c net.Conn) *corkConn {
	cc := &corkConn{Conn: c}
	cc.timer = time.AfterFunc(time.Hour, cc.expired)
	cc.timer.Stop()
	return cc
}

// Write gathers p while a batch is open, else writes it (after what
// waits, if anything does: the stream keeps its order).
func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if c.corks == 0 && len(c.buf) == 0 {
		return c.Conn.Write(p)
	}
	c.buf = append(c.buf, p...)
	if c.corks == 0 || len(c.buf) >= corkMax {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if !c.armed {
		c.armed = true
		c.timer.Reset(corkDelay)
	}
	return len(p), nil
}

// cork opens a batch.
func (c *corkConn) cork() {
	if !corking {
		return
	}
	c.mu.Lock()
	c.corks++
	c.mu.Unlock()
}

// uncork closes a batch and writes everything gathered.
func (c *corkConn) uncork() error {
	if !corking {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corks--
	return c.flushLocked()
}

func (c *corkConn) expired() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.armed = false
	_ = c.flushLocked()
}

// flushLocked writes what waits. A write that fails closes the socket:
// amqp091-go, which was told its frames were written, then learns from
// its reader that the connection is gone, and every unconfirmed message
// is published again on the next one.
func (c *corkConn) flushLocked() error {
	if c.armed {
		c.timer.Stop()
		c.armed = false
	}
	if c.err != nil || len(c.buf) == 0 {
		return c.err
	}
	_, err := c.Conn.Write(c.buf)
	if cap(c.buf) > 2*corkMax {
		c.buf = nil // a large message passed: do not keep its buffer
	} else {
		c.buf = c.buf[:0]
	}
	if err != nil {
		c.err = err
		c.Conn.Close()
	}
	return err
}
