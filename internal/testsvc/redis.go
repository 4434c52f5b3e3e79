// Package testsvc gives tests the real services they run against (docs/design.md,
// conventions §7): a connection to the shared Redis with a key prefix of their own, or a
// throwaway redis-server they may kill and restart. It is imported by tests
// only.
package testsvc

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// DefaultRedisAddr is the Redis the tests use unless the environment
// variable REALTIME_TEST_REDIS names another host:port.
const DefaultRedisAddr = "127.0.0.1:6379"

// connectTimeout bounds dialing and the first PING, so an unreachable
// server fails a test in seconds instead of hanging it.
const connectTimeout = 5 * time.Second

const startHint = `start one with:
	redis-server --port 6379 --save '' --appendonly no --daemonize yes
or point REALTIME_TEST_REDIS at one (host:port); go test -short skips the tests that need it`

var prefixSerial atomic.Int64

// Redis connects to the test Redis (DefaultRedisAddr, or
// $REALTIME_TEST_REDIS) and returns the client and a key prefix no other
// test, in this process or another, uses. In t.Cleanup it deletes every key
// under the prefix and closes the client. An unreachable server fails the
// test with how to start one; only -short skips it.
func Redis(t testing.TB) (rueidis.Client, string) {
	t.Helper()
	addr := os.Getenv("REALTIME_TEST_REDIS")
	if addr == "" {
		addr = DefaultRedisAddr
	}
	client, err := dial(addr)
	if err != nil {
		if testing.Short() {
			t.Skipf("redis unreachable at %s (-short): %v", addr, err)
		}
		t.Fatalf("redis unreachable at %s: %v\n%s", addr, err, startHint)
	}
	prefix := fmt.Sprintf("rt-test:%d:%d:%s:", os.Getpid(), prefixSerial.Add(1), randomHex(4))
	t.Cleanup(func() {
		defer client.Close()
		if err := deleteKeys(client, prefix); err != nil {
			t.Errorf("deleting the test keys under %q: %v", prefix, err)
		}
	})
	return client, prefix
}

// Connect returns a client of addr with the options the gateway uses
// (no client-side cache, no retries of
// read-only commands), closed in t.Cleanup. It fails the test when the
// server does not answer within a few seconds.
func Connect(t testing.TB, addr string) rueidis.Client {
	t.Helper()
	client, err := dial(addr)
	if err != nil {
		t.Fatalf("connecting to redis at %s: %v", addr, err)
	}
	t.Cleanup(client.Close)
	return client
}

func dial(addr string) (rueidis.Client, error) {
	client, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:  []string{addr},
		DisableCache: true,
		DisableRetry: true,
		Dialer:       net.Dialer{Timeout: connectTimeout},
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	if err := client.Do(ctx, client.B().Ping().Build()).Error(); err != nil {
		client.Close()
		return nil, err
	}
	return client, nil
}

// deleteKeys deletes every key starting with prefix (which holds no glob
// character), one UNLINK per key so that it also works on a Cluster.
func deleteKeys(client rueidis.Client, prefix string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, node := range client.Nodes() {
		var cursor uint64
		for {
			e, err := node.Do(ctx, node.B().Scan().Cursor(cursor).Match(prefix+"*").Count(1000).Build()).AsScanEntry()
			if err != nil {
				return err
			}
			cmds := make(rueidis.Commands, 0, len(e.Elements))
			for _, k := range e.Elements {
				cmds = append(cmds, client.B().Unlink().Key(k).Build())
			}
			for _, r := range client.DoMulti(ctx, cmds...) {
				if err := r.Error(); err != nil {
					return err
				}
			}
			if cursor = e.Cursor; cursor == 0 {
				break
			}
		}
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// RedisServer is a redis-server of a test's own on a free port of
// 127.0.0.1, for tests that kill and restart it: without persistence, or
// with an append-only file (StartRedisAOF).
type RedisServer struct {
	t        testing.TB
	port     int
	password string   // requirepass, "" for none
	dir      string   // holds the append-only file; "" for no persistence
	conf     string   // config file given before the options; "" for none
	extra    []string // options after the usual ones (--replicaof, --sentinel…)

	mu     sync.Mutex
	proc   *os.Process   // nil while killed
	exited chan struct{} // closed when the process has exited
}

// StartRedis starts a redis-server on a free port and waits until it
// answers. It stops in t.Cleanup. Without a redis-server binary the test
// fails (-short skips it).
func StartRedis(t testing.TB) *RedisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if testing.Short() {
			t.Skip("redis-server not installed (-short)")
		}
		t.Fatalf("redis-server not found in PATH (install Redis 7, e.g. apt-get install redis-server): %v", err)
	}
	s := &RedisServer{t: t, port: FreePort(t)}
	s.start()
	t.Cleanup(s.Kill)
	return s
}

// StartRedisArgs is StartRedis with extra redis-server options, such as
// "--replicaof", "127.0.0.1", "6380" for a replica.
func StartRedisArgs(t testing.TB, args ...string) *RedisServer {
	t.Helper()
	needRedisServer(t)
	// A replica writes the RDB of its full sync to its working directory.
	s := &RedisServer{t: t, port: FreePort(t), extra: append(slices.Clone(args), "--dir", t.TempDir())}
	s.start()
	t.Cleanup(s.Kill)
	return s
}

