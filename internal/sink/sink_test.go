package sink

import (
	"errors"
	"fmt"
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
