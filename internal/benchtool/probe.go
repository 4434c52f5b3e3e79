package benchtool

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// serverProbe reads what a server process costs: RSS and CPU from /proc,
// goroutines and Go memory from its Prometheus endpoint, and it can force
// a GC through its pprof endpoint. Caddy serves both on its admin address
// (/metrics, /debug/pprof/); Centrifugo on its internal port with
// prometheus.enabled and debug.enabled.
type serverProbe struct {
	pid   int    // 0: unknown
	admin string // base URL of /metrics and /debug/pprof/, "" if none
	hc    *http.Client
}

// serverSample is one reading. Fields that could not be read are -1.
type serverSample struct {
	At         time.Time `json:"-"`
	RSS        int64     `json:"rss_bytes"`
	CPUTicks   int64     `json:"-"`
	Written    int64     `json:"-"` // bytes the process wrote through syscalls (/proc/<pid>/io wchar)
	Goroutines int64     `json:"goroutines"`
	HeapInuse  int64     `json:"heap_inuse_bytes"`
	StackInuse int64     `json:"stack_inuse_bytes"`
	GoSys      int64     `json:"go_sys_bytes"`
}

func newServerProbe(pid int, admin string) *serverProbe {
	return &serverProbe{pid: pid, admin: strings.TrimRight(admin, "/"), hc: &http.Client{Timeout: 30 * time.Second}}
}

func (p *serverProbe) sample() serverSample {
	s := serverSample{At: time.Now(), RSS: -1, CPUTicks: -1, Written: -1, Goroutines: -1, HeapInuse: -1, StackInuse: -1, GoSys: -1}
	if p.pid > 0 {
		s.RSS = procRSS(p.pid)
		s.CPUTicks = procCPUTicks(p.pid)
		s.Written = procWritten(p.pid)
	}
	if p.admin != "" {
		if m, err := p.metrics(); err == nil {
			s.Goroutines = m["go_goroutines"]
			s.HeapInuse = m["go_memstats_heap_inuse_bytes"]
			s.StackInuse = m["go_memstats_stack_inuse_bytes"]
			s.GoSys = m["go_memstats_sys_bytes"]
		}
	}
	return s
}

var wantedMetrics = []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes", "go_memstats_sys_bytes"}

// metrics reads the unlabelled gauges of wantedMetrics from /metrics.
func (p *serverProbe) metrics() (map[string]int64, error) {
	resp, err := p.hc.Get(p.admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s/metrics: %s", p.admin, resp.Status)
	}
	out := make(map[string]int64, len(wantedMetrics))
	for _, k := range wantedMetrics {
		out[k] = -1
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		name, val, ok := bytes.Cut(line, []byte(" "))
		if !ok {
			continue
		}
		if _, want := out[string(name)]; !want {
			continue
		}
		f, err := strconv.ParseFloat(string(bytes.TrimSpace(val)), 64)
		if err == nil {
			out[string(name)] = int64(f)
		}
	}
	return out, sc.Err()
}

// gc asks the server for a garbage collection (pprof's heap?gc=1) and
// waits for the answer.
func (p *serverProbe) gc(ctx context.Context) error {
	if p.admin == "" {
		return errors.New("no admin endpoint")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.admin+"/debug/pprof/heap?gc=1", nil)
	if err != nil {
		return err
	}
	resp, err := p.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s/debug/pprof/heap?gc=1: %s", p.admin, resp.Status)
	}
	return nil
}

// procRSS returns VmRSS of pid in bytes, or -1.
func procRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return -1
			}
			return kb << 10
		}
	}
	return -1
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// procWritten returns the bytes pid wrote through write syscalls (the
// wchar line of /proc/<pid>/io, sockets included), or -1. For a gateway
// under a fan-out that is its bytes on the wire, frame headers included.
func procWritten(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "wchar: "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return -1
			}
			return n
		}
	}
	return -1
}

// procCPUTicks returns utime+stime of pid in clock ticks, or -1.
func procCPUTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return -1
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return u + s
}

// selfCPU returns this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// selfRSS returns this process's RSS in bytes.
func selfRSS() int64 { return procRSS(os.Getpid()) }

// pidByPort finds the process listening on TCP port: the socket inode from
// /proc/net/tcp{,6}, then the process holding it among /proc/*/fd.
func pidByPort(port int) (int, error) {
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 10 || fs[3] != "0A" { // 0A: LISTEN
				continue
			}
			_, hexPort, ok := strings.Cut(fs[1], ":")
			if !ok {
				continue
			}
			if p, err := strconv.ParseInt(hexPort, 16, 32); err == nil && int(p) == port {
				inodes["socket:["+fs[9]+"]"] = true
			}
		}
	}
	if len(inodes) == 0 {
		return 0, fmt.Errorf("no process listens on port %d", port)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	self := os.Getpid()
	for _, dir := range procs {
		pid, err := strconv.Atoi(filepath.Base(dir))
		if err != nil || pid == self {
			continue
		}
		fds, err := os.ReadDir(dir + "/fd")
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if l, err := os.Readlink(dir + "/fd/" + fd.Name()); err == nil && inodes[l] {
				return pid, nil
			}
		}
	}
	return 0, fmt.Errorf("port %d: listening socket found but no process holds it (permissions?)", port)
}

// raiseNoFile lifts RLIMIT_NOFILE to want (or as far as allowed): the soft
// limit to the hard one, and the hard one too when running privileged.
func raiseNoFile(want uint64) (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	if rl.Cur >= want {
		return rl.Cur, nil
	}
	if rl.Max < want {
		nr := want
		if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
			if v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && v < nr {
				nr = v
			}
		}
		hard := syscall.Rlimit{Cur: nr, Max: nr}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &hard) == nil {
			return nr, nil
		}
	}
	rl.Cur = min(rl.Max, max(want, rl.Cur))
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	return rl.Cur, nil
}
