#!/usr/bin/env bash
# bench_compare.sh — tcpecho against the reference echo servers, as the SPEC's
# "Performance targets" ask, and a markdown table of the ratios.
#
#   tools/bench_compare.sh                 # ~12 min: harness run + tcpecho bench runs
#   tools/bench_compare.sh --repeat 3 --duration 5
#   tools/bench_compare.sh --no-harness    # only the tcpecho-bench measurements
#
# 1. ../shared/bench/run.sh, one run: c_epoll, go_echo (when Go is installed),
#    node_echo, deno_loop and tcpecho (raw, -q), server on CPU 0, loadgen on CPU 1.
# 2. `tcpecho bench` itself (bench on CPU 1, server on CPU 0), rounds interleaved:
#    line vs raw pingpong, TLS vs plaintext stream, and tcpecho bench vs the C
#    load generator against the same c_epoll server.
# Output: $TMPDIR/tcpecho-bench/results/compare-DATE/ (summary.md, bench.jsonl,
# harness/ with run.sh's results), summary.md also printed. Every step is
# bounded by `timeout`; servers are stopped by PID.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPEAT=2 DURATION=3 HARNESS=1 BENCHES=1 OUT=""
SCENARIOS=pp_c50_s64,pp_c500_s64,pp_c50_s4k,st_c8,idle

die() { echo "bench_compare.sh: $*" >&2; exit 2; }
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; cat <<EOF
Options: --repeat N (default $REPEAT)  --duration SEC (default $DURATION)
         --scenarios LIST (harness, default $SCENARIOS)
         --no-harness  --no-bench  --out DIR
EOF
}

while (($#)); do
  case $1 in
    --repeat) REPEAT=${2:?}; shift ;;
    --duration) DURATION=${2:?}; shift ;;
    --scenarios) SCENARIOS=${2:?}; shift ;;
    --no-harness) HARNESS=0 ;;
    --no-bench) BENCHES=0 ;;
    --out) OUT=${2:?}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
  shift
done
[[ $REPEAT =~ ^[1-9][0-9]?$ ]] || die "--repeat wants 1 to 99, got '$REPEAT'"
[[ $DURATION =~ ^[1-9][0-9]?$ ]] || die "--duration wants whole seconds 1 to 99, got '$DURATION'"

# ---- prerequisites ------------------------------------------------------------------
BENCH_DIR=$REPO/../shared/bench
[[ -x $BENCH_DIR/run.sh && -f $BENCH_DIR/loadgen.c ]] ||
  die "cannot find the shared harness: expected $BENCH_DIR/run.sh (../shared/bench beside the repo)"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
for tool in gcc taskset timeout python3 deno; do
  command -v "$tool" >/dev/null || die "$tool is missing: needed to build and run the harness (apt-get install -y gcc util-linux coreutils python3)"
done
(($(nproc) >= 2)) || die "needs 2 CPUs (server on CPU 0, load on CPU 1), found $(nproc)"

WORK=${TMPDIR:-/tmp}/tcpecho-bench
# The shared folder stays untouched even when writable (root): build and results here.
export BENCH_BUILD=$WORK/build DENO_NO_UPDATE_CHECK=1
export DENO_DIR=${DENO_DIR:-$BENCH_BUILD/deno_dir}
OUT=${OUT:-$WORK/results/compare-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/logs" "$BENCH_BUILD"
JSONL=$OUT/bench.jsonl
: >"$JSONL"
log "results in $OUT"

# Build the C loadgen and c_epoll (run.sh would too; the bench part needs them alone).
timeout 120 gcc -O2 -Wall -Wextra -o "$BENCH_BUILD/loadgen" "$BENCH_DIR/loadgen.c"
timeout 120 gcc -O2 -Wall -Wextra -o "$BENCH_BUILD/c_epoll" "$BENCH_DIR/servers/c_epoll.c"
timeout 300 deno cache "$REPO/main.ts" >/dev/null 2>&1 || die "cannot cache main.ts's dependencies (npm)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

TCPECHO=(deno run -A "$REPO/main.ts")
TCPECHO_SERVER="deno run -A $REPO/main.ts server -q --max-conns 20000 --port {PORT}"

# ---- 1. the shared harness, one run -------------------------------------------------
if ((HARNESS)); then
  servers=c_epoll
  if command -v go >/dev/null; then servers+=,go_echo; else log "go missing: no go_echo (apt-get install -y golang-go)"; fi
  if command -v node >/dev/null; then servers+=,node_echo; else log "node missing: no node_echo"; fi
  servers+=,deno_loop
  # run.sh bounds each loadgen run; this bounds the whole (5 servers x 5 scenarios x 2 ≈ 8 min).
  timeout $((600 + REPEAT * 600 * DURATION / 3)) "$BENCH_DIR/run.sh" --servers "$servers" \
    --server "tcpecho=$TCPECHO_SERVER" --scenarios "$SCENARIOS" --repeat "$REPEAT" \
    --duration "$DURATION" --out "$OUT/harness" >"$OUT/logs/harness.log" 2>&1 ||
    die "the harness failed (exit $?): see $OUT/logs/harness.log"
fi

# ---- 2. tcpecho bench ---------------------------------------------------------------
SPID="" PORT=""
free_port() {
  python3 -c '
import random, socket
for _ in range(500):
    p = random.randint(20000, 29999)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); print(p); break
    except OSError: pass
    finally: s.close()'
}

