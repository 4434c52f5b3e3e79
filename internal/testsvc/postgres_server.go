package testsvc

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresServer is a PostgreSQL server of a test's own, in a fresh data
// directory, on a free port of 127.0.0.1 with trust authentication, for
// tests that kill and restart it. Its data survives Restart, as a real
// server's does after a crash.
type PostgresServer struct {
	t    testing.TB
	bin  string // directory of initdb and postgres
	dir  string // holds data/ and the unix socket
	port int
	cred *syscall.Credential // the postgres user's, when the tests run as root

	mu     sync.Mutex
	proc   *os.Process   // nil while killed
	exited chan struct{} // closed when the process has exited
}

// postgresBinDir finds initdb and postgres: the newest
// /usr/lib/postgresql/*/bin (Debian keeps them off PATH), else PATH.
func postgresBinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, d := range dirs {
		if isFile(filepath.Join(d, "initdb")) && isFile(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	initdb, err := exec.LookPath("initdb")
	if err != nil {
		return "", fmt.Errorf("no initdb under /usr/lib/postgresql/*/bin nor in PATH")
	}
	d := filepath.Dir(initdb)
	if !isFile(filepath.Join(d, "postgres")) {
		return "", fmt.Errorf("no postgres binary beside %s", initdb)
	}
	return d, nil
}

func versionOf(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}

// StartPostgres initializes a data directory, starts PostgreSQL on a free
// port and waits until it answers. When the tests run as root, the server
// runs as the postgres user (PostgreSQL refuses root). It is killed and
// its directory removed in t.Cleanup. Without the binaries the test is
// skipped with the reason.
func StartPostgres(t testing.TB) *PostgresServer {
	t.Helper()
	bin, err := postgresBinDir()
	if err != nil {
		t.Skipf("PostgreSQL server binaries not installed (apt-get install postgresql): %v", err)
	}
	// Not t.TempDir: its parents are private to root, and the server may
	// run as postgres.
	dir, err := os.MkdirTemp("", "rt-pg-")
	if err != nil {
		t.Fatal(err)
	}
	s := &PostgresServer{t: t, bin: bin, dir: dir, port: FreePort(t)}
	t.Cleanup(func() {
		s.Kill()
		_ = os.RemoveAll(dir)
	})
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Skipf("running as root and no postgres user to run PostgreSQL as: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	var out strings.Builder
	initdb := s.command(&out, "initdb", "-D", s.dataDir(), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
	if err := initdb.Run(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out.String())
	}
	s.start()
	return s
}

func (s *PostgresServer) dataDir() string { return filepath.Join(s.dir, "data") }

func (s *PostgresServer) command(out *strings.Builder, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Dir = s.dir
	// Its own process group, so Kill reaches the backends too; otherwise
	// they outlive the postmaster for a moment and hold the shared memory
	// a restart needs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: s.cred}
	return cmd
}

// URL is a pgx connection string for the server's postgres database; it
// stays the same across Restart.
func (s *PostgresServer) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
}

// Kill stops the server at once (SIGKILL to the postmaster and its
// backends), as a crash would, and waits for the postmaster to exit.
// Killing a killed server does nothing.
func (s *PostgresServer) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return
	}
	_ = syscall.Kill(-s.proc.Pid, syscall.SIGKILL)
	<-s.exited
	s.proc = nil
}

// Restart starts a killed server again on the same port and data
// directory (PostgreSQL recovers from its WAL) and waits until it
// answers. It fails the test if the server is running.
func (s *PostgresServer) Restart() {
	s.t.Helper()
	s.start()
}

func (s *PostgresServer) start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		s.t.Fatalf("postgres on port %d is already running", s.port)
	}
	var (
		out     strings.Builder
		lastErr error
	)
	// Right after a kill the port or the shared memory may still be busy
	// for a moment: retry until the deadline.
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		out.Reset()
		cmd := s.command(&out, "postgres", "-D", s.dataDir(), "-p", strconv.Itoa(s.port), "-k", s.dir,
			"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200")
		if err := cmd.Start(); err != nil {
			s.t.Fatalf("starting postgres: %v", err)
		}
		exited := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(exited)
		}()
		if lastErr = s.waitReady(exited, deadline); lastErr == nil {
			s.proc, s.exited = cmd.Process, exited
			return
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		<-time.After(50 * time.Millisecond)
	}
	s.t.Fatalf("starting postgres on port %d: %v\n%s", s.port, lastErr, out.String())
}

// waitReady polls the server with SELECT 1 until it answers, the process
// exits or the deadline passes.
func (s *PostgresServer) waitReady(exited <-chan struct{}, deadline time.Time) error {
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := pgx.Connect(ctx, s.URL())
		if err == nil {
			_, err = conn.Exec(ctx, "SELECT 1")
			_ = conn.Close(ctx)
		}
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("postgres exited (last error: %v)", err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return err
		}
	}
}
