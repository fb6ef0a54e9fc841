package loadgen

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// readRSS returns a process's resident set size in bytes (VmRSS of
// /proc/PID/status; pid 0 means this process).
func readRSS(pid int) (int64, error) {
	path := "/proc/self/status"
	if pid > 0 {
		path = fmt.Sprintf("/proc/%d/status", pid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("reading RSS: %w", err)
	}
	v, ok := kbField(b, "VmRSS:")
	if !ok {
		return 0, fmt.Errorf("reading RSS: no VmRSS in %s", path)
	}
	return v, nil
}

// kbField finds "Name:   123 kB" in a /proc file and returns bytes.
func kbField(b []byte, name string) (int64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		f := strings.Fields(line[len(name):])
		if len(f) == 0 {
			return 0, false
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, false
		}
		if len(f) > 1 && f[1] == "kB" {
			v *= 1024
		}
		return v, true
	}
	return 0, false
}

// Kernel is the host's side of the connections: memory and TCP sockets.
type Kernel struct {
	// MemFree, MemAvailable and Slab are from /proc/meminfo, in bytes.
	MemFree      int64 `json:"mem_free"`
	MemAvailable int64 `json:"mem_available"`
	Slab         int64 `json:"slab"`
	// TCPInUse is the "inuse" field of /proc/net/sockstat: TCP sockets
	// of the whole host (both ends of a loopback connection count).
	TCPInUse int64 `json:"tcp_inuse"`
	// TCPMemPages is the "mem" field of /proc/net/sockstat: pages of
	// socket buffers in use by TCP.
	TCPMemPages int64 `json:"tcp_mem_pages"`
}

// readKernel samples /proc/meminfo and /proc/net/sockstat.
func readKernel() (Kernel, error) {
	var k Kernel
	mi, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return k, fmt.Errorf("reading kernel memory: %w", err)
	}
	k.MemFree, _ = kbField(mi, "MemFree:")
	k.MemAvailable, _ = kbField(mi, "MemAvailable:")
	k.Slab, _ = kbField(mi, "Slab:")
	ss, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return k, fmt.Errorf("reading socket stats: %w", err)
	}
	for line := range strings.Lines(string(ss)) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "TCP:" {
			continue
		}
		for i := 1; i+1 < len(f); i += 2 {
			v, _ := strconv.ParseInt(f[i+1], 10, 64)
			switch f[i] {
			case "inuse":
				k.TCPInUse = v
			case "mem":
				k.TCPMemPages = v
			}
		}
	}
	return k, nil
}

// nofileLimit is this process's soft RLIMIT_NOFILE (Go raises it to the
// hard limit at start-up).
func nofileLimit() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<30 {
		return 1 << 20
	}
	return int(rl.Cur)
}

func closeFD(fd int) error { return unix.Close(fd) }

// clockTicks is USER_HZ, the unit of /proc/PID/stat times; it is 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// ProcessCPU returns the user plus system CPU time a process has used (pid 0
// means this process).
func ProcessCPU(pid int) (time.Duration, error) {
	path := "/proc/self/stat"
	if pid > 0 {
		path = fmt.Sprintf("/proc/%d/stat", pid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("reading CPU time: %w", err)
	}
	// The command name may hold spaces and parentheses: fields are
	// counted from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("reading CPU time: malformed %s", path)
	}
	f := strings.Fields(string(b[i+1:]))
	// After ')': state is field 3 of stat(5), utime 14, stime 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("reading CPU time: short %s", path)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("reading CPU time: malformed %s", path)
	}
	return time.Duration(u+s) * time.Second / clockTicks, nil
}
