package realtime

import (
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-realtime/realtime/handlers"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI adds the gateways' HTTP API to Caddy's admin endpoint, under
// /realtime/, so operators reach stats, topics, presence and disconnects
// without exposing the public api path:
//
//	GET  /realtime/stats                      every gateway's /stats, by name
//	ANY  /realtime/<route>?gateway=<name>&…   that gateway's API route
//
// <route> is any route of the public API (docs/api.md), such as presence
// or disconnect; gateway may be left out while one gateway runs. Caddy's admin
// endpoint already decides who may call it, so no API key is asked for.
// Caddy loads admin.api modules by itself: nothing to configure.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "admin.api.realtime", New: func() caddy.Module { return new(AdminAPI) }}
}

// Routes implements caddy.AdminRouter.
func (a AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/realtime/", Handler: caddy.AdminHandlerFunc(a.serve)}}
}

func (AdminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	route := strings.TrimPrefix(r.URL.Path, "/realtime")
	live := runningGateways()
	if route == "/stats" && !r.URL.Query().Has("gateway") {
		if r.Method != http.MethodGet {
			return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Message: "GET only"}
		}
		out := make(map[string]any, len(live))
		for name, g := range live {
			out[name] = g.Stats()
		}
		w.Header().Set("Content-Type", "application/json")
		return json.NewEncoder(w).Encode(out)
	}
	name := r.URL.Query().Get("gateway")
	if name == "" && len(live) == 1 {
		for n := range live {
			name = n
		}
	}
	g, ok := live[name]
	if !ok {
		names := make([]string, 0, len(live))
		for n := range live {
			names = append(names, n)
		}
		sort.Strings(names)
		return caddy.APIError{HTTPStatus: http.StatusNotFound,
			Message: "no gateway named " + strconv.Quote(name) + " (running: " + strings.Join(names, ", ") + "); add ?gateway=<name>"}
	}
	g.ServeAdmin(w, r, route)
	return nil
}

// runningGateways returns the running gateways by name: during a reload
// that replaced one, the newest of its name.
func runningGateways() map[string]*handlers.Gateway {
	liveGatewaysMu.Lock()
	defer liveGatewaysMu.Unlock()
	out := make(map[string]*handlers.Gateway, len(liveGateways))
	for name, ps := range liveGateways {
		if len(ps) > 0 {
			out[name] = ps[len(ps)-1].Gateway
		}
	}
	return out
}

// Interface guards
var _ caddy.AdminRouter = AdminAPI{}
