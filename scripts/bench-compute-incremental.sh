#!/usr/bin/env bash
# Compute's incremental throughput with the 40 benchmark definitions (BENCHMARKS.md,
# "Incremental, 40 live definitions"): for each binary given (the first is the one measured,
# the others baselines, run alternately), a server on CPU 0 with an empty data dir, an
# open-loop load of RATE events/s for SECONDS on CPU 1, then the drain. Prints, per run, when
# Compute caught up and the CPU seconds of each server thread (the `compute` thread's CPU
# seconds per million events is the figure: it does not depend on how the core is shared).
#
# Usage: scripts/bench-compute-incremental.sh RUNS RATE SECONDS BIN [BASELINE_BIN ...]
set -euo pipefail
runs=$1 rate=$2 secs=$3; shift 3
root=$(cd "$(dirname "$0")/.." && pwd)
bench=$root/target/release/junction-bench
work=$(mktemp -d /tmp/junction-c40.XXXXXX)
port=18088
{
  printf 'version = 1\nworkspace = "bench"\n[server]\nlisten = "127.0.0.1:%s"\ndata_dir = "%s/data"\n' "$port" "$work"
  printf '[[sources]]\nname = "bench"\nwrite_key = "wk_bench"\n'
  cat "$root/crates/junction-bench/configs/compute-40-definitions.toml"
} > "$work/junction.toml"
metric() { curl -s "http://127.0.0.1:$port/metrics" | awk -v k="$1" '$1==k {print $2}'; }
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load $(cut -d' ' -f1-3 /proc/loadavg)"
for run in $(seq 1 "$runs"); do
  for bin in "$@"; do
    rm -rf "$work/data"
    taskset -c 0 "$bin" serve --config "$work/junction.toml" > "$work/server.log" 2>&1 &
    server=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" > /dev/null && break; sleep 0.05; done
    start=$(date +%s.%N)
    taskset -c 1 "$bench" load --url "http://127.0.0.1:$port" --write-key wk_bench \
      --rate "$rate" --seconds "$secs" --warmup 0 > "$work/load.out" 2>&1
    while [ "$(metric junction_compute_lag_events)" != "0" ]; do sleep 0.2; done
    caught_up=$(echo "$(date +%s.%N) - $start" | bc)
    applied=$(metric junction_compute_applied_offset); derived=$(metric junction_compute_derived_events_total)
    threads=$(for t in /proc/$server/task/*; do
        read -r -a st < <(cut -d' ' -f14,15 "$t/stat"); echo "$(cat "$t/comm") $(( st[0] + st[1] ))"
      done | awk '{a[$1]+=$2} END {for (k in a) if (a[k] > 20) printf "%s=%.2f ", k, a[k]/100}')
    kill "$server"; wait "$server" 2>/dev/null || true
    ingested=$((applied - derived))
    compute=$(echo "$threads" | grep -o 'compute=[0-9.]*' | cut -d= -f2)
    printf '%s run %s: %s events (+%s derived), caught up %.1f s after the load started; compute %s CPU-s = %.0f events per compute CPU-s; threads CPU-s: %s; load: %s\n' \
      "$(basename "$bin")" "$run" "$ingested" "$derived" "$caught_up" "$compute" \
      "$(echo "$ingested / $compute" | bc)" "$threads" "$(grep -m1 'events/s' "$work/load.out" | xargs)"
  done
done
rm -rf "$work"
