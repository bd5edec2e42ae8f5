package bench

import (
	"bufio"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// MachineInfo describes where the suite ran.
type MachineInfo struct {
	CPUModel  string
	Cores     int
	MemoryGiB float64
	Kernel    string
	Go        string // toolchain that built the generator
	RabbitMQ  string
	Postfix   string
	Commit    string
	Date      time.Time
	Load1     float64 // load average when the suite started
	FileLimit uint64  // hard RLIMIT_NOFILE
}

// CollectMachineInfo reads /proc, the toolchain and the broker.
func CollectMachineInfo(check *QueueCheck) MachineInfo {
	mi := MachineInfo{Cores: runtime.NumCPU(), Go: runtime.Version(), Date: time.Now(), Load1: loadAvg()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				mi.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) >= 2 && fields[0] == "MemTotal:" {
				kb, _ := strconv.ParseFloat(fields[1], 64)
				mi.MemoryGiB = kb / (1 << 20)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		mi.Kernel = strings.TrimSpace(string(b))
	}
	if check != nil {
		mi.RabbitMQ = check.Version()
	}
	if out, err := exec.Command("postconf", "-h", "mail_version").Output(); err == nil {
		mi.Postfix = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		mi.Commit = strings.TrimSpace(string(out))
	}
	mi.FileLimit, _ = hardFileLimit()
	return mi
}

func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
