package testsvc

import (
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// Cluster is a Redis Cluster of 3 masters, each with one replica, from
// throwaway redis-servers on free ports of 127.0.0.1 (each also binds its
// port + 10000 for the cluster bus), for tests of a master's failover. A
// node is failed after 1 s without an answer (cluster-node-timeout).
type Cluster struct {
	t     testing.TB
	Nodes []*RedisServer
}

// StartCluster starts the 6 nodes, joins them with
// `redis-cli --cluster create … --cluster-replicas 1` and waits until
// every node reports the cluster ok. Everything stops in t.Cleanup.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	needRedisServer(t)
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Fatalf("redis-cli not found in PATH (it comes with Redis 7): %v", err)
	}
	c := &Cluster{t: t}
	dir := t.TempDir()
	for i := 0; i < 6; i++ {
		port := freeClusterPort(t)
		s := &RedisServer{t: t, port: port, extra: []string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", fmt.Sprintf("%s/nodes-%d.conf", dir, port),
			"--cluster-node-timeout", "1000",
			// A replica may take over however long it lost its master:
			// the tests kill masters under load.
			"--cluster-replica-validity-factor", "0",
			"--dir", dir,
		}}
		s.start()
		t.Cleanup(s.Kill)
		c.Nodes = append(c.Nodes, s)
	}
	args := []string{"--cluster", "create"}
	for _, n := range c.Nodes {
		args = append(args, n.Addr())
	}
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c.WaitHealthy(30 * time.Second)
	return c
}

// freeClusterPort returns a free port whose cluster bus port (+10000) is
// free too.
func freeClusterPort(t testing.TB) int {
	t.Helper()
	for i := 0; i < 100; i++ {
		p := FreePort(t)
		if l, err := net.Listen("tcp", ":"+strconv.Itoa(p+10000)); err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("no free port pair for a cluster node")
	return 0
}

// Addr is the address of a node still running: a client's seed.
func (c *Cluster) Addr() string {
	for _, n := range c.Nodes {
		if n.running() {
			return n.Addr()
		}
	}
	return c.Nodes[0].Addr()
}

// URL is the redis:// URL of a running node, as the gateway's `redis`
// option takes it.
func (c *Cluster) URL() string { return "redis://" + c.Addr() }

// Client returns a cluster client with the options the gateway uses,
// closed in t.Cleanup.
func (c *Cluster) Client(t testing.TB) rueidis.Client {
	t.Helper()
	cl, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:  []string{c.Addr()},
		DisableCache: true,
		DisableRetry: true,
		Dialer:       net.Dialer{Timeout: connectTimeout, KeepAlive: 400 * time.Millisecond},
	})
	if err != nil {
		t.Fatalf("connecting to the cluster: %v", err)
	}
	if cl.Mode() != rueidis.ClientModeCluster {
		t.Fatalf("client mode %s, want cluster", cl.Mode())
	}
	t.Cleanup(cl.Close)
	return cl
}

// Running reports whether the server runs (it was not killed, or was
// restarted).
func (s *RedisServer) Running() bool { return s.running() }

func (s *RedisServer) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil
}

// nodeDo runs one command on the node at addr alone.
func nodeDo(addr string, args ...string) (rueidis.RedisMessage, error) {
	return sentinelDo(addr, args...)
}

// WaitHealthy waits until every running node reports cluster_state:ok and
// every slot served.
func (c *Cluster) WaitHealthy(timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		last = nil
		for _, n := range c.Nodes {
			if !n.running() {
				continue
			}
			m, err := nodeDo(n.Addr(), "CLUSTER", "INFO")
			if err != nil {
				last = err
				break
			}
			info, _ := m.ToString()
			if !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_slots_ok:16384") {
				last = fmt.Errorf("node %s: cluster not ok yet", n.Addr())
				break
			}
		}
		if last == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatalf("cluster not healthy within %s: %v", timeout, last)
}

// MasterOf returns the running node that serves slot as master, as a
// running node's CLUSTER SHARDS reports it.
func (c *Cluster) MasterOf(slot uint16) *RedisServer {
	c.t.Helper()
	m, err := nodeDo(c.Addr(), "CLUSTER", "SLOTS")
	if err != nil {
		c.t.Fatalf("CLUSTER SLOTS: %v", err)
	}
	ranges, _ := m.ToArray()
	for _, r := range ranges {
		f, _ := r.ToArray()
		if len(f) < 3 {
			continue
		}
		lo, _ := f[0].AsInt64()
		hi, _ := f[1].AsInt64()
		if int64(slot) < lo || int64(slot) > hi {
			continue
		}
		node, _ := f[2].ToArray()
		port, _ := node[1].AsInt64()
		for _, n := range c.Nodes {
			if n.port == int(port) {
				return n
			}
		}
	}
	c.t.Fatalf("no master serves slot %d", slot)
	return nil
}

