# Shared by scripts/bench.sh and scripts/bench-compare.sh (sourced, not run).
#
# Starts and stops the servers under test on loopback ports that nothing
# else on the machine should hold (a second server on the same port would
# share it through SO_REUSEPORT and answer half the upgrades).

: "${RT_PORT:=18080}"          # our gateway
: "${RT_ADMIN_PORT:=12999}"    # its Caddy admin: /metrics, /debug/pprof/
: "${CF_PORT:=18000}"          # Centrifugo clients
: "${CF_INTERNAL_PORT:=18001}" # Centrifugo API, /metrics, /debug/pprof/
: "${CF_API_KEY:=bench-key}"
: "${SOURCE_IPS:=127.0.0.2-127.0.0.9}" # ~28k ephemeral ports each

say() { printf '\n== %s\n' "$*" >&2; }

port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

wait_http() { # url [tries]
	for _ in $(seq "${2:-100}"); do
		curl -sf -o /dev/null "$1" && return 0
		sleep 0.1
	done
	echo "no answer from $1" >&2
	return 1
}

# bench_setup: a work directory, the gateway and the load tool built, and
# the file limit raised as far as this shell may.
bench_setup() {
	BENCH_DIR=${BENCH_DIR:-$(mktemp -d /tmp/realtime-bench.XXXXXX)}
	mkdir -p "$BENCH_DIR"
	say "building into $BENCH_DIR"
	if [[ -n ${CADDY_BIN:-} ]]; then
		CADDY=$CADDY_BIN # a gateway built elsewhere, e.g. from a clean checkout of a commit
	else
		CADDY=$BENCH_DIR/caddy
		go build -o "$CADDY" ./cmd/caddy
	fi
	go build -o "$BENCH_DIR/realtime-bench" ./cmd/realtime-bench
	ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
	if [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt 12000 ]]; then
		echo "warning: ulimit -n is $(ulimit -n); 10k connections need more (raise the hard limit)" >&2
	fi
	cat >"$BENCH_DIR/Caddyfile" <<EOF
{
	admin localhost:$RT_ADMIN_PORT
	persist_config off
	grace_period 2s
	auto_https off
}

http://:$RT_PORT {
	realtime {
		api /_realtime
		origins *
		keepalive 60s
		limits {
			upgrade_rate off
			max_backpressure 4MiB
			inbound_rate off
		}
		replay replay:* {
			size 1000
		}
		presence presence:*
	}
}
EOF
	cat >"$BENCH_DIR/centrifugo.json" <<EOF
{
  "http_server": {"address": "127.0.0.1", "port": $CF_PORT, "internal_address": "127.0.0.1", "internal_port": "$CF_INTERNAL_PORT"},
  "log": {"level": "error"},
  "client": {
    "allow_anonymous_connect_without_token": true,
    "allowed_origins": ["*"],
    "queue_max_size": 4194304
  },
  "channel": {"without_namespace": {"allow_subscribe_for_anonymous": true, "allow_subscribe_for_client": true}},
  "http_api": {"key": "$CF_API_KEY"},
  "prometheus": {"enabled": true},
  "debug": {"enabled": true}
}
EOF
	SERVER_PID=""
	trap bench_cleanup EXIT
}

bench_cleanup() {
	stop_server
	stop_cluster
}

stop_server() {
	if [[ -n ${SERVER_PID:-} ]]; then
		kill "$SERVER_PID" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$SERVER_PID" 2>/dev/null || true
		wait "$SERVER_PID" 2>/dev/null || true
		SERVER_PID=""
	fi
}

# start_ours [CADDYFILE]: a fresh gateway process (memory figures need a
# fresh heap), on the bench's Caddyfile unless another is named.
start_ours() {
	stop_server
	for p in "$RT_PORT" "$RT_ADMIN_PORT"; do
		port_busy "$p" && { echo "port $p is taken: set RT_PORT / RT_ADMIN_PORT" >&2; return 1; }
	done
	"$CADDY" run --config "${1:-$BENCH_DIR/Caddyfile}" --adapter caddyfile >>"$BENCH_DIR/caddy.log" 2>&1 &
	SERVER_PID=$!
	wait_http "http://127.0.0.1:$RT_PORT/_realtime/health"
	wait_http "http://localhost:$RT_ADMIN_PORT/metrics"
}

