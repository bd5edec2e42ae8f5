package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Every connection costs the generator a file descriptor; when the hard
// RLIMIT_NOFILE is below the session count and cannot be raised (no
// CAP_SYS_RESOURCE, as in containers), the sessions are split over worker
// processes. Each runs its share on the same clock (a shared wall-clock
// start), so their ramps interleave and their windows coincide.

// workerSpec is what a worker reads on stdin.
type workerSpec struct {
	Config       LoadConfig
	Shard        int
	Shards       int
	BaseUnixNano int64
}

// workerLine is one line a worker writes on stdout.
type workerLine struct {
	Progress *Progress    `json:",omitempty"`
	Result   *shardResult `json:",omitempty"`
}

// WorkerMain is the body of a worker process: it reads a workerSpec from
// in, runs its share and writes progress lines and then its result to out.
func WorkerMain(ctx context.Context, in io.Reader, out io.Writer) error {
	var spec workerSpec
	if err := json.NewDecoder(in).Decode(&spec); err != nil {
		return fmt.Errorf("worker: reading the spec: %w", err)
	}
	// A base with a monotonic reading: now, minus the wall time since the
	// shared start.
	base := time.Now().Add(-time.Since(time.Unix(0, spec.BaseUnixNano)))
	cfg := spec.Config
	enc := json.NewEncoder(out)
	var mu sync.Mutex
	cfg.Progress = func(p Progress) {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(workerLine{Progress: &p})
	}
	sr, err := runShard(ctx, &cfg, spec.Shard, spec.Shards, base, true)
	if sr == nil {
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	return enc.Encode(workerLine{Result: sr})
}

// runWorkers runs cfg over cfg.Processes worker processes.
func runWorkers(ctx context.Context, cfg LoadConfig) (*LoadResult, error) {
	command := cfg.WorkerCommand
	if len(command) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("bench: finding the worker executable: %w", err)
		}
		command = []string{exe, "worker"}
	}
	n := cfg.Processes
	// Room for the workers to start before session 0 is due.
	base := time.Now().Add(500 * time.Millisecond)

	type worker struct {
		cmd      *exec.Cmd
		progress Progress
		result   *shardResult
		err      error
	}
	var mu sync.Mutex
	workers := make([]*worker, n)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{}
		workers[i] = w
		spec, err := json.Marshal(workerSpec{Config: cfg, Shard: i, Shards: n, BaseUnixNano: base.UnixNano()})
		if err != nil {
			return nil, err
		}
		w.cmd = exec.Command(command[0], command[1:]...)
		w.cmd.Stdin = bytes.NewReader(spec)
		w.cmd.Stderr = os.Stderr
		stdout, err := w.cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := w.cmd.Start(); err != nil {
			for _, started := range workers[:i] {
				_ = started.cmd.Process.Signal(syscall.SIGTERM)
			}
			return nil, fmt.Errorf("bench: starting worker %d: %w", i, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc := bufio.NewScanner(stdout)
			sc.Buffer(make([]byte, 64<<10), 1<<30) // the result holds every latency sample
			for sc.Scan() {
				var line workerLine
				if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
					continue
				}
				mu.Lock()
				if line.Progress != nil {
					w.progress = *line.Progress
				}
				if line.Result != nil {
					w.result = line.Result
				}
				mu.Unlock()
			}
			err := w.cmd.Wait()
			mu.Lock()
			w.err = err
			mu.Unlock()
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	windowStart := base.Add(cfg.Ramp + cfg.Warmup)
	windowEnd := windowStart.Add(cfg.Duration)
	var started, ended, cancelled bool
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var lastProgress time.Time
loop:
	for {
		select {
		case <-done:
			break loop
		case <-ctx.Done():
			if !cancelled {
				cancelled = true
				for _, w := range workers {
					_ = w.cmd.Process.Signal(syscall.SIGINT)
				}
			}
		case <-tick.C:
		}
		now := time.Now()
		if !started && !now.Before(windowStart) {
			started = true
			if cfg.WindowStart != nil {
				cfg.WindowStart()
			}
		}
		if started && !ended && cfg.Count <= 0 && !now.Before(windowEnd) {
			ended = true
			if cfg.WindowEnd != nil {
				cfg.WindowEnd()
			}
		}
		if cfg.Progress != nil && now.Sub(lastProgress) >= time.Second && now.After(base) {
			lastProgress = now
			var p Progress
			mu.Lock()
			for _, w := range workers {
				p.OK += w.progress.OK
				p.Failed += w.progress.Failed
				p.Errors += w.progress.Errors
				p.Connected += w.progress.Connected
			}
			mu.Unlock()
			p.Elapsed = now.Sub(base)
			p.Phase = phase(&cfg, p.Elapsed, started, ended)
			cfg.Progress(p)
		}
	}
	if started && !ended && cfg.WindowEnd != nil {
		cfg.WindowEnd()
	}

	var results []*shardResult
	var errs []error
	for i, w := range workers {
		if w.result == nil {
			errs = append(errs, fmt.Errorf("bench: worker %d ended without a result: %v", i, w.err))
			continue
		}
		results = append(results, w.result)
		if w.result.Err != "" {
			errs = append(errs, fmt.Errorf("bench: worker %d: %s", i, w.result.Err))
		}
	}
	if len(results) == 0 {
		return nil, errors.Join(errs...)
	}
	return merge(cfg, results), errors.Join(errs...)
}
