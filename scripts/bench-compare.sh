#!/usr/bin/env bash
# Our gateway against Centrifugo OSS, same machine, same load tool, same N,
# one after the other in one run (a shared machine is noisy: compare the
# ratios, not the absolute figures of different runs).
#
#   ./scripts/bench-compare.sh              # idle 5k and 10k, fanout 2k and 10k
#   IDLE_N=10000 FANOUT_N=10000 ./scripts/bench-compare.sh
#   ROUNDS=2 ./scripts/bench-compare.sh     # run each pair twice (ours, theirs, ours, theirs)
#   PARTS="burst compression" ./scripts/bench-compare.sh
#
# Parts (PARTS, default "idle fanout"): idle; fanout (ramp, then closed
# loop with 2 publishes in flight); burst (closed loop with 40 publishes in
# flight, 100-byte payloads, BURST_N subscribers); compression (2 000
# subscribers, 2 KiB JSON at a fixed rate, without and with permessage-
# deflate on both servers: CPU and bytes written per delivery).
#
# Centrifugo v6.9.1 is installed with `go install` into $BENCH_DIR/bin
# (not into the repository); set CENTRIFUGO=/path/to/centrifugo to reuse a
# binary. Its config: anonymous connect allowed, subscribe allowed for
# anonymous clients, HTTP API key, 4 MiB client queue (our
# max_backpressure), Prometheus and pprof on the internal port.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh

: "${IDLE_N:=5000 10000}"
: "${FANOUT_N:=2000 10000}"
: "${ROUNDS:=1}"
: "${PARTS:=idle fanout}"
: "${BURST_N:=2000 10000}"
: "${COMPRESS_N:=2000}"
: "${COMPRESS_RATE:=25}"
: "${COMPRESS_SIZE:=2048}"
: "${RAMP_FACTOR:=1.3}"
: "${STEP:=5s}"
: "${CENTRIFUGO_VERSION:=v6.9.1}"

bench_setup
if [[ -z ${CENTRIFUGO:-} ]]; then
	CENTRIFUGO=$BENCH_DIR/bin/centrifugo
	if [[ ! -x $CENTRIFUGO ]]; then
		say "installing Centrifugo $CENTRIFUGO_VERSION (go install, a few minutes the first time)"
		GOBIN=$BENCH_DIR/bin go install "github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION"
	fi
fi
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2

has_part() { [[ " $PARTS " == *" $1 "* ]]; }

# The compression pair: the bench's configs with compression turned on.
sed 's/^\t\tkeepalive 60s/\t\tkeepalive 60s\n\t\tcompression/' "$BENCH_DIR/Caddyfile" >"$BENCH_DIR/Caddyfile.deflate"
python3 - "$BENCH_DIR/centrifugo.json" "$BENCH_DIR/centrifugo-deflate.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["websocket"] = {"compression": True, "compression_min_size": 256, "compression_level": 1}
json.dump(c, open(sys.argv[2], "w"), indent=2)
PY

