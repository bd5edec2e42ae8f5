package engine

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/sink"
)

func TestDefaultsAreValid(t *testing.T) {
	d := Defaults
	if warnings, err := d.Validate(); err != nil || len(warnings) > 0 {
		t.Errorf("Defaults: warnings %q, err %v", warnings, err)
	}
	got, err := Config{Sink: &sink.Null{}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	// Zero means no limit for these two: New does not put the defaults in.
	if got.MaxConns != 0 || got.MaxConnsPerIP != 0 || got.MaxRecipients != Defaults.MaxRecipients || got.TickInterval != defaultTick {
		t.Errorf("withDefaults: MaxConns %d, MaxConnsPerIP %d, MaxRecipients %d, TickInterval %v",
			got.MaxConns, got.MaxConnsPerIP, got.MaxRecipients, got.TickInterval)
	}
}

// TestValidateNamesTheField: every problem starts with "engine: Field: ",
// which lets the command name the option that set it.
func TestValidateNamesTheField(t *testing.T) {
	cases := []struct {
		edit func(*Config)
		want string
	}{
		{func(c *Config) { c.Listen = nil }, "engine: Listen: no address to listen on"},
		{func(c *Config) { c.Listen = []string{"127.0.0.1"} }, `engine: Listen: "127.0.0.1": want host:port`},
		{func(c *Config) { c.Hostname = "mx example" }, `engine: Hostname: "mx example" cannot stand in a greeting`},
		{func(c *Config) { c.Hostname = "mx.example\r\n" }, "engine: Hostname:"},
		{func(c *Config) { c.Hostname = strings.Repeat("a", 256) }, "engine: Hostname:"},
		{func(c *Config) { c.MaxRecipients = 0 }, "engine: MaxRecipients: must be more than 0"},
		{func(c *Config) { c.DataTimeout = -time.Second }, "engine: DataTimeout: must be more than 0"},
		{func(c *Config) { c.MaxConns = -1 }, "engine: MaxConns: must not be negative"},
		{func(c *Config) { c.MaxLineLength = 100 }, "engine: MaxLineLength: 100 is below the 512 octets"},
		{func(c *Config) { c.MaxPipelineBacklog = 2 << 30 }, "engine: MaxPipelineBacklog: 2G: at most 1G"},
		{func(c *Config) { c.MaxSessionBuffers = -1 }, "engine: MaxSessionBuffers: must be more than 0"},
		{func(c *Config) { c.XclientFrom = []netip.Prefix{netip.MustParsePrefix("::/0")} }, "engine: XclientFrom: ::/0 trusts every address"},
		{func(c *Config) { c.XclientFrom = []netip.Prefix{{}} }, "engine: XclientFrom: invalid Prefix is not a CIDR prefix"},
	}
	for _, tc := range cases {
		c := Defaults
		tc.edit(&c)
		_, err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate: %v, want %q", err, tc.want)
		}
	}
	c := Defaults
	c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	c.XclientFrom = []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}
	if w, err := c.Validate(); err != nil || len(w) != 1 || !strings.HasPrefix(w[0], "engine: XclientFrom: 10.1.0.0/16 overlaps TrustedProxies 10.0.0.0/8") {
		t.Errorf("overlapping XclientFrom: warnings %q, err %v", w, err)
	}
	c = Defaults
	c.MaxRecipients, c.IdleTimeout, c.MaxConns = 5, time.Minute, 10
	warnings, err := c.Validate()
	if err != nil || len(warnings) != 3 || !strings.HasPrefix(warnings[0], "engine: MaxRecipients: 5 is below the 100") {
		t.Errorf("warnings %q, err %v; want three, the first about MaxRecipients", warnings, err)
	}
	c = Defaults
	c.MaxSessionBuffers = 32 << 10
	if warnings, err := c.Validate(); err != nil || len(warnings) != 1 ||
		warnings[0] != "engine: MaxSessionBuffers: 32K is less than MaxPipelineBacklog (64K): one client's backlog could spend it" {
		t.Errorf("warnings %q, err %v; want one about MaxSessionBuffers", warnings, err)
	}
}
