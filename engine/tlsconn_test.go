package engine

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

// TestTLSIdleTimeout: a TLS session's timeout is its read deadline,
// which moves only when it must (rearm): a session that keeps talking
// past IdleTimeout stays, one that goes quiet gets its 421 4.4.2 on
// time, in DATA too (DataTimeout).
func TestTLSIdleTimeout(t *testing.T) {
	const idle = 400 * time.Millisecond
	ts := startTLSServer(t, Config{IdleTimeout: idle, DataTimeout: idle})
	c := dialTLS(t, ts.implicit, ts.clientTLS())
	c.do("EHLO client.test", "250 ")
	// The silence is timed from before the last send: the server reads
	// it after that, so its deadline cannot come sooner than idle from
	// then (from the reply's arrival it can, by the reply's trip).
	var quiet time.Time
	for range 8 { // 800 ms of commands 100 ms apart
		time.Sleep(100 * time.Millisecond)
		quiet = time.Now()
		c.do("NOOP", "250 ")
	}
	c.expect("421 4.4.2")
	if waited := time.Since(quiet); waited < idle || waited > idle+time.Second {
		t.Errorf("421 after %v of silence, want %v (and never a second late)", waited, idle)
	}
	c.expectClosed()

	c = dialTLS(t, ts.implicit, ts.clientTLS())
	c.do("EHLO client.test", "250 ")
	c.do("MAIL FROM:<a@client.test>", "250 ")
	c.do("RCPT TO:<b@mx.test>", "250 ")
	c.do("DATA", "354 ")
	for range 6 {
		time.Sleep(100 * time.Millisecond)
		quiet = time.Now()
		c.send("a line of the body\r\n")
	}
	c.expect("421 4.4.2")
	if waited := time.Since(quiet); waited < idle || waited > idle+time.Second {
		t.Errorf("421 inside DATA after %v of silence, want %v", waited, idle)
	}
}

func TestRearm(t *testing.T) {
	const s = int64(time.Second)
	for _, tc := range []struct {
		name             string
		armed, want, now int64
		rearm            bool
	}{
		{"nothing armed", 0, 10 * s, 1, true},
		{"armed one passed", 5 * s, 10 * s, 6 * s, true},
		{"same", 10 * s, 10 * s, 1, false},
		{"later by less than a second", 10 * s, 10*s + s/2, 1, false},
		{"later by a second", 10 * s, 11 * s, 1, true},
		{"earlier", 10 * s, 9 * s, 1, true},
		{"none wanted: the armed one fires and is moved then", 10 * s, 0, 1, false},
	} {
		if got := rearm(tc.armed, tc.want, tc.now); got != tc.rearm {
			t.Errorf("%s: rearm %v, want %v", tc.name, got, tc.rearm)
		}
	}
}

// TestTLSBodyBuffer: a body that fills the initial input buffer is read
// into a record-sized one, DATA and BDAT alike; the octets are the ones
// sent, and once the body is read the buffer goes back: the session
// buffers are charged what they were before (a body buffer held counts
// 12 KiB).
func TestTLSBodyBuffer(t *testing.T) {
	ts := startTLSServer(t, Config{})
	c := dialTLS(t, ts.implicit, ts.clientTLS())
	c.do("EHLO client.test", "250 ")
	c.do("NOOP", "250 ")
	base := ts.srv.Stats().SessionBuffers.Load() // the reply array
	var body bytes.Buffer
	for i := 0; body.Len() < 200<<10; i++ {
		fmt.Fprintf(&body, "line %06d of a body that spans many TLS records\r\n", i)
	}
	want := body.Bytes()
	for i, bdat := range []bool{false, true} {
		c.do("MAIL FROM:<a@client.test>", "250 ")
		c.do("RCPT TO:<b@mx.test>", "250 ")
		if bdat {
			c.send(fmt.Sprintf("BDAT %d LAST\r\n", len(want)))
			c.send(string(want))
		} else {
			c.do("DATA", "354 ")
			c.send(string(want) + ".\r\n")
		}
		c.expect("250 2.0.0")
		m := waitMessages(t, ts.rec, i+1)[i]
		if m.Content() != string(want) {
			t.Fatalf("bdat %v: %d octets stored, want the %d sent", bdat, len(m.Content()), len(want))
		}
		c.do("NOOP", "250 ")
		waitFor(t, func() bool { return ts.srv.Stats().SessionBuffers.Load() == base })
	}
	c.do("QUIT", "221 ")
}
