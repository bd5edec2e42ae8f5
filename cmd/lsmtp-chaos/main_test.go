package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestUsageErrors: bad command lines exit 2 with the reason, before
// anything is started (no RabbitMQ needed).
func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--faults", "cut,reboot"}, `unknown fault "reboot"`},
		{[]string{"--sessions", "0"}, "sessions 0"},
		{[]string{"--duration", "-1s"}, "duration must be positive"},
		{[]string{"extra"}, `unexpected argument "extra"`},
		{[]string{"--no-such-flag"}, "flag provided but not defined"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(tc.args, &stdout, &stderr); code != 2 {
			t.Errorf("%v: exit %d, want 2", tc.args, code)
		}
		if !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: stderr %q, want it to say %q", tc.args, stderr.String(), tc.want)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"--help"}, &stdout, &stderr); code != 0 || !strings.Contains(stderr.String(), "-fault-interval") {
		t.Errorf("--help: exit %d, %q", code, stderr.String())
	}
}
