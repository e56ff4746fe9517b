#!/usr/bin/env bash
# kvw against the kvc levels on the data path a user calls, in one run on one machine (issue 13's speed
# bar: f16 decode of the new codec within 0.8x of kvc): each spec's container size, `kvcodec encode -j1`
# CPU time, and decode_into an f16 view per core (bench_datapath; the fastest of 3 processes, as
# bench/datapath.sh). Synthetic f16 cache with queries and RoPE metadata (so kvw's query weighting and
# pre-RoPE keys run). Writes bench/results/kvw_speed.txt.
#   bench/kvw_speed.sh [BUILD_DIR] [WORK_DIR]      (needs /usr/bin/time, bc)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}; work=${2:-$(mktemp -d)}
K=$build/cli/kvcodec
out=bench/results/kvw_speed.txt
f=$work/kvw_speed.safetensors
[[ -f $f ]] || $K synth --layers 32 --kv-heads 8 --q-heads 8 --head-dim 128 --tokens 2048 --dtype f16 "$f" >/dev/null
: > "$out"
echo "# $(date -u +%F), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); commit $(git rev-parse --short HEAD)" | tee -a "$out"
echo "# cache: kvcodec synth --layers 32 --kv-heads 8 --q-heads 8 --head-dim 128 --tokens 2048 --dtype f16 ($(stat -c %s "$f") bytes with queries)" | tee -a "$out"
printf '%-28s %12s %10s %14s %18s %10s\n' spec bytes b/elem "encode cpu s" "decode_into GB/s" "vs kvc:5" | tee -a "$out"
specs=(kvc:level=5 kvc:level=5,values=channel kvw kvw:derope=off "kvw:kstep=0.4,vstep=0.6")
declare -a enc bytes bpe best
for i in "${!specs[@]}"; do
  c=$work/kvw_speed.$i.kvc
  rm -f "$c"
  read -r u s < <(/usr/bin/time -f "%U %S" "$K" encode -q -j1 -c "${specs[$i]}" "$f" "$c" 2>&1 >/dev/null | tail -1)
  enc[$i]=$(echo "$u + $s" | bc)
  bytes[$i]=$(stat -c %s "$c")
  bpe[$i]=$("$K" info --json "$c" | sed -n 's/.*"bits_per_element": \([0-9.e+-]*\).*/\1/p' | head -1)
done
# decode_into: three rounds over every spec (a process on this VM sometimes runs ~20-35% slower
# throughout, so each spec keeps its fastest of three processes, taken in alternation)
for round in 1 2 3; do
  for i in "${!specs[@]}"; do
    g=$("$build/bench/bench_datapath" "$work/kvw_speed.$i.kvc" "$f" | sed -n 's/^decode_into f16 view, -j1: .* \([0-9.]*\) GB\/s of f16 per core.*/\1/p')
    if [[ -z ${best[$i]:-} ]] || (( $(echo "$g > ${best[$i]}" | bc) )); then best[$i]=$g; fi
  done
done
for i in "${!specs[@]}"; do
  printf '%-28s %12d %10.4f %14.2f %18.2f %9.2fx\n' "${specs[$i]}" "${bytes[$i]}" "${bpe[$i]}" "${enc[$i]}" "${best[$i]}" \
    "$(echo "${best[$i]} / ${best[0]}" | bc -l)" | tee -a "$out"
done