# start_server LABEL CMD...: pinned to CPU 0, on a free port ({PORT} replaced);
# ready when a TCP connect succeeds (the loadgen's probe does not speak TLS).
start_server() {
  local label=$1 args=() a
  shift
  PORT=$(free_port)
  for a in "$@"; do args+=("${a//\{PORT\}/$PORT}"); done
  taskset -c 0 "${args[@]}" >"$OUT/logs/$label.out" 2>"$OUT/logs/$label.err" &
  SPID=$!
  for _ in $(seq 200); do
    if ! kill -0 "$SPID" 2>/dev/null; then
      die "server $label exited at start: $(tail -3 "$OUT/logs/$label.err")"
    fi
    if timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  stop_server
  die "server $label did not listen within 20 s"
}

stop_server() {
  [[ -n $SPID ]] || return 0
  kill -TERM "$SPID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SPID" 2>/dev/null || true
  wait "$SPID" 2>/dev/null || true
  SPID=""
}
trap stop_server EXIT

# busy_pct: % of all CPUs busy over the next second, from /proc/stat.
busy_pct() {
  local a b
  a=$(awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat)
  sleep 1
  b=$(awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x); split(b, y); d = y[2] - x[2]; print (d > 0 ? int(100 * (y[1] - x[1]) / d) : 0) }'
}

# wait_quiet: at most 30 s for the machine to be idle (others < 10% of all CPUs),
# as run.sh does; sets QUIET to the last reading. Call with no server running.
QUIET=0
wait_quiet() {
  for _ in $(seq 15); do
    QUIET=$(busy_pct)
    ((QUIET < 10)) && return 0
    sleep 1
  done
  log "  the machine stayed busy (${QUIET}% of all CPUs): this round is noisy"
}

# record CASE ROUND JSON: one line of bench.jsonl, with the busy % seen before.
record() {
  printf '{"case":"%s","round":%d,"busy_before_pct":%d,"result":%s}\n' "$1" "$2" "$QUIET" "$3" >>"$JSONL"
}

# Whether this main.ts has `bench --lines`; else runBench({ lines: true }) is
# called directly (the same code the flag drives).
LINES_FLAG=0
if "${TCPECHO[@]}" bench --help 2>/dev/null | grep -q -- '--lines'; then LINES_FLAG=1; fi

# tcpecho_bench CASE ROUND [--lines] ARGS...: `tcpecho bench --json` on CPU 1.
tcpecho_bench() {
  local name=$1 round=$2 out
  shift 2
  if [[ ${1:-} == --lines && $LINES_FLAG == 0 ]]; then
    shift
    out=$(taskset -c 1 timeout $((DURATION + 30)) deno run -A - "$@" <<EOF
import { parseArgs } from "node:util";
import { runBench } from "file://$REPO/bench.ts";
const { values: v } = parseArgs({ args: Deno.args, options: {
  port: { type: "string" }, connections: { type: "string", short: "c" },
  size: { type: "string", short: "s" }, duration: { type: "string", short: "d" },
  pattern: { type: "string" }, json: { type: "boolean" } } });
const result = await runBench({ hostname: "127.0.0.1", port: Number(v.port),
  connections: Number(v.connections), sizeBytes: Number(v.size),
  durationMs: Number(v.duration) * 1000, pattern: v.pattern, lines: true });
console.log(JSON.stringify(result));
if (result.errors > 0) Deno.exitCode = 1;
EOF
    ) || die "tcpecho bench ($name) failed: $out"
  else
    out=$(taskset -c 1 timeout $((DURATION + 30)) "${TCPECHO[@]}" bench --json "$@") ||
      die "tcpecho bench ($name) failed: $out"
  fi
  record "$name" "$round" "$out"
  log "  $name: $(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["messages_per_s"], "msg/s", r["mib_per_s"], "MiB/s")' "$out")"
}

