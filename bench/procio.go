package bench

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// ProcSyscalls is the read and write system calls a process has made
// (syscr + syscw of /proc/<pid>/io, all its threads; reading another
// user's process needs ptrace access). ok is false when it cannot be read.
func ProcSyscalls(pid int) (n int64, ok bool) {
	name := "/proc/self/io"
	if pid > 0 {
		name = fmt.Sprintf("/proc/%d/io", pid)
	}
	f, err := os.Open(name)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	found := 0
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		if k != "syscr" && k != "syscw" {
			continue
		}
		c, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return 0, false
		}
		n += c
		found++
	}
	return n, found == 2
}

// procSample is a process's CPU time and system calls at one moment.
type procSample struct {
	cpu      time.Duration
	syscalls int64
	ok       bool // syscalls readable
}

// sampleProc reads pid's counters; pid 0 is this process.
func sampleProc(pid int) procSample {
	var s procSample
	if pid == 0 {
		s.cpu = cpuTime()
	} else {
		s.cpu = ProcCPU(pid)
	}
	s.syscalls, s.ok = ProcSyscalls(pid)
	return s
}

// perMessage is what a process spent between two samples, per message:
// CPU in milliseconds and system calls (-1 when they could not be read).
func perMessage(before, after procSample, msgs int64) (cpuMs, syscalls float64) {
	if msgs <= 0 {
		return 0, -1
	}
	cpuMs = float64(max(after.cpu-before.cpu, 0)) / float64(time.Millisecond) / float64(msgs)
	syscalls = -1
	if before.ok && after.ok {
		syscalls = float64(after.syscalls-before.syscalls) / float64(msgs)
	}
	return cpuMs, syscalls
}

// waitProcQuiet waits until pid uses less than cores over a 200 ms slice,
// or limit passes; it reports whether it got quiet. The broker's work for
// one row (and the deletion of the last row's queue) ends before the next
// row is sampled.
func waitProcQuiet(pid int, cores float64, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for {
		c0, t0 := ProcCPU(pid), time.Now()
		time.Sleep(200 * time.Millisecond)
		used := (ProcCPU(pid) - c0).Seconds() / time.Since(t0).Seconds()
		if used < cores {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}
