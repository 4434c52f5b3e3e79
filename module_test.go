package realtime

import (
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-realtime/realtime/handlers"
)

// shutdown_spread 0 means no spread: the JSON's explicit zero survives
// the defaults of Provision and of handlers.New, so the gateway's stop
// plan closes every connection at once. An unset option keeps the
// default spread.
func TestShutdownSpreadZeroMeansNoSpread(t *testing.T) {
	budget := func(spread *caddy.Duration) (handlers.Config, time.Duration) {
		t.Helper()
		h := Handler{ShutdownSpread: spread, Name: t.Name() + "-" + time.Now().Format(time.RFC3339Nano)}
		cfg, err := h.gatewayConfig()
		if err != nil {
			t.Fatal(err)
		}
		cfg = cfg.WithDefaults() // as Provision does; New applies them again
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		gw, err := handlers.New(cfg, handlers.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = gw.Close(t.Context()) })
		return cfg, gw.ShutdownBudget()
	}
	zero := caddy.Duration(0)
	cfg, none := budget(&zero)
	if cfg.ShutdownSpread > 0 {
		t.Fatalf("shutdown_spread 0 became a spread of %s", cfg.ShutdownSpread)
	}
	_, def := budget(nil)
	if def-none < handlers.DefaultShutdownSpread-time.Millisecond {
		t.Fatalf("stop budget %s without a spread and %s by default: want the default spread, %s, between them", none, def, handlers.DefaultShutdownSpread)
	}
}

// Every enumeration is copied as written; handlers.Config refuses what
// it does not know, naming what to write.
func TestGatewayConfigLeavesEnumerationsToHandlers(t *testing.T) {
	h := Handler{Limits: &LimitsConfig{SlowConsumer: "block"}}
	cfg, err := h.gatewayConfig()
	if err != nil {
		t.Fatalf("gatewayConfig checked an enumeration: %v", err)
	}
	if err := cfg.WithDefaults().Validate(); err == nil || err.Error() != "limits: unknown slow_consumer policy 'block': want close or drop" {
		t.Fatalf("Validate = %v, want the unknown slow_consumer policy named", err)
	}
}
