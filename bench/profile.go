package bench

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Profiles are the files a capture wrote.
type Profiles struct {
	CPU    string // CPU profile over the window
	Allocs string // allocations made during the window (delta profile)
}

// CaptureProfiles fetches, in the background, a CPU profile and an
// allocation delta profile lasting d from lsmtp's admin listener (its
// /debug/pprof/ handlers), into dir/name-cpu.pprof and dir/name-allocs.pprof.
// The returned function waits for both.
func CaptureProfiles(admin, dir, name string, d time.Duration) func() (Profiles, error) {
	secs := max(int(d/time.Second), 1)
	p := Profiles{
		CPU:    filepath.Join(dir, name+"-cpu.pprof"),
		Allocs: filepath.Join(dir, name+"-allocs.pprof"),
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	fetch := func(i int, path, file string) {
		defer wg.Done()
		errs[i] = fetchTo(fmt.Sprintf("http://%s/debug/pprof/%s?seconds=%d", admin, path, secs), file, d+30*time.Second)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return func() (Profiles, error) { return p, err }
	}
	wg.Add(2)
	go fetch(0, "profile", p.CPU)
	go fetch(1, "allocs", p.Allocs)
	return func() (Profiles, error) {
		wg.Wait()
		return p, errors.Join(errs...)
	}
}

func fetchTo(url, file string, timeout time.Duration) error {
	client := &http.Client{Timeout: timeout}
	resp, err := client.Get(url)
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("profile %s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("profile %s: %w", url, err)
	}
	return f.Close()
}

// TopProfile is `go tool pprof -top` of a profile: the n heaviest
// functions by their own (flat) cost, with sample_index picking the value
// (e.g. "alloc_space" for an allocation profile, "" for the default).
func TopProfile(binary, profile, sampleIndex string, n int) (string, error) {
	args := []string{"tool", "pprof", "-top", fmt.Sprintf("-nodecount=%d", n)}
	if sampleIndex != "" {
		args = append(args, "-sample_index="+sampleIndex)
	}
	args = append(args, binary, profile)
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go tool pprof: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// TopCumulative is like TopProfile sorted by cumulative cost: the call
// paths time is spent under.
func TopCumulative(binary, profile string, n int) (string, error) {
	out, err := exec.Command("go", "tool", "pprof", "-top", "-cum", fmt.Sprintf("-nodecount=%d", n), binary, profile).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go tool pprof: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
