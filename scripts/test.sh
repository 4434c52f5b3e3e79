#!/usr/bin/env bash
# The one command that runs every test of caddy-realtime on a fresh machine.
#
#   ./scripts/test.sh            # everything: lint, unit, race, integration (real Caddy processes)
#   ./scripts/test.sh -short     # unit tests only (no Caddy processes, no Redis/Postgres)
#
# It needs Go >= 1.26. It makes sure Redis (127.0.0.1:6379) and PostgreSQL
# (127.0.0.1:5432, trust auth, database "test") are running, installing them
# from Debian packages when they are missing and this runs as root; when it
# cannot, it says exactly what is missing. Tests that kill or restart a
# server start their own throwaway redis-server/postgres on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."

short=""
[[ "${1:-}" == "-short" ]] && short="-short"

say() { printf '\n== %s\n' "$*"; }

command -v go >/dev/null || { echo "missing: Go >= 1.26 (https://go.dev/dl/)"; exit 1; }

apt_install() {
	if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
		say "installing $*"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null || {
			apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
		}
	else
		return 1
	fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ensure_redis() {
	port_open 6379 && return 0
	command -v redis-server >/dev/null || apt_install redis-server || {
		echo "missing: redis-server (Debian: apt-get install redis-server), needed on 127.0.0.1:6379"; return 1; }
	mkdir -p /tmp/realtime-redis
	redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
		--dir /tmp/realtime-redis --logfile /tmp/realtime-redis/redis.log
	for _ in $(seq 50); do port_open 6379 && return 0; sleep 0.1; done
	echo "redis-server did not start on 127.0.0.1:6379 (see /tmp/realtime-redis/redis.log)"; return 1
}

ensure_postgres() {
	port_open 5432 && return 0
	if ! ls /etc/postgresql >/dev/null 2>&1; then
		apt_install postgresql || {
			echo "missing: PostgreSQL 15 (Debian: apt-get install postgresql), needed on 127.0.0.1:5432 with trust auth and database test"; return 1; }
	fi
	local ver
	ver=$(ls /etc/postgresql | sort -V | tail -n1)
	pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
	for _ in $(seq 100); do port_open 5432 && break; sleep 0.1; done
	port_open 5432 || { echo "postgres did not start on 127.0.0.1:5432"; return 1; }
	su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='test'\"" | grep -q 1 ||
		su postgres -c "createdb test" || true
}

if [[ -z "$short" ]]; then
	say "services"
	ensure_redis && echo "redis: 127.0.0.1:6379"
	ensure_postgres && echo "postgres: 127.0.0.1:5432"
fi

# Caddy computes its config and data dirs at init: keep test runs off $HOME.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export XDG_DATA_HOME="$tmp/data" XDG_CONFIG_HOME="$tmp/config"

say "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
[[ -z "$unformatted" ]] || { echo "gofmt would change: $unformatted"; exit 1; }

say "go vet"
go vet ./...

say "staticcheck"
if GOFLAGS= go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 -version >/dev/null 2>&1; then
	GOFLAGS= go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
else
	echo "staticcheck unavailable (no module proxy?): skipped"
fi

say "go test -race ${short}"
go test -race $short -count=1 -timeout 20m ./...

if [[ -z "$short" ]]; then
	# The multi-instance Caddy tests once more, on a Redis Cluster of 3
	# masters and 3 replicas the harness starts (redis-server
	# --cluster-enabled, redis-cli --cluster create): every feature with
	# sharded pub/sub. About 90 s.
	say "multi-instance tests on a Redis Cluster"
	REALTIME_TEST_REDIS_CLUSTER=1 go test -race -count=1 -timeout 10m \
		-run 'TestCluster|TestNotifyCluster|TestFaultGatewaySIGKILLOneOfThree' ./caddytest/
fi

# ---- browser tier (begin) ------------------------------------------------
# Headless Chromium drives the demo (Caddyfile.example) against a Caddy built
# from ./cmd/caddy, with both client generations: e2e/e2e.test.mjs. It needs
# Node.js >= 20 and Debian's Chromium (/usr/bin/chromium, or $CHROMIUM_PATH),
# installed from Debian packages when missing and this runs as root; the node
# packages (playwright-core, esbuild, svelte-adapter-uws 0.3.4) come from npm
# (npm install from e2e/package-lock.json). Where Chromium or Node.js cannot be had, the tier is
# skipped with a message (every e2e/*.test.mjs runs); REALTIME_E2E=require makes that a failure and
# REALTIME_E2E=skip skips the tier. Failed tests leave screenshots and logs in
# e2e/artifacts/.
browser_tier() {
	local chromium=${CHROMIUM_PATH:-/usr/bin/chromium} why=""
	if [[ ${REALTIME_E2E:-} == skip ]]; then
		echo "browser tier skipped: REALTIME_E2E=skip"
		return 0
	fi
	if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
		apt_install nodejs npm || true
	fi
	if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
		why="Node.js >= 20 and npm (Debian: apt-get install nodejs npm)"
	elif (( $(node -p 'parseInt(process.versions.node)') < 20 )); then
		why="Node.js >= 20 (found $(node --version))"
	elif [[ ! -x $chromium ]]; then
		apt_install chromium || true
		[[ -x $chromium ]] || why="Chromium at $chromium (Debian: apt-get install chromium, as root)"
	fi
	if [[ -n $why ]]; then
		echo "browser tier SKIPPED: missing $why"
		[[ ${REALTIME_E2E:-} == require ]] && { echo "REALTIME_E2E=require: failing"; return 1; }
		return 0
	fi
	echo "chromium: $chromium ($("$chromium" --version 2>/dev/null | head -n1))"
	echo "node: $(node --version), npm: $(npm --version)"
	(
		cd e2e
		# Install from the lockfile when it changed since the last install.
		# (npm install, not npm ci: svelte-adapter-uws 0.3.4 has an optional
		# git dependency, uWebSockets.js, that npm leaves out of the lockfile,
		# so npm ci refuses the lockfile as out of sync.)
		if ! cmp -s package-lock.json node_modules/.installed-lock 2>/dev/null; then
			npm install --no-save --no-audit --no-fund --loglevel=error
			cp package-lock.json node_modules/.installed-lock
		fi
		node build.mjs
	)
	go build -o "$tmp/caddy" ./cmd/caddy
	(
		cd e2e
		# e2e.test.mjs empties e2e/artifacts/ when it starts, and node --test
		# sorts its files (dashboard.test.mjs would come first): it runs
		# alone, first, so the other files' artifacts (the dashboard's
		# screenshot in e2e/artifacts/dashboard/) are kept.
		others=()
		for f in ./*.test.mjs; do
			[[ $f == ./e2e.test.mjs ]] || others+=("$f")
		done
		export CHROMIUM_PATH=$chromium REALTIME_CADDY_BIN="$tmp/caddy"
		rc=0
		node --test ./e2e.test.mjs || rc=1
		if (( ${#others[@]} )); then
			node --test "${others[@]}" || rc=1
		fi
		exit $rc
	) || { echo "browser tests failed: screenshots and logs in e2e/artifacts/"; return 1; }
}

if [[ -z "$short" ]]; then
	say "browser tier (e2e/)"
	browser_tier
fi
# ---- browser tier (end) --------------------------------------------------

say "all tests passed"
