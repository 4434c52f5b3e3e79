// Command caddy is Caddy with its standard modules and caddy-realtime, so
// `go run ./cmd/caddy run --config Caddyfile.example` works without xcaddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-realtime/realtime"
)

func main() {
	caddycmd.Main()
}
