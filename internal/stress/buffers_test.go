package stress

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// TestSessionBufferBudget: many clients pipeline NOOPs and never read a
// reply, against a server that lets each hold 1 MiB of input
// (--max-pipeline-backlog). Without a server-wide bound each would keep
// what it sent, about 1 MiB in gnet's buffers; --max-session-buffers
// closes those that grow past it, so the process's resident memory grows
// by about the budget, not by the clients' number, and a new client is
// served meanwhile.
func TestSessionBufferBudget(t *testing.T) {
	conns, budget := 100, int64(8<<20)
	if full() {
		conns, budget = 1000, 64<<20
	}
	const sent = 900 << 10 // NOOPs per client, under the 1 MiB backlog
	// The budget counts octets; memory holds more. gnet's ring buffers
	// round up to a power of two (×2), a pass over input that wrapped
	// around its ring reads a copy of it (×2), and the heap may grow to
	// twice what is live before a collection (GOGC=100): 8 × budget.
	// Every session may hold its 16 KiB share and one read of 64 KiB when
	// it is closed for going past, with their copies: 256 KiB each. 32
	// MiB for the rest of the runtime. Measured with 100 and 200 clients
	// and 8 MiB: +74 to +85 MiB against a bound of 121 MiB; without the
	// budget +425 MiB for 100 clients (4.25 MiB a client).
	bound := 8*budget + int64(conns)*(256<<10) + 32<<20
	if _, err := RaiseFileLimit(); err != nil {
		t.Fatal(err)
	}
	bin := buildServer(t)
	srv, err := Start(bin, filepath.Join(t.TempDir(), "lsmtp.log"), "--sink", "null",
		"--max-conns", fmt.Sprint(conns+10), "--max-conns-per-ip", "0",
		"--max-pipeline-backlog", "1M", "--max-session-buffers", fmt.Sprint(budget))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	// Warm up: one whole transaction, so that pools and loops are in the
	// figure taken before.
	canary(t, srv.Addr)
	before, err := srv.RSS()
	if err != nil {
		t.Fatal(err)
	}

	// A small receive buffer, set before connecting, keeps the clients'
	// kernels from taking many replies in: the server's own buffers fill.
	d := net.Dialer{Timeout: 10 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10)
		}); err != nil {
			return err
		}
		return serr
	}}
	stream := []byte(strings.Repeat("NOOP\r\n", sent/6))
	clients := make([]net.Conn, 0, conns)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	var wrote sync.WaitGroup
	for i := range conns {
		d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(1+i%200))}
		c, err := d.DialContext(context.Background(), "tcp", srv.Addr)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		clients = append(clients, c)
		wrote.Add(1)
		go func() {
			defer wrote.Done()
			// Ends when the server took it all or closed the connection.
			_ = c.SetWriteDeadline(time.Now().Add(time.Minute))
			_, _ = c.Write(stream)
		}()
	}
	wrote.Wait()
	time.Sleep(500 * time.Millisecond) // the last reads reach the sessions
	canary(t, srv.Addr)
	now, err := srv.RSS()
	if err != nil {
		t.Fatal(err)
	}

	// Which connections the server closed: those read to their end.
	closed := 0
	for _, c := range clients {
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, err := bufio.NewReader(c).WriteTo(discard{})
		var ne net.Error
		if !(errors.As(err, &ne) && ne.Timeout()) {
			closed++
		}
	}
	growth := now - before
	t.Logf("%d clients x %d KiB of NOOPs never read, budget %d MiB: %d closed by the server; RSS %d MiB before, %+d MiB after (bound %d MiB)",
		conns, sent>>10, budget>>20, closed, before>>20, growth>>20, bound>>20)
	if closed == 0 || closed == conns {
		t.Fatalf("%d of %d connections closed: the budget did not choose", closed, conns)
	}
	if growth > bound {
		t.Fatalf("RSS grew %d MiB, bound %d MiB", growth>>20, bound>>20)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// canary sends one whole message on a new connection: 250 2.0.0.
func canary(t *testing.T, addr string) {
	t.Helper()
	c, greet, err := smtptest.Dial(addr, 10*time.Second)
	if err != nil || greet.Code != 220 {
		t.Fatalf("canary greeting %q, %v", greet.String(), err)
	}
	defer c.Close()
	if reply, err := Transaction(c, Body(4<<10)); err != nil || reply.Class() != "250 2.0.0" {
		t.Fatalf("canary: %q, %v", reply.String(), err)
	}
}