// KillMasterOf SIGKILLs the master of slot and waits until its replica
// took over and the cluster is ok again; it returns how long that took.
func (c *Cluster) KillMasterOf(slot uint16, timeout time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	m := c.MasterOf(slot)
	m.Kill()
	deadline := start.Add(timeout)
	for time.Now().Before(deadline) {
		if n := c.MasterOf(slot); n != m && n.running() {
			c.WaitHealthy(time.Until(deadline))
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatalf("no replica took slot %d over within %s", slot, timeout)
	return 0
}

// Slot returns the hash slot of key, as the cluster computes it.
func (c *Cluster) Slot(key string) uint16 {
	c.t.Helper()
	m, err := nodeDo(c.Addr(), "CLUSTER", "KEYSLOT", key)
	if err != nil {
		c.t.Fatalf("CLUSTER KEYSLOT: %v", err)
	}
	n, _ := m.AsInt64()
	return uint16(n)
}

// nodeID returns the cluster node id of n.
func (c *Cluster) nodeID(n *RedisServer) string {
	c.t.Helper()
	m, err := nodeDo(n.Addr(), "CLUSTER", "MYID")
	if err != nil {
		c.t.Fatalf("CLUSTER MYID of %s: %v", n.Addr(), err)
	}
	id, _ := m.ToString()
	return id
}

// MoveSlot migrates slot, with its keys, from its master to another
// running master, as a resharding does (SETSLOT IMPORTING/MIGRATING,
// MIGRATE, SETSLOT NODE), and returns the new owner.
func (c *Cluster) MoveSlot(slot uint16) *RedisServer {
	c.t.Helper()
	src := c.MasterOf(slot)
	var dst *RedisServer
	for _, n := range c.Nodes {
		if n == src || !n.running() {
			continue
		}
		m, err := nodeDo(n.Addr(), "ROLE")
		if err != nil {
			c.t.Fatalf("ROLE of %s: %v", n.Addr(), err)
		}
		role, _ := m.ToArray()
		if r, _ := role[0].ToString(); r == "master" {
			dst = n
			break
		}
	}
	if dst == nil {
		c.t.Fatal("no other master to move a slot to")
	}
	s := strconv.Itoa(int(slot))
	srcID, dstID := c.nodeID(src), c.nodeID(dst)
	must := func(n *RedisServer, args ...string) rueidis.RedisMessage {
		c.t.Helper()
		m, err := nodeDo(n.Addr(), args...)
		if err != nil {
			c.t.Fatalf("%v on %s: %v", args, n.Addr(), err)
		}
		return m
	}
	must(dst, "CLUSTER", "SETSLOT", s, "IMPORTING", srcID)
	must(src, "CLUSTER", "SETSLOT", s, "MIGRATING", dstID)
	for {
		m := must(src, "CLUSTER", "GETKEYSINSLOT", s, "100")
		keys, _ := m.AsStrSlice()
		if len(keys) == 0 {
			break
		}
		args := []string{"MIGRATE", "127.0.0.1", strconv.Itoa(dst.port), "", "0", "5000", "KEYS"}
		must(src, append(args, keys...)...)
	}
	must(dst, "CLUSTER", "SETSLOT", s, "NODE", dstID)
	must(src, "CLUSTER", "SETSLOT", s, "NODE", dstID)
	for _, n := range c.Nodes {
		if n != src && n != dst && n.running() {
			// Replicas answer an error for SETSLOT; the cluster bus
			// tells them.
			_, _ = nodeDo(n.Addr(), "CLUSTER", "SETSLOT", s, "NODE", dstID)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for c.MasterOf(slot) != dst {
		if time.Now().After(deadline) {
			c.t.Fatalf("slot %d still not on %s", slot, dst.Addr())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return dst
}

// NodeDo runs one command on node n alone (no redirection), such as
// PUBSUB SHARDNUMSUB, which counts that node's subscribers only.
func (c *Cluster) NodeDo(n *RedisServer, args ...string) (rueidis.RedisMessage, error) {
	return nodeDo(n.Addr(), args...)
}

// KillAll SIGKILLs every node; RestartAll brings them back, with the
// cluster configuration they saved (no data), and waits until the cluster
// is ok.
func (c *Cluster) KillAll() {
	for _, n := range c.Nodes {
		n.Kill()
	}
}

// RestartAll restarts every killed node and waits until the cluster is ok.
func (c *Cluster) RestartAll() {
	c.t.Helper()
	for _, n := range c.Nodes {
		if !n.running() {
			n.Restart()
		}
	}
	c.WaitHealthy(30 * time.Second)
}
