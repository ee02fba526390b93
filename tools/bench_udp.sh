#!/usr/bin/env bash
# UDP echo, side by side: `tcpecho bench --udp` against a C UDP echo server
# (tools/udp_echo.c, built here with gcc) and against `tcpecho server --udp`.
# Servers on core 0, the bench on core 1 (taskset, when there are two cores);
# rounds interleave the servers, so a noisy neighbour hits both alike.
#
#   tools/bench_udp.sh [ROUNDS] [SECONDS] [CONNECTIONS] [SIZE]
#   (defaults 3 rounds of 3 s, 16 connections, 64-byte datagrams)
#
# Prints each run, then per server the median datagrams/s with min and max.
set -euo pipefail

rounds=${1:-3}
seconds=${2:-3}
connections=${3:-16}
size=${4:-64}
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bench_udp.XXXXXX")
server_pid=""

cleanup() {
  if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

pin() { # pin CORE COMMAND…: taskset when there are two cores to pin to
  local core=$1
  shift
  # exec: run in the background, $! is then the command itself
  if command -v taskset >/dev/null && (($(nproc) >= 2)); then
    exec taskset -c "$core" "$@"
  else
    exec "$@"
  fi
}

gcc -O2 -Wall -o "$tmp/udp_echo" "$root/tools/udp_echo.c"

declare -A command=(
  [c_udp_echo]="$tmp/udp_echo 0 127.0.0.1"
  [tcpecho]="deno run -A $root/main.ts server --udp --port 0"
)
names=(c_udp_echo tcpecho)
declare -A rates=()

# Starts a server on core 0; sets server_pid and port once it listens.
start() {
  # shellcheck disable=SC2086 # the command is words on purpose
  (pin 0 ${command[$1]}) 2>"$tmp/server.log" &
  server_pid=$!
  for _ in $(seq 300); do # at most 30 s
    port=$(grep -o 'listening on udp:[^ ]*:[0-9]*' "$tmp/server.log" |
      grep -o '[0-9]*$' || true)
    if [[ -n $port ]]; then return; fi
    sleep 0.1
  done
  echo "error: $1 did not start: $(cat "$tmp/server.log")" >&2
  exit 1
}

stop() {
  kill -TERM "$server_pid"
  wait "$server_pid" || true
  server_pid=""
}

echo "tcpecho bench --udp -c $connections -s $size -d $seconds, $rounds rounds"
echo "($(nproc) cores, $(deno --version | head -1), $(uname -srm))"
for round in $(seq "$rounds"); do
  for name in "${names[@]}"; do
    start "$name"
    json=$(pin 1 deno run -A "$root/main.ts" bench --udp -p "$port" \
      -c "$connections" -s "$size" -d "$seconds" --json)
    stop
    rate=$(grep -o '"messages_per_s":[0-9.]*' <<<"$json" | cut -d: -f2)
    lost=$(grep -o '"lost":[0-9]*' <<<"$json" | cut -d: -f2)
    errors=$(grep -o '"errors":[0-9]*' <<<"$json" | cut -d: -f2)
    printf 'round %d  %-11s %10.0f datagrams/s  lost %s  errors %s\n' \
      "$round" "$name" "$rate" "$lost" "$errors"
    rates[$name]+="$rate "
  done
done

echo
printf '%-11s %12s %12s %12s\n' server median min max
for name in "${names[@]}"; do
  # shellcheck disable=SC2086 # one number a word
  mapfile -t sorted < <(printf '%s\n' ${rates[$name]} | sort -g)
  n=${#sorted[@]}
  printf '%-11s %12.0f %12.0f %12.0f\n' "$name" "${sorted[$((n / 2))]}" \
    "${sorted[0]}" "${sorted[$((n - 1))]}"
done