for round in $(seq "$ROUNDS"); do
	if has_part idle; then
		for n in $IDLE_N; do
			say "round $round: idle, $n connections: ours"
			start_ours
			bench idle -n "$n" -connect-rate 2000 -settle 10s $(ours_args) -o "$BENCH_DIR/ours-idle-$n-r$round.json"
			say "round $round: idle, $n connections: centrifugo"
			start_centrifugo
			bench idle -n "$n" -connect-rate 2000 -settle 10s $(centrifugo_args) -o "$BENCH_DIR/cf-idle-$n-r$round.json"
			say "idle, $n connections (round $round)"
			bench compare "ours=$BENCH_DIR/ours-idle-$n-r$round.json" "centrifugo=$BENCH_DIR/cf-idle-$n-r$round.json"
		done
	fi
	if has_part fanout; then
		for n in $FANOUT_N; do
			start=$(awk "BEGIN{r=20000/$n; print (r<1)?1:r}")
			say "round $round: fanout, 1 topic × $n subscribers: ours"
			start_ours
			bench fanout -n "$n" -size 100 -ramp -rate-start "$start" -ramp-factor "$RAMP_FACTOR" -duration "$STEP" -warmup 2s \
				$(ours_args) -o "$BENCH_DIR/ours-fanout-$n-r$round.json"
			say "round $round: fanout, 1 topic × $n subscribers: centrifugo"
			start_centrifugo
			bench fanout -n "$n" -size 100 -ramp -rate-start "$start" -ramp-factor "$RAMP_FACTOR" -duration "$STEP" -warmup 2s \
				$(centrifugo_args) -o "$BENCH_DIR/cf-fanout-$n-r$round.json"
			say "round $round: fanout max (closed loop), $n subscribers: ours"
			start_ours
			bench fanout -n "$n" -size 100 -rate max -window 2 -duration 10s -warmup 2s \
				$(ours_args) -o "$BENCH_DIR/ours-fanoutmax-$n-r$round.json"
			say "round $round: fanout max (closed loop), $n subscribers: centrifugo"
			start_centrifugo
			bench fanout -n "$n" -size 100 -rate max -window 2 -duration 10s -warmup 2s \
				$(centrifugo_args) -o "$BENCH_DIR/cf-fanoutmax-$n-r$round.json"
			say "fanout, $n subscribers, highest ramp step with p99 ≤ 50 ms (round $round)"
			bench compare "ours=$BENCH_DIR/ours-fanout-$n-r$round.json" "centrifugo=$BENCH_DIR/cf-fanout-$n-r$round.json"
			say "fanout, $n subscribers, closed loop (round $round)"
			bench compare "ours=$BENCH_DIR/ours-fanoutmax-$n-r$round.json" "centrifugo=$BENCH_DIR/cf-fanoutmax-$n-r$round.json"
		done
	fi
	if has_part burst; then
		for n in $BURST_N; do
			for who in ours cf; do
				say "round $round: burst (40 publishes in flight), $n subscribers: $who"
				if [[ $who == ours ]]; then start_ours; args=$(ours_args); else start_centrifugo; args=$(centrifugo_args); fi
				bench fanout -n "$n" -size 100 -rate max -window 40 -duration 10s -warmup 2s \
					$args -o "$BENCH_DIR/$who-burst-$n-r$round.json"
			done
			say "burst, $n subscribers (round $round)"
			bench compare "ours=$BENCH_DIR/ours-burst-$n-r$round.json" "centrifugo=$BENCH_DIR/cf-burst-$n-r$round.json"
		done
	fi
	if has_part compression; then
		for who in ours cf; do
			for mode in plain deflate; do
				say "round $round: $COMPRESS_SIZE-byte JSON at $COMPRESS_RATE/s to $COMPRESS_N subscribers: $who $mode"
				flags=""
				[[ $mode == deflate ]] && flags=-compress
				if [[ $who == ours ]]; then
					if [[ $mode == deflate ]]; then start_ours "$BENCH_DIR/Caddyfile.deflate"; else start_ours; fi
					args=$(ours_args)
				else
					if [[ $mode == deflate ]]; then start_centrifugo "$BENCH_DIR/centrifugo-deflate.json"; else start_centrifugo; fi
					args=$(centrifugo_args)
				fi
				bench fanout -n "$COMPRESS_N" -size "$COMPRESS_SIZE" -shape json -rate "$COMPRESS_RATE" -duration 10s -warmup 2s \
					$flags $args -o "$BENCH_DIR/$who-$mode-r$round.json"
			done
		done
		say "compression (round $round)"
		bench compare "ours=$BENCH_DIR/ours-plain-r$round.json" "ours-deflate=$BENCH_DIR/ours-deflate-r$round.json" \
			"centrifugo=$BENCH_DIR/cf-plain-r$round.json" "centrifugo-deflate=$BENCH_DIR/cf-deflate-r$round.json"
	fi
done
stop_server
say "reports in $BENCH_DIR (ours-*.json, cf-*.json; realtime-bench compare A=x.json B=y.json)"