func needRedisServer(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if testing.Short() {
			t.Skip("redis-server not installed (-short)")
		}
		t.Fatalf("redis-server not found in PATH (install Redis 7, e.g. apt-get install redis-server): %v", err)
	}
}

// Port is the server's TCP port.
func (s *RedisServer) Port() int { return s.port }

// StartRedisWithPassword is StartRedis with requirepass set to password,
// for tests of credentials (a client must AUTH before any command).
func StartRedisWithPassword(t testing.TB, password string) *RedisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server not found in PATH (install Redis 7, e.g. apt-get install redis-server): %v", err)
	}
	s := &RedisServer{t: t, port: FreePort(t), password: password}
	s.start()
	t.Cleanup(s.Kill)
	return s
}

// StartRedisAOF is StartRedis with an append-only file written and fsynced
// on every write (appendfsync always) in a directory of the server's own:
// Restart brings back every write the server acknowledged, as a persistent
// Redis does after a crash. Wipe deletes the file, for a restart that loses
// the data.
func StartRedisAOF(t testing.TB) *RedisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if testing.Short() {
			t.Skip("redis-server not installed (-short)")
		}
		t.Fatalf("redis-server not found in PATH (install Redis 7, e.g. apt-get install redis-server): %v", err)
	}
	s := &RedisServer{t: t, port: FreePort(t), dir: t.TempDir()}
	s.start()
	t.Cleanup(s.Kill)
	return s
}

// Wipe deletes the data files of a killed server started with
// StartRedisAOF, so that the next Restart starts empty, as after a
// FLUSHALL or a failover to a replica that had nothing. It fails the test
// if the server is running.
func (s *RedisServer) Wipe() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		s.t.Fatalf("wiping the data of redis-server on port %d while it runs", s.port)
	}
	if s.dir == "" {
		return
	}
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		s.t.Fatal(err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(s.dir, e.Name())); err != nil {
			s.t.Fatal(err)
		}
	}
}

// Addr is the server's host:port; it stays the same across Restart.
func (s *RedisServer) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Kill stops the server at once (SIGKILL), as a crash would, and waits for
// the process to exit. Killing a killed server does nothing.
func (s *RedisServer) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return
	}
	_ = s.proc.Kill()
	<-s.exited
	s.proc = nil
}

// Restart starts a killed server again on the same port and waits until it
// answers: empty, unless it keeps an append-only file (StartRedisAOF). It fails the test if the server is running.
func (s *RedisServer) Restart() {
	s.t.Helper()
	s.start()
}

func (s *RedisServer) start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		s.t.Fatalf("redis-server on port %d is already running", s.port)
	}
	var (
		out     strings.Builder
		lastErr error
	)
	// Right after a kill the port may still be busy for a moment: retry
	// until the deadline.
	for deadline := time.Now().Add(connectTimeout); time.Now().Before(deadline); {
		out.Reset()
		args := []string{"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--save", ""}
		if s.dir != "" {
			args = append(args, "--dir", s.dir, "--appendonly", "yes", "--appendfsync", "always")
		} else {
			args = append(args, "--appendonly", "no")
		}
		if s.password != "" {
			args = append(args, "--requirepass", s.password)
		}
		args = append(args, s.extra...)
		if s.conf != "" {
			args = append([]string{s.conf}, args...)
		}
		cmd := exec.Command("redis-server", args...)
		cmd.Stdout = &out
		if err := cmd.Start(); err != nil {
			s.t.Fatalf("starting redis-server: %v", err)
		}
		exited := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(exited)
		}()
		if lastErr = waitPing(s.Addr(), s.password, exited, deadline); lastErr == nil {
			s.proc, s.exited = cmd.Process, exited
			return
		}
		_ = cmd.Process.Kill()
		<-exited
	}
	s.t.Fatalf("starting redis-server on port %d: %v\n%s", s.port, lastErr, out.String())
}

// waitPing polls addr with PING (after AUTH password, if any) until it
// answers, the process exits or the deadline passes.
func waitPing(addr, password string, exited <-chan struct{}, deadline time.Time) error {
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = conn.SetDeadline(time.Now().Add(time.Second))
			var line string
			cmd := "PING\r\n"
			if password != "" {
				cmd = fmt.Sprintf("*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n", len(password), password) + cmd
			}
			if _, err = conn.Write([]byte(cmd)); err == nil {
				r := bufio.NewReader(conn)
				if line, err = r.ReadString('\n'); err == nil && password != "" && strings.HasPrefix(line, "+OK") {
					line, err = r.ReadString('\n')
				}
			}
			conn.Close()
			if err == nil && strings.HasPrefix(line, "+PONG") {
				return nil
			}
			if err == nil {
				err = fmt.Errorf("PING answered %q", strings.TrimSpace(line))
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("redis-server exited (last error: %v)", err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return err
		}
	}
}

// FreePort returns a TCP port that was free a moment ago, picked below the
// kernel's ephemeral range (32768 and up on Linux) so that outgoing
// connections of a loaded machine cannot take it before the server that
// needs it listens (or listens again, after a restart).
func FreePort(t testing.TB) int {
	t.Helper()
	for i := 0; i < 200; i++ {
		port := 20000 + mrand.IntN(12000)
		if l, err := net.Listen("tcp", ":"+strconv.Itoa(port)); err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no free port between 20000 and 32000")
	return 0
}
