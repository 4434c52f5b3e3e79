package testsvc

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// SentinelMasterName is the master set name a Sentinel group monitors.
const SentinelMasterName = "mymaster"

// Sentinel is a master, one replica of it and three Sentinel processes
// monitoring them (quorum 2, a master down after 1 s), all throwaway
// redis-servers on free ports of 127.0.0.1 (Sentinels run as
// `redis-server <conf> --sentinel`), for tests of a failover.
type Sentinel struct {
	t         testing.TB
	Master    *RedisServer // the master at start
	Replica   *RedisServer // promoted when Master dies
	Sentinels []*RedisServer
}

// StartSentinel starts the group and waits until the Sentinels know the
// replica and each other, so that a failover can be authorized the moment
// the master dies. Everything stops in t.Cleanup.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	needRedisServer(t)
	g := &Sentinel{t: t}
	g.Master = StartRedisArgs(t)
	g.Replica = StartRedisArgs(t, "--replicaof", "127.0.0.1", strconv.Itoa(g.Master.Port()))
	dir := t.TempDir()
	for i := 0; i < 3; i++ {
		port := FreePort(t)
		conf := filepath.Join(dir, fmt.Sprintf("sentinel-%d.conf", port))
		// Sentinel rewrites its config file: each needs its own, writable.
		body := fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d 2\n"+
			"sentinel down-after-milliseconds %[1]s 1000\n"+
			"sentinel failover-timeout %[1]s 3000\n"+
			"sentinel parallel-syncs %[1]s 1\n", SentinelMasterName, g.Master.Port())
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		s := &RedisServer{t: t, port: port, conf: conf, extra: []string{"--sentinel"}}
		s.start()
		t.Cleanup(s.Kill)
		g.Sentinels = append(g.Sentinels, s)
	}
	g.waitReady(30 * time.Second)
	return g
}

// Addrs returns the Sentinels' host:port.
func (g *Sentinel) Addrs() []string {
	out := make([]string, len(g.Sentinels))
	for i, s := range g.Sentinels {
		out[i] = s.Addr()
	}
	return out
}

// URL returns the sentinel:// URL of the group, as the gateway's `redis`
// option takes it.
func (g *Sentinel) URL() string {
	return "sentinel://" + strings.Join(g.Addrs(), ",") + "/" + SentinelMasterName
}

// sentinelDo runs one command on the Sentinel at addr.
func sentinelDo(addr string, args ...string) (rueidis.RedisMessage, error) {
	c, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:       []string{addr},
		ForceSingleClient: true,
		DisableCache:      true,
		DisableRetry:      true,
		Dialer:            net.Dialer{Timeout: time.Second},
	})
	if err != nil {
		return rueidis.RedisMessage{}, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.Do(ctx, c.B().Arbitrary(args...).Build()).ToMessage()
}

// waitReady waits until every Sentinel sees a quorum and the replica.
func (g *Sentinel) waitReady(timeout time.Duration) {
	g.t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		last = nil
		for _, s := range g.Sentinels {
			if _, err := sentinelDo(s.Addr(), "SENTINEL", "CKQUORUM", SentinelMasterName); err != nil {
				last = fmt.Errorf("sentinel %s: %w", s.Addr(), err)
				break
			}
			m, err := sentinelDo(s.Addr(), "SENTINEL", "REPLICAS", SentinelMasterName)
			if err != nil {
				last = err
				break
			}
			if rs, _ := m.ToArray(); len(rs) == 0 {
				last = fmt.Errorf("sentinel %s knows no replica yet", s.Addr())
				break
			}
		}
		if last == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	g.t.Fatalf("sentinels not ready within %s: %v", timeout, last)
}

// MasterAddr returns the master's host:port as the first Sentinel that
// answers reports it.
func (g *Sentinel) MasterAddr() (string, error) {
	var last error
	for _, s := range g.Sentinels {
		m, err := sentinelDo(s.Addr(), "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SentinelMasterName)
		if err != nil {
			last = err
			continue
		}
		hp, err := m.AsStrSlice()
		if err != nil || len(hp) != 2 {
			last = fmt.Errorf("unexpected answer %v: %v", hp, err)
			continue
		}
		return net.JoinHostPort(hp[0], hp[1]), nil
	}
	return "", last
}

// KillMasterAndWaitFailover SIGKILLs the master and waits until the
// Sentinels name the replica master and it accepts writes. It returns how
// long the failover took.
func (g *Sentinel) KillMasterAndWaitFailover(timeout time.Duration) time.Duration {
	g.t.Helper()
	start := time.Now()
	g.Master.Kill()
	want := g.Replica.Addr()
	client := Connect(g.t, want)
	var last error
	for time.Since(start) < timeout {
		addr, err := g.MasterAddr()
		switch {
		case err != nil:
			last = err
		case addr != want:
			last = fmt.Errorf("sentinels still name %s", addr)
		default:
			role, err := client.Do(context.Background(), client.B().Role().Build()).ToArray()
			if err == nil && len(role) > 0 {
				if r, _ := role[0].ToString(); r == "master" {
					return time.Since(start)
				}
				last = fmt.Errorf("%s still has role %v", want, role[0])
			} else {
				last = err
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	g.t.Fatalf("no failover to %s within %s: %v", want, timeout, last)
	return 0
}

// Client returns a client of the group's master through its Sentinels,
// with the options the gateway uses, closed in t.Cleanup.
func (g *Sentinel) Client(t testing.TB) rueidis.Client {
	t.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:  g.Addrs(),
		DisableCache: true,
		DisableRetry: true,
		Dialer:       net.Dialer{Timeout: connectTimeout, KeepAlive: 400 * time.Millisecond},
		Sentinel: rueidis.SentinelOption{
			MasterSet:               SentinelMasterName,
			Dialer:                  net.Dialer{Timeout: connectTimeout},
			TopologyRefreshInterval: 2 * time.Second,
		},
	})
	if err != nil {
		t.Fatalf("connecting through the sentinels: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}
