#!/usr/bin/env bash
# check_targets.sh — the SPEC's v0.2 server targets, checked in one run of the
# shared harness (../shared/bench/check.py): tcpecho at its defaults (-q, and at
# the default info log level) beside C epoll, Node and the plain Deno loop.
#
#   tools/check_targets.sh                # 3 interleaved rounds, ~8 min
#   tools/check_targets.sh --repeat 5     # more rounds for a noisy machine
#
# Prints each claim with its figures and "all hold" or "falls short" last;
# exit 0 only if every claim holds. Results stay in $TMPDIR (path printed).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHECK=$REPO/../shared/bench/check.py
REPEAT=3 DURATION=3
while (($#)); do
  case $1 in
    --repeat) REPEAT=${2:?}; shift ;;
    --duration) DURATION=${2:?}; shift ;;
    -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "check_targets.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[[ -x $CHECK ]] || { echo "check_targets.sh: no $CHECK (../shared/bench beside the repo)" >&2; exit 2; }

# The server as a user runs it: deno run with the tcpecho task's permissions.
# --max-conns 20000: the idle scenario holds 9000 connections.
T="deno run -A $REPO/main.ts server --port {PORT} --max-conns 20000"
exec "$CHECK" --builtin c_epoll,node_echo,deno_loop \
  --server "tcpecho=$T -q" --server "tcpecho_info=$T" \
  --scenarios pp_c50_s64,pp_c500_s64,connect,idle \
  --repeat "$REPEAT" --duration "$DURATION" \
  --claim 'tcpecho.pp_c500_s64.per_conn_jain >= 0.99' \
  --claim 'tcpecho.pp_c500_s64.per_conn_min >= 0.8 * tcpecho.pp_c500_s64.per_conn_median' \
  --claim 'tcpecho.pp_c500_s64.lat_p99_us <= 1.5 * c_epoll.pp_c500_s64.lat_p99_us' \
  --claim 'tcpecho.pp_c500_s64.lat_max_us <= 50000' \
  --claim 'tcpecho.pp_c50_s64.msgs_per_s >= 0.95 * deno_loop.pp_c50_s64.msgs_per_s' \
  --claim 'tcpecho.pp_c500_s64.msgs_per_s >= node_echo.pp_c500_s64.msgs_per_s' \
  --claim 'tcpecho_info.connect.conns_per_s >= 0.85 * tcpecho.connect.conns_per_s' \
  --claim 'tcpecho.idle.kib_per_conn <= 12'
