package caddytest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkIdleMemory measures what an idle connection costs Caddy: n
// idle SSE streams (HTTP/1.1, one topic each among 50), then, on a fresh
// instance, n idle WebSockets subscribed the same way; the metric is the
// growth of Caddy's resident memory per connection. Run once:
//
//	go test ./caddytest -run '^$' -bench IdleMemory -benchtime 1x
func BenchmarkIdleMemory(b *testing.B) {
	const n = 1000
	site := `
	realtime {
		api /_realtime
		sse /events
		shutdown_spread 0
		limits {
			upgrade_rate off
		}
	}`
	b.Run("sse", func(b *testing.B) {
		in := startCaddy(b, site)
		perConn := measureIdle(b, in, n, func(i int) func() {
			c, err := net.Dial("tcp", in.addr())
			if err != nil {
				b.Fatal(err)
			}
			fmt.Fprintf(c, "GET /events?topic=t%d HTTP/1.1\r\nHost: %s\r\n\r\n", i%50, in.addr())
			if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || !strings.Contains(line, " 200 ") {
				b.Fatalf("stream %d: %q %v", i, line, err)
			}
			return func() { c.Close() }
		})
		b.ReportMetric(perConn, "KB/conn")
	})
	b.Run("websocket", func(b *testing.B) {
		in := startCaddy(b, site)
		perConn := measureIdle(b, in, n, func(i int) func() {
			c := dial(b, in)
			c.welcome()
			c.send(fmt.Sprintf(`{"type":"subscribe","topic":"t%d","ref":1}`, i%50))
			c.expect(fmt.Sprintf(`{"type":"subscribed","topic":"t%d","ref":1}`, i%50))
			return func() { c.c.CloseNow() }
		})
		b.ReportMetric(perConn, "KB/conn")
	})
}

// measureIdle opens n connections with open and returns Caddy's resident
// memory growth per connection, in KB, once they have been idle a while.
func measureIdle(b *testing.B, in *instance, n int, open func(i int) (close func())) float64 {
	b.Helper()
	time.Sleep(time.Second) // let the start-up settle before the baseline
	before := vmRSS(b, in.cmd.Process.Pid)
	closers := make([]func(), 0, n)
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for i := 0; i < n; i++ {
		closers = append(closers, open(i))
	}
	time.Sleep(3 * time.Second) // idle: what remains is what an idle connection holds
	return float64(vmRSS(b, in.cmd.Process.Pid)-before) / float64(n)
}

// vmRSS reads a process's resident set size in KB.
func vmRSS(b *testing.B, pid int) int {
	b.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return kb
		}
	}
	b.Fatal("no VmRSS")
	return 0
}
