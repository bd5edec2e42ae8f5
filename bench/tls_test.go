package bench

import (
	"bufio"
	"strings"
	"testing"
)

// TestTLSReportRows: the section puts each server's median in its
// column, and the two ratios the targets read.
func TestTLSReportRows(t *testing.T) {
	rep := &TLSReport{Config: TLSConfig{Pairs: 2}, Loads: tlsLoads(), Runs: map[string]map[string]map[string][]TLSRun{
		TLSMsg100: {
			PeerLsmtp:  {TLSModePlain: {{Rate: 40000, Count: 1, ServerCPUus: 10}, {Rate: 44000, Count: 1, ServerCPUus: 12}}, TLSModeTLS: {{Rate: 30000, Count: 1, ServerCPUus: 14}, {Rate: 30800, Count: 1, ServerCPUus: 16}}},
			PeerBridge: {TLSModePlain: {{Rate: 20000, Count: 1}, {Rate: 20000, Count: 1}}, TLSModeTLS: {{Rate: 15000, Count: 1}, {Rate: 15400, Count: 1}}},
		},
	}}
	rep.Config.setDefaults()
	md := rep.Markdown()
	for _, want := range []string{
		"| msg/s, 100 per connection | 42,000 (40,000–44,000) | 30,400 (30,000–30,800) | **0.72** (0.70–0.75) | 20,000 | 15,200 (15,000–15,400) | **2.00** (2.00–2.00) |",
		"| server CPU µs per message, 100 per connection | 11.0 (10.0–12.0) | 15.0 (14.0–16.0) | **1.36** (1.33–1.40) |",
		"TLS at 100 messages per connection ÷ plaintext **0.72** (0.70–0.75) (target ≥ 0.7)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("section lacks\n%s\nin\n%s", want, md)
		}
	}
}

func TestExpectCodesReadsMultilineReplies(t *testing.T) {
	r := bufio.NewReader(strings.NewReader("250-mx\r\n250-PIPELINING\r\n250 SIZE\r\n354 go\r\n421 bye\r\n"))
	if err := expectCodes(r, "250", "354"); err != nil {
		t.Fatal(err)
	}
	if err := expectCodes(r, "250"); err == nil || !strings.Contains(err.Error(), "421 bye") {
		t.Fatalf("got %v, want the 421 named", err)
	}
}
