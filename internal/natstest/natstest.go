// Package natstest holds what tests that talk to the real NATS JetStream
// server share: its address, a unique stream and subject per test
// (deleted when the test ends), a JetStream context for setting up and
// inspecting them, a reader of what a stream holds, and a fault proxy in
// front of the server.
package natstest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/lsmtp/lsmtp/internal/faultproxy"
)

const (
	// Addr is the NATS server with JetStream the tests use.
	Addr = "127.0.0.1:4222"
	// URL is Addr as a NATS URL.
	URL = "nats://" + Addr
)

// Names are a test's stream and subject prefix.
type Names struct {
	Stream  string // letters, digits, '_' and '-'
	Subject string // "lsmtptest.<random>", a prefix of the test's subjects
}

// Unique returns a stream name and a subject prefix no other test uses,
// and deletes the stream when the test ends (whoever created it).
func Unique(t testing.TB) Names {
	t.Helper()
	n := strings.NewReplacer("/", "_", " ", "_", ".", "_", "*", "_", ">", "_").Replace(t.Name())
	if len(n) > 40 {
		n = n[:40]
	}
	r := rand.Uint32()
	names := Names{Stream: fmt.Sprintf("lsmtptest_%s_%08x", n, r), Subject: fmt.Sprintf("lsmtptest.%08x", r)}
	t.Cleanup(func() {
		js := JetStream(t)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := js.DeleteStream(ctx, names.Stream); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Logf("delete stream %s: %v", names.Stream, err)
		}
	})
	return names
}

// JetStream is a JetStream context on a connection of its own, closed
// when the test ends.
func JetStream(t testing.TB) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(URL, nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("NATS at %s is needed for this test: %v", Addr, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// CreateStream creates a file stream taking subjects, with a duplicate
// window of two minutes and maxBytes (0: no limit, else discard new).
func CreateStream(t testing.TB, name string, maxBytes int64, subjects ...string) {
	t.Helper()
	cfg := jetstream.StreamConfig{Name: name, Subjects: subjects, Storage: jetstream.FileStorage,
		Duplicates: 2 * time.Minute, Discard: jetstream.DiscardNew, MaxBytes: -1}
	if maxBytes > 0 {
		cfg.MaxBytes = maxBytes
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := JetStream(t).CreateStream(ctx, cfg); err != nil {
		t.Fatalf("create stream %s: %v", name, err)
	}
}

// Messages returns every message stream holds, in sequence order.
func Messages(t testing.TB, stream string) []*jetstream.RawStreamMsg {
	t.Helper()
	js := JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// One request per message: a deadline for each, not for all (a load
	// test's ten thousand take longer than ten seconds under -race).
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		mctx, mcancel := context.WithTimeout(context.Background(), 5*time.Second)
		m, err := s.GetMsg(mctx, seq)
		mcancel()
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("get message %d of %s: %v", seq, stream, err)
		}
		out = append(out, m)
	}
	return out
}

// Count is how many messages stream holds.
func Count(t testing.TB, stream string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := JetStream(t).Stream(ctx, stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// Proxy is a fault-injecting proxy in front of the test NATS server,
// closed when the test ends.
func Proxy(t testing.TB) *faultproxy.Proxy {
	t.Helper()
	return faultproxy.ForTest(t, Addr)
}

// ProxyURL is the NATS URL of the server through p.
func ProxyURL(p *faultproxy.Proxy) string { return "nats://" + p.Addr() }

// Server starts a nats-server of the test's own with JetStream and the
// configuration lines conf (for settings the shared server cannot have,
// such as a small max_payload), and returns its URL; it is stopped when
// the test ends. The test is skipped where nats-server is not installed
// (tools/nats-up installs it for make test).
func Server(t testing.TB, conf string) string {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nats-server"); serr != nil {
			t.Skip("nats-server not installed")
		}
		bin = "/usr/sbin/nats-server"
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	file := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(file, []byte(conf+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(bin, "-c", file, "-a", "127.0.0.1", "-p", port, "-js", "-sd", filepath.Join(dir, "js"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return "nats://" + addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server on %s did not start: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