if ((BENCHES)); then
  PEM=$REPO/testdata
  TLS_ARGS=(--tls-cert "$PEM/server.pem" --tls-key "$PEM/server-key.pem")
  for round in $(seq "$REPEAT"); do
    log "tcpecho bench, round $round/$REPEAT"
    wait_quiet
    # (a) line mode vs raw: pingpong c=50, 64-byte lines / messages
    start_server "line-r$round" "${TCPECHO[@]}" server -q --mode line --port '{PORT}'
    tcpecho_bench line "$round" --lines --port "$PORT" -c 50 -s 64 -d "$DURATION" --pattern pingpong
    stop_server
    wait_quiet
    start_server "raw-r$round" "${TCPECHO[@]}" server -q --port '{PORT}'
    tcpecho_bench raw "$round" --port "$PORT" -c 50 -s 64 -d "$DURATION" --pattern pingpong
    # (b) plaintext vs TLS stream c=8 (same server flags but the certificate)
    tcpecho_bench plain_stream "$round" --port "$PORT" -c 8 -d "$DURATION" --pattern stream
    stop_server
    wait_quiet
    start_server "tls-r$round" "${TCPECHO[@]}" server -q "${TLS_ARGS[@]}" --port '{PORT}'
    tcpecho_bench tls_stream "$round" --host localhost --port "$PORT" --tls --ca "$PEM/ca.pem" \
      -c 8 -d "$DURATION" --pattern stream
    stop_server
    wait_quiet
    # (c) tcpecho bench vs the C loadgen, same c_epoll server
    start_server "c_epoll-r$round" "$BENCH_BUILD/c_epoll" '{PORT}'
    out=$(taskset -c 1 timeout $((DURATION + 30)) "$BENCH_BUILD/loadgen" --port "$PORT" \
      --mode pingpong -c 50 -s 64 -d "$DURATION" --warmup 1) || die "loadgen failed: $out"
    record c_loadgen "$round" "$out"
    log "  c_loadgen: $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["msgs_per_s"], "msg/s")' "$out")"
    tcpecho_bench tcpecho_bench "$round" --port "$PORT" -c 50 -s 64 -d "$DURATION" --pattern pingpong
    stop_server
  done
fi

# ---- the table ------------------------------------------------------------------------
python3 - "$OUT" "$HARNESS" "$BENCHES" "$(deno --version | head -1)" "$LINES_FLAG" <<'EOF' | tee "$OUT/summary.md"
import json, pathlib, statistics, sys, datetime, os, platform
out, harness, benches, deno_version, lines_flag = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1", sys.argv[4], sys.argv[5]
out = pathlib.Path(out)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"# tcpecho vs reference servers — {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}\n")
print(f"{os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}, {deno_version}. "
      "Server on CPU 0, load on CPU 1. Cells: median over rounds.\n")

def fmt(v, d=2):
    return "–" if v is None else f"{v:,.{d}f}"

def ratio(a, b):
    return None if a is None or not b else a / b

