#!/usr/bin/env bash
# A tiny "app server" for the demo's todo list: it publishes created /
# updated / deleted events to the topic `todos` through the gateway's HTTP API,
# the way your backend would after changing its database.
#
#   ./demo/todo.sh add "Water the plants"     # prints the new todo's id
#   ./demo/todo.sh done <id> "Water the plants"
#   ./demo/todo.sh undo <id> "Water the plants"
#   ./demo/todo.sh rm <id>
#
# REALTIME_URL (default http://localhost:8080/_realtime) is the API, and
# REALTIME_API_KEY its key when Caddy has one.
set -euo pipefail

api=${REALTIME_URL:-http://localhost:8080/_realtime}

usage() { sed -n '6,9s/^# //p' "$0" >&2; exit 2; }

# JSON string of $1 (quotes, backslashes and control characters escaped).
json_string() {
	local s=$1 out="" c i
	for ((i = 0; i < ${#s}; i++)); do
		c=${s:i:1}
		case $c in
		'"') out+='\"' ;;
		'\') out+='\\' ;;
		$'\n') out+='\n' ;;
		$'\t') out+='\t' ;;
		$'\r') out+='\r' ;;
		*) if [[ $c < ' ' ]]; then printf -v c '\\u%04x' "'$c"; fi; out+=$c ;;
		esac
	done
	printf '"%s"' "$out"
}

publish() { # event data
	local auth=()
	[[ -n ${REALTIME_API_KEY:-} ]] && auth=(-H "Authorization: Bearer $REALTIME_API_KEY")
	curl -fsS "${auth[@]}" -H 'Content-Type: application/json' \
		-d "{\"topic\":\"todos\",\"event\":\"$1\",\"data\":$2}" "$api/publish" >/dev/null
}

[[ $# -ge 1 ]] || usage
case $1 in
add)
	[[ $# -eq 2 ]] || usage
	id="t$(date +%s)-$RANDOM$RANDOM"
	publish created "{\"id\":\"$id\",\"title\":$(json_string "$2"),\"done\":false}"
	echo "$id"
	;;
done | undo)
	[[ $# -eq 3 ]] || usage
	done=false
	[[ $1 == done ]] && done=true
	publish updated "{\"id\":$(json_string "$2"),\"title\":$(json_string "$3"),\"done\":$done}"
	;;
rm)
	[[ $# -eq 2 ]] || usage
	publish deleted "{\"id\":$(json_string "$2")}"
	;;
*) usage ;;
esac
