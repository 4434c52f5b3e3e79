package testsvc

import (
	"context"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

func TestRedisGivesAPrefixAndCleansItUp(t *testing.T) {
	var prefix string
	t.Run("use", func(t *testing.T) {
		client, p := Redis(t)
		prefix = p
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, k := range []string{p + "a", p + "b"} {
			if err := client.Do(ctx, client.B().Set().Key(k).Value("1").Build()).Error(); err != nil {
				t.Fatalf("SET: %v", err)
			}
		}
	})
	client, other := Redis(t)
	if other == prefix {
		t.Fatalf("two calls returned the same prefix %q", prefix)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := client.Do(ctx, client.B().Exists().Key(prefix+"a", prefix+"b").Build()).AsInt64()
	if err != nil || n != 0 {
		t.Fatalf("EXISTS after cleanup = %d, %v; want 0 keys left", n, err)
	}
}

func TestRedisServerKillAndRestartOnTheSamePort(t *testing.T) {
	s := StartRedis(t)
	addr := s.Addr()
	client := Connect(t, addr)
	ping := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return client.Do(ctx, client.B().Ping().Build()).Error()
	}
	if err := ping(); err != nil {
		t.Fatalf("PING: %v", err)
	}
	s.Kill()
	if err := ping(); err == nil {
		t.Fatal("PING succeeded on a killed server")
	}
	s.Kill() // idempotent
	s.Restart()
	if s.Addr() != addr {
		t.Fatalf("address changed from %s to %s", addr, s.Addr())
	}
	deadline := time.Now().Add(5 * time.Second)
	for ping() != nil {
		if time.Now().After(deadline) {
			t.Fatal("client did not reconnect to the restarted server")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRedisServerAOFKeepsDataUntilWiped(t *testing.T) {
	s := StartRedisAOF(t)
	get := func() (string, error) {
		client := Connect(t, s.Addr()) // a fresh client: the old one's pipe died with the server
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return client.Do(ctx, client.B().Get().Key("k").Build()).ToString()
	}
	client := Connect(t, s.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := client.Do(ctx, client.B().Set().Key("k").Value("v").Build()).Error(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	s.Kill()
	s.Restart()
	if v, err := get(); err != nil || v != "v" {
		t.Fatalf("GET after a restart = %q, %v; want the acknowledged write back", v, err)
	}
	s.Kill()
	s.Wipe()
	s.Restart()
	if _, err := get(); !rueidis.IsRedisNil(err) {
		t.Fatalf("GET after a wiped restart: %v; want nil (empty)", err)
	}
}