if harness:
    res = json.load(open(out / "harness" / "results.json"))
    summ = res["summary"]
    def med(server, sid, key):
        cell = summ.get(server, {}).get(sid) or {}
        v = cell.get(key)
        return v["median"] if v else None
    metric = {"pp_c50_s64": "msgs_per_s", "pp_c500_s64": "msgs_per_s", "pp_c50_s4k": "msgs_per_s",
              "st_c8": "mib_per_s", "idle": "kib_per_conn"}
    sids = [s for s in metric if s in summ.get("tcpecho", {})]
    print("## Shared harness (`../shared/bench/run.sh`)\n")
    print("| scenario | tcpecho | deno_loop | node_echo | go_echo | c_epoll | tcpecho / deno_loop | tcpecho / node_echo |")
    print("|---|---|---|---|---|---|---|---|")
    for s in sids:
        m = metric[s]
        vals = {n: med(n, s, m) for n in ("tcpecho", "deno_loop", "node_echo", "go_echo", "c_epoll")}
        if s == "idle":
            print(f"| {s} (KiB/conn, target ≤ 12) | " + " | ".join(fmt(vals[n]) for n in vals) + " | | |")
        else:
            print(f"| {s} ({m}) | " + " | ".join(fmt(vals[n], 0) for n in vals) +
                  f" | {fmt(ratio(vals['tcpecho'], vals['deno_loop']))} | {fmt(ratio(vals['tcpecho'], vals['node_echo']))} |")
    if "pp_c500_s64" in sids:
        print("\nFairness and latency at c=500 (per-connection messages min / median, min ÷ median "
              "(target ≥ 0.5), p99 / max round trip in ms (target p99 ≤ 10)):\n")
        print("| server | min | median | min/median | p99 ms | max ms |")
        print("|---|---|---|---|---|---|")
        for n in ("tcpecho", "deno_loop", "node_echo", "go_echo", "c_epoll"):
            lo, md = med(n, "pp_c500_s64", "per_conn_min"), med(n, "pp_c500_s64", "per_conn_median")
            if md is None:
                continue
            p99, mx = med(n, "pp_c500_s64", "lat_p99_us"), med(n, "pp_c500_s64", "lat_max_us")
            print(f"| {n} | {fmt(lo, 0)} | {fmt(md, 0)} | {fmt(ratio(lo, md))} | {fmt(p99 / 1000, 1)} | {fmt(mx / 1000, 1)} |")
    print(f"\nFull tables: `{out / 'harness' / 'results.md'}`.\n")

if benches:
    rows = [json.loads(l) for l in open(out / "bench.jsonl")]
    def per_round(case, key):
        return {r["round"]: r["result"].get(key) for r in rows if r["case"] == case}
    def compare(label, a, b, target):
        # Rounds are interleaved, so each round's pair shares the machine's state:
        # the ratio is the median of the per-round ratios.
        (ca, ka), (cb, kb) = a, b
        xa, xb = per_round(ca, ka), per_round(cb, kb)
        rs = [xa[k] / xb[k] for k in xa if xa[k] and xb.get(k)]
        ma = statistics.median(xa.values()) if xa else None
        mb = statistics.median(xb.values()) if xb else None
        r = statistics.median(rs) if rs else None
        spread = f" ({min(rs):.2f}–{max(rs):.2f})" if len(rs) > 1 else ""
        print(f"| {label} | {fmt(ma, 0)} | {fmt(mb, 0)} | {fmt(r)}{spread} | {target} |")
    print("## `tcpecho bench` measurements\n")
    print("| comparison | measured | reference | ratio (per-round range) | target |")
    print("|---|---|---|---|---|")
    compare("line vs raw pingpong c=50 64 B (msg/s)", ("line", "messages_per_s"), ("raw", "messages_per_s"), "≥ 0.85")
    compare("TLS vs plaintext stream c=8 (MiB/s)", ("tls_stream", "mib_per_s"), ("plain_stream", "mib_per_s"), "≥ 0.40")
    compare("tcpecho bench vs C loadgen, c_epoll, pingpong c=50 64 B (msg/s)", ("tcpecho_bench", "messages_per_s"), ("c_loadgen", "msgs_per_s"), "≥ 0.80")
    noisy = sorted({r["case"] + " r" + str(r["round"]) for r in rows if r.get("busy_before_pct", 0) >= 10})
    if noisy:
        print(f"\n⚠ the machine was busy (≥ 10% of all CPUs used by others) before: {', '.join(noisy)}; "
              "ratios within a round still compare like with like, absolute rates do not.")
    print(f"\nEach tcpecho bench run: `deno run -A main.ts bench --json -d D …` on CPU 1 "
          f"({'`--lines`' if lines_flag == '1' else 'lines through `runBench({ lines: true })`: this main.ts has no `--lines`'}); raw rows in `{out / 'bench.jsonl'}`.")
EOF
