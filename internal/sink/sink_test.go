package sink

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/lsmtp/lsmtp/codec"
)

// TestReply: a sink's own 4xx stands; anything else, a 5xx included, is
// 451 4.3.0, so that our trouble never bounces the sender's mail.
func TestReply(t *testing.T) {
	own := &codec.Reply{Code: 452, Enhanced: "4.3.1", Text: "Queue full"}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{ErrBusy, "451 4.3.2 System busy, try again later"},
		{ErrShuttingDown, "421 4.3.2 Service shutting down, try again later"},
		{own, "452 4.3.1 Queue full"},
		{&codec.Reply{Code: 554, Enhanced: "5.0.0", Text: "no"}, "451 4.3.0 Temporary failure storing the message, try again later"},
		{&codec.Reply{Code: 250, Enhanced: "2.0.0", Text: "fine"}, "451 4.3.0 Temporary failure storing the message, try again later"},
		{errors.New("connection reset"), "451 4.3.0 Temporary failure storing the message, try again later"},
		{fmt.Errorf("wrapped: %w", ErrBusy), "451 4.3.0 Temporary failure storing the message, try again later"},
	} {
		if got := string(Reply(tc.err).AppendTo(nil)); got != tc.want+"\r\n" {
			t.Errorf("Reply(%v) = %q, want %q", tc.err, got, tc.want+"\r\n")
		}
	}
}

func TestAppendQueued(t *testing.T) {
	if got, want := string(AppendQueued([]byte("x"), "QID1")), "x250 2.0.0 OK queued as QID1\r\n"; got != want {
		t.Fatalf("AppendQueued = %q, want %q", got, want)
	}
}

// TestAppendTrace: the trace fields byte for byte, the X-Lsmtp-Envelope
// field folded only when it would pass 78 octets, and a control
// character in an address (which the engine never lets through) unable
// to start a field of its own.
func TestAppendTrace(t *testing.T) {
	m := &Message{Sender: []byte("a@example.org"), ClientPort: 50123, Size: 2048, Body: Body8BitMIME}
	got := string(AppendTrace(nil, m, [][]byte{[]byte("b@example.com"), []byte("jörg@bücher.example")}))
	want := "Return-Path: <a@example.org>\r\n" +
		"X-Original-To: b@example.com\r\n" +
		"X-Original-To: jörg@bücher.example\r\n" +
		"X-Lsmtp-Envelope: port=50123; size=2048; body=8BITMIME; smtputf8=no\r\n"
	if got != want {
		t.Errorf("AppendTrace =\n%q\nwant\n%q", got, want)
	}
	if got := string(AppendReturnPath(nil, nil)); got != "Return-Path: <>\r\n" {
		t.Errorf("null sender: %q", got)
	}
	long := string(AppendEnvelope(nil, 65535, 1<<62, BodyBinaryMIME, true))
	if want := "X-Lsmtp-Envelope: port=65535; size=4611686018427387904;\r\n\tbody=BINARYMIME; smtputf8=yes\r\n"; long != want {
		t.Errorf("long envelope field %q, want %q", long, want)
	}
	for _, line := range strings.Split(long, "\r\n") {
		if len(line) > 78 {
			t.Errorf("line of %d octets: %q", len(line), line)
		}
	}
	if got := string(AppendOriginalTo(nil, []byte("x\r\nBcc: y@z"))); got != "X-Original-To: x??Bcc: y@z\r\n" {
		t.Errorf("control characters: %q", got)
	}
}
