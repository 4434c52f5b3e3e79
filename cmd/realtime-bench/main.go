// Command realtime-bench is the gateway's load tool (docs/performance.md):
// the same tool as `caddy realtime bench`, as a binary of its own for load
// machines without Caddy.
package main

import (
	"os"

	"github.com/caddy-realtime/realtime/internal/benchtool"
)

func main() { os.Exit(benchtool.Main(os.Args[1:])) }