# start_centrifugo [CONFIG]: a fresh Centrifugo process; CENTRIFUGO names
# the binary.
start_centrifugo() {
	stop_server
	for p in "$CF_PORT" "$CF_INTERNAL_PORT"; do
		port_busy "$p" && { echo "port $p is taken: set CF_PORT / CF_INTERNAL_PORT" >&2; return 1; }
	done
	"$CENTRIFUGO" -c "${1:-$BENCH_DIR/centrifugo.json}" >>"$BENCH_DIR/centrifugo.log" 2>&1 &
	SERVER_PID=$!
	wait_http "http://127.0.0.1:$CF_INTERNAL_PORT/metrics"
}

# start_cluster: two fresh gateways (A on RT_PORT, B on RT_PORT+2) sharing
# a throwaway redis-server on BENCH_REDIS_PORT.
: "${BENCH_REDIS_PORT:=16379}"
start_cluster() {
	stop_server
	stop_cluster
	redis-server --port "$BENCH_REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
		>>"$BENCH_DIR/redis.log" 2>&1 &
	REDIS_PID=$!
	for i in 0 2; do
		sed -e "s/admin localhost:$RT_ADMIN_PORT/admin localhost:$((RT_ADMIN_PORT - i))/" \
			-e "s/http:\/\/:$RT_PORT/http:\/\/:$((RT_PORT + i))/" \
			-e "s/^\tauto_https off/\tauto_https off\n\trealtime {\n\t\tredis redis:\/\/127.0.0.1:$BENCH_REDIS_PORT\n\t}/" \
			-e "s/replay replay:\* {/replay replay:* {\n\t\t\tstore redis/" \
			"$BENCH_DIR/Caddyfile" >"$BENCH_DIR/Caddyfile.$i"
		"$CADDY" run --config "$BENCH_DIR/Caddyfile.$i" --adapter caddyfile >>"$BENCH_DIR/caddy-$i.log" 2>&1 &
		CLUSTER_PIDS+=($!)
		wait_http "http://127.0.0.1:$((RT_PORT + i))/_realtime/health"
	done
}
CLUSTER_PIDS=()
stop_cluster() {
	for p in "${CLUSTER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${CLUSTER_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	CLUSTER_PIDS=()
	if [[ -n ${REDIS_PID:-} ]]; then
		kill "$REDIS_PID" 2>/dev/null || true
		wait "$REDIS_PID" 2>/dev/null || true
		REDIS_PID=""
	fi
}
cluster_args() {
	echo -target "ws://127.0.0.1:$((RT_PORT + 2))/ws" -admin "http://localhost:$((RT_ADMIN_PORT - 2))" \
		-pid "${CLUSTER_PIDS[1]}" -publish-via "http://127.0.0.1:$RT_PORT/_realtime" -source-ips "$SOURCE_IPS"
}

# Load-tool arguments for each server.
ours_args() {
	echo -target "ws://127.0.0.1:$RT_PORT/ws" -admin "http://localhost:$RT_ADMIN_PORT" -pid "$SERVER_PID" -source-ips "$SOURCE_IPS"
}
centrifugo_args() {
	echo -proto centrifugo -target "ws://127.0.0.1:$CF_PORT/connection/websocket" \
		-api "http://127.0.0.1:$CF_INTERNAL_PORT/api" -api-key "$CF_API_KEY" \
		-admin "http://127.0.0.1:$CF_INTERNAL_PORT" -pid "$SERVER_PID" -source-ips "$SOURCE_IPS"
}

bench() { "$BENCH_DIR/realtime-bench" "$@"; }
