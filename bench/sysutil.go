package bench

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// RaiseFileLimit makes sure this process (and the servers it starts, which
// inherit it) may open at least n files: every connection is one. The
// hard limit is raised too when needed, which takes CAP_SYS_RESOURCE;
// /proc/sys/fs/nr_open caps it.
func RaiseFileLimit(n uint64) (uint64, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	if l.Cur >= n {
		return l.Cur, nil
	}
	if nrOpen, err := readUint("/proc/sys/fs/nr_open"); err == nil && n > nrOpen {
		n = nrOpen
	}
	want := syscall.Rlimit{Cur: n, Max: max(l.Max, n)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		// Not privileged: take what the hard limit allows.
		want = syscall.Rlimit{Cur: l.Max, Max: l.Max}
		if err2 := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err2 != nil {
			return l.Cur, fmt.Errorf("setrlimit: %w", err2)
		}
		return l.Max, fmt.Errorf("open file limit stays at the hard limit %d (%d wanted): %w", l.Max, n, err)
	}
	return n, nil
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

// EphemeralPorts is the size of the kernel's ephemeral port range: how
// many connections one source address can have open to one server
// address and port.
func EphemeralPorts() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 28232 // Linux default 32768-60999
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 28232
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || hi < lo {
		return 28232
	}
	return hi - lo + 1
}

// loopbackSources lists the client addresses for sessions sessions
// against a loopback target: the kernel's choice (127.0.0.1) first, then
// 127.0.0.2, 127.0.0.3, ... (all of 127.0.0.0/8 is local on Linux), each
// taking perSource sessions, plus one spare for connects that find a range
// exhausted anyway (TIME_WAIT, other programs).
func loopbackSources(sessions, perSource int) []netip.Addr {
	n := (sessions+perSource-1)/perSource + 1
	srcs := []netip.Addr{{}}
	for i := 1; i < n; i++ {
		host := i + 1
		srcs = append(srcs, netip.AddrFrom4([4]byte{127, byte(host >> 16), byte(host >> 8), byte(host)}))
	}
	return srcs
}

// cpuTime is the user+system CPU time of this process.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// hardFileLimit is the hard RLIMIT_NOFILE.
func hardFileLimit() (uint64, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, err
	}
	return l.Max, nil
}
