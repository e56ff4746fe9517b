#!/usr/bin/env bash
# The KV store's get on loopback Redis against fetching the same bytes (issue 16's bars): starts a
# redis-server on a free port in a temporary directory (no persistence), runs bench_store, writes
# bench/results/store.txt.
#   bench/store.sh [BUILD_DIR] [TOKENS] [REPS] [THREADS]     (needs redis-server: scripts/setup)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}; tokens=${2:-2048}; reps=${3:-5}; threads=${4:-0}
out=bench/results/store.txt
source bench/redis_up.sh  # $work, $port: a throwaway redis-server, stopped at exit
{
  echo "# $(date -u +%F), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(redis-server --version | cut -d' ' -f1-3)"
  echo "# command: bench/store.sh $build $tokens $reps $threads   (bench_store redis://127.0.0.1:PORT $tokens $reps $threads)"
  "$build/bench/bench_store" "redis://127.0.0.1:$port" "$tokens" "$reps" "$threads"
  echo
  echo "# the same with one GET per chunk value (?get_piece_kb=0: the fetch path before GETRANGE pieces)"
  "$build/bench/bench_store" "redis://127.0.0.1:$port?get_piece_kb=0" "$tokens" "$reps" "$threads"
} | tee "$out"
