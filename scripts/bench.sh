#!/usr/bin/env bash
# Load figures of our gateway on this machine (README "Performance").
#
#   ./scripts/bench.sh                      # every scenario
#   ./scripts/bench.sh idle fanout          # some of them
#   PROFILE=1 ./scripts/bench.sh fanout     # also CPU/alloc profiles from Caddy's pprof
#
# Scenarios: idle (5k and 10k connections), idle-presence (10k, 3 topics,
# one with presence), fanout (1 topic × 2k and 10k subscribers, 100-byte
# payloads, rate ramped until p99 > 50 ms, then a closed-loop max step),
# connect (10k), reconnect (10k with resume), cluster (1k subscribers on
# one of two instances sharing a throwaway redis-server, publishes through
# the other: closed-loop peak, then latency at half of it; not in the
# default set, run `./scripts/bench.sh cluster`), compression (1 topic ×
# 2k subscribers, 2 KiB JSON payloads at a fixed rate, without and with
# permessage-deflate: server CPU and bytes written per delivery; not in the
# default set either).
#
# Each scenario gets a fresh Caddy built from ./cmd/caddy (or CADDY_BIN), on loopback
# ports 18080 (admin 12999); JSON reports and profiles land in $BENCH_DIR
# (default: a new /tmp/realtime-bench.* directory). Sizes: IDLE_N,
# PRESENCE_N, FANOUT_N, CONNECT_N, RECONNECT_N (space-separated lists).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh

: "${IDLE_N:=5000 10000}"
: "${PRESENCE_N:=10000}"
: "${FANOUT_N:=2000 10000}"
: "${CONNECT_N:=10000}"
: "${RECONNECT_N:=10000}"
: "${CLUSTER_N:=1000}"
: "${COMPRESS_N:=2000}"
: "${COMPRESS_RATE:=25}"
: "${COMPRESS_SIZE:=2048}"
: "${CLUSTER_TOPIC:=fanout}"
: "${RAMP_FACTOR:=1.3}"
: "${STEP:=5s}"
: "${PROFILE:=}"

