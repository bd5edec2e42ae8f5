package metrics_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestHotPathDoesNotImportClientGolang keeps Prometheus out of the packages
// that count: they count with atomics, and only this package, at scrape
// time, turns the counts into metrics.
func TestHotPathDoesNotImportClientGolang(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	for _, pkg := range []string{"github.com/lsmtp/lsmtp/engine", "github.com/lsmtp/lsmtp/broker", "github.com/lsmtp/lsmtp/codec"} {
		out, err := exec.Command("go", "list", "-deps", pkg).Output()
		if err != nil {
			t.Skipf("go list %s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			if strings.HasPrefix(dep, "github.com/prometheus/") {
				t.Errorf("%s depends on %s: the hot path must not touch client_golang", pkg, dep)
			}
		}
	}
}
