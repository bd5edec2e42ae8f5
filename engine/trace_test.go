package engine

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/lsmtp/lsmtp/internal/sink"
)

// traceSink asks for trace fields and keeps what it was handed.
type traceSink struct {
	srv      *atomic.Pointer[Server]
	data     []string
	traceLen []int
	held     []int64 // the in-flight octets counted when the message arrived
}

func (s *traceSink) Limits() sink.Limits { return sink.Limits{TraceFields: true} }
func (s *traceSink) Submit(m *sink.Message) {
	s.data = append(s.data, string(m.Data.B))
	s.traceLen = append(s.traceLen, m.TraceLen)
	if srv := s.srv.Load(); srv != nil {
		s.held = append(s.held, srv.stats.InFlightBytes.Load())
	}
	m.ReleaseData()
	m.Done.Complete(m, nil)
}
func (*traceSink) Close(context.Context) error { return nil }

// TestTraceFields: for a sink that asks for them, the engine writes the
// envelope's trace fields above its Received: header, for DATA and BDAT
// alike, says how long they are (TraceLen), and counts them in the
// in-flight budget with the body.
func TestTraceFields(t *testing.T) {
	var srv atomic.Pointer[Server]
	sk := &traceSink{srv: &srv}
	h := newMemHarness(t, Config{Sink: sk}, false)
	srv.Store(h.srv)
	port := h.sess.remote.Port()
	h.pass([]byte("EHLO c.test\r\nMAIL FROM:<a@b.test> SIZE=12 BODY=8BITMIME\r\nRCPT TO:<x@one.test>\r\nRCPT TO:<Y@two.test>\r\nDATA\r\nSubject: 1\r\n\r\n.\r\n" +
		"MAIL FROM:<> SMTPUTF8\r\nRCPT TO:<ü@drei.test>\r\nBDAT 6 LAST\r\nhi\r\n\r\n"))
	if len(sk.data) != 2 {
		t.Fatalf("%d messages, want 2; transcript %q", len(sk.data), h.transcript)
	}
	want := []string{
		"Return-Path: <a@b.test>\r\nX-Original-To: x@one.test\r\nX-Original-To: Y@two.test\r\n" +
			"X-Lsmtp-Envelope: port=" + strconv.Itoa(int(port)) + "; size=12; body=8BITMIME; smtputf8=no\r\n",
		"Return-Path: <>\r\nX-Original-To: ü@drei.test\r\n" +
			"X-Lsmtp-Envelope: port=" + strconv.Itoa(int(port)) + "; size=0; body=7BIT; smtputf8=yes\r\n",
	}
	contents := []string{"Subject: 1\r\n\r\n", "hi\r\n\r\n"}
	for i, d := range sk.data {
		if !strings.HasPrefix(d, want[i]) || sk.traceLen[i] != len(want[i]) {
			t.Errorf("message %d: TraceLen %d, starts\n%q\nwant %d and\n%q", i, sk.traceLen[i], d[:min(len(d), len(want[i])+20)], len(want[i]), want[i])
			continue
		}
		if !strings.HasPrefix(d[sk.traceLen[i]:], "Received: from c.test") || !strings.HasSuffix(d, contents[i]) {
			t.Errorf("message %d: after the trace fields %q", i, d[sk.traceLen[i]:])
		}
		if sk.held[i] != int64(len(d)) {
			t.Errorf("message %d: %d octets held, want %d (trace fields, Received:, body)", i, sk.held[i], len(d))
		}
	}
}