scenarios=("$@")
[[ ${#scenarios[@]} -eq 0 ]] && scenarios=(idle idle-presence fanout connect reconnect)

bench_setup
PROF_DIR="$BENCH_DIR/profiles"
mkdir -p "$PROF_DIR"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# profile_cpu NAME SECONDS DELAY: CPU and allocation profiles (a delta over
# the same window) of the running gateway, in the background after DELAY
# seconds; profile_wait waits for them (a bare `wait` would wait for Caddy).
PROF_PIDS=()
profile_cpu() {
	[[ -n $PROFILE ]] || return 0
	(sleep "$3" && curl -sf -o "$PROF_DIR/$1.cpu.pprof" "http://localhost:$RT_ADMIN_PORT/debug/pprof/profile?seconds=$2") &
	PROF_PIDS+=($!)
	(sleep "$3" && curl -sf -o "$PROF_DIR/$1.allocs-delta.pprof" "http://localhost:$RT_ADMIN_PORT/debug/pprof/allocs?seconds=$2") &
	PROF_PIDS+=($!)
}
profile_wait() {
	for p in "${PROF_PIDS[@]}"; do wait "$p" || true; done
	PROF_PIDS=()
}
profile_heap() {
	[[ -n $PROFILE ]] || return 0
	curl -sf -o "$PROF_DIR/$1.heap.pprof" "http://localhost:$RT_ADMIN_PORT/debug/pprof/heap?gc=1"
	curl -sf -o "$PROF_DIR/$1.allocs.pprof" "http://localhost:$RT_ADMIN_PORT/debug/pprof/allocs"
	curl -sf -o "$PROF_DIR/$1.goroutine.txt" "http://localhost:$RT_ADMIN_PORT/debug/pprof/goroutine?debug=1"
}

for s in "${scenarios[@]}"; do
	case $s in
	idle)
		for n in $IDLE_N; do
			say "idle: $n connections"
			start_ours
			hold=0s
			[[ -n $PROFILE ]] && hold=8s
			bench idle -n "$n" -connect-rate 2000 -settle 10s -hold "$hold" $(ours_args) -o "$BENCH_DIR/idle-$n.json" &
			bp=$!
			if [[ -n $PROFILE ]]; then
				# While the connections are held open after the reading.
				sleep $((n / 2000 + 21))
				profile_heap "idle-$n"
			fi
			wait "$bp"
		done
		;;
	idle-presence)
		for n in $PRESENCE_N; do
			say "idle-presence: $n connections × 3 topics, presence rooms of 10"
			start_ours
			hold=0s
			[[ -n $PROFILE ]] && hold=8s
			bench idle-presence -n "$n" -connect-rate 2000 -settle 10s -hold "$hold" $(ours_args) -o "$BENCH_DIR/idle-presence-$n.json" &
			bp=$!
			if [[ -n $PROFILE ]]; then
				sleep $((n / 2000 + 21))
				profile_heap "idle-presence-$n"
			fi
			wait "$bp"
		done
		;;
	fanout)
		for n in $FANOUT_N; do
			say "fanout: 1 topic × $n subscribers, 100-byte payloads"
			start_ours
			start=$(awk "BEGIN{r=20000/$n; print (r<1)?1:r}")
			bench fanout -n "$n" -size 100 -ramp -rate-start "$start" -ramp-factor "$RAMP_FACTOR" \
				-duration "$STEP" -warmup 2s $(ours_args) -o "$BENCH_DIR/fanout-$n.json"
			say "fanout: $n subscribers, closed loop (2 publishes in flight)"
			profile_cpu "fanout-$n" 8 $((n / 2000 + 5))
			bench fanout -n "$n" -size 100 -rate max -window 2 -duration 10s -warmup 2s $(ours_args) -o "$BENCH_DIR/fanout-max-$n.json"
			profile_wait
			profile_heap "fanout-$n"
		done
		;;
	connect)
		for n in $CONNECT_N; do
			say "connect: $n connections (upgrade + welcome + subscribe-batch ack)"
			start_ours
			bench connect -n "$n" -concurrency 256 $(ours_args) -o "$BENCH_DIR/connect-$n.json"
		done
		;;
	reconnect)
		for n in $RECONNECT_N; do
			say "reconnect: $n clients close and resume on a replayed topic"
			start_ours
			bench reconnect -n "$n" -concurrency 256 -events 5 -missed 5 $(ours_args) -o "$BENCH_DIR/reconnect-$n.json"
		done
		;;
	cluster)
		# Two instances sharing a throwaway redis-server: subscribers on the
		# second, publishes through the first's API, so every delivery
		# crosses Redis. First the closed-loop peak, then a fixed rate at
		# half of it for the latency figures.
		for n in $CLUSTER_N; do
			say "cluster: 1 topic × $n subscribers on instance B, publishes through instance A and Redis"
			start_cluster
			bench fanout -n "$n" -size 100 -topic "$CLUSTER_TOPIC" -rate max -window 2 -duration 10s -warmup 2s $(cluster_args) -o "$BENCH_DIR/cluster-max-$n.json"
			peak=$(python3 -c "import json,sys; s=json.load(open(sys.argv[1]))['steps'][-1]; print(max(1, round(s['published_per_s']/2)))" "$BENCH_DIR/cluster-max-$n.json")
			say "cluster: $n subscribers at half of the peak: $peak publishes/s"
			bench fanout -n "$n" -size 100 -topic "$CLUSTER_TOPIC" -rate "$peak" -duration 10s -warmup 2s $(cluster_args) -o "$BENCH_DIR/cluster-half-$n.json"
			stop_cluster
		done
		;;
	compression)
		# The same fan-out twice: uncompressed, then with `compression` on
		# and every client offering permessage-deflate. A fixed rate keeps
		# the bench's own inflating off the server's cores' budget.
		sed 's/^\t\tkeepalive 60s/\t\tkeepalive 60s\n\t\tcompression/' "$BENCH_DIR/Caddyfile" >"$BENCH_DIR/Caddyfile.deflate"
		grep -q $'^\t\tcompression' "$BENCH_DIR/Caddyfile.deflate" || { echo "compression: could not add the option to the Caddyfile" >&2; exit 1; }
		for mode in plain deflate; do
			say "compression: 1 topic × $COMPRESS_N subscribers, $COMPRESS_SIZE-byte JSON at $COMPRESS_RATE/s: $mode"
			flags=""
			if [[ $mode == deflate ]]; then
				start_ours "$BENCH_DIR/Caddyfile.deflate"
				flags=-compress
			else
				start_ours
			fi
			profile_cpu "compression-$mode" 8 $((COMPRESS_N / 2000 + 6))
			bench fanout -n "$COMPRESS_N" -size "$COMPRESS_SIZE" -shape json -rate "$COMPRESS_RATE" -duration 10s -warmup 2s \
				$flags $(ours_args) -o "$BENCH_DIR/compression-$mode.json"
			profile_wait
		done
		bench compare "plain=$BENCH_DIR/compression-plain.json" "deflate=$BENCH_DIR/compression-deflate.json"
		;;
	*)
		echo "unknown scenario $s (idle, idle-presence, fanout, connect, reconnect, cluster, compression)" >&2
		exit 2
		;;
	esac
done
stop_server
say "reports in $BENCH_DIR"
if [[ -n $PROFILE ]]; then
	for f in "$PROF_DIR"/*.cpu.pprof; do
		[[ -s $f ]] || continue
		say "top CPU: $f"
		go tool pprof -top -nodecount 25 "$f" 2>/dev/null | sed -n '4,32p'
	done
	for f in "$PROF_DIR"/*.allocs-delta.pprof "$PROF_DIR"/*.allocs.pprof; do
		[[ -s $f ]] || continue
		say "top alloc space: $f"
		go tool pprof -sample_index=alloc_space -top -nodecount 20 "$f" 2>/dev/null | sed -n '4,26p'
	done
fi
