#!/usr/bin/env bash
# The data path as a user runs it: `kvcodec encode/decode` against zstd on the same f16 cache, CPU time
# (user+sys, best of 3) and peak RSS from /usr/bin/time, all in one run on one machine; then the library's
# decode_into an f16 view (bench_datapath). Writes bench/results/datapath.txt.
#   bench/datapath.sh [BUILD_DIR] [WORK_DIR]      (needs zstd and /usr/bin/time)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}; work=${2:-$(mktemp -d)}
K=$build/cli/kvcodec
out=bench/results/datapath.txt
t() { /usr/bin/time -f "%U %S %M" "$@" 2>&1 >/dev/null | tail -1; }  # user sys maxrss_kb
row() {  # label, then the command (best of 3 CPU times: the machine is shared; outputs removed between runs)
  local label=$1; shift
  local best="" bm=0 u s m c
  for _ in 1 2 3; do
    rm -f "$work/c.kvc.tmp" "$work/d.safetensors" "$work/r.safetensors" "$work/z.out"
    [[ $label == *encode* ]] && rm -f "$work/c.kvc"
    [[ $label == "zstd -1"* ]] && rm -f "$work/c.zst"
    read -r u s m < <(t "$@")
    c=$(echo "$u + $s" | bc)
    if [[ -z $best ]] || (( $(echo "$c < $best" | bc) )); then best=$c; bm=$m; fi
  done
  printf '%-44s cpu %6.2f s   peak RSS %7.1f MB\n' "$label" "$best" "$(echo "$bm / 1024" | bc -l)" | tee -a "$out"
  echo "$best" > "$work/last"
}
: > "$out"
echo "# $(date -u +%F), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" | tee -a "$out"
for mb in 256 1024; do
  f=$work/s$mb.safetensors
  [[ -f $f ]] || $K synth --q-heads 0 --size-mb $mb "$f" >/dev/null
  echo "## ${mb} MB f16 synthetic cache ($(stat -c %s "$f") bytes), one thread" | tee -a "$out"
  rm -f "$work/c.kvc" "$work/c.zst" "$work/d.safetensors" "$work/z.out" "$work/r.safetensors"
  row "zstd -1 -T1 (compress the dump)" zstd -q -1 -T1 -f "$f" -o "$work/c.zst"; zc=$(cat "$work/last")
  row "kvcodec encode -j1 -c kvc:level=5" $K encode -q -j1 -c kvc:level=5 "$f" "$work/c.kvc"; kc=$(cat "$work/last")
  row "zstd -d -T1" zstd -q -d -T1 -f "$work/c.zst" -o "$work/z.out"; zd=$(cat "$work/last")
  row "kvcodec decode -j1" $K decode -j1 "$work/c.kvc" "$work/d.safetensors"; kd=$(cat "$work/last")
  [[ $mb == 1024 ]] && { rm -f "$work/d.safetensors"; row "kvcodec decode -j2" $K decode -j2 "$work/c.kvc" "$work/d.safetensors"; }
  # A range decode takes a few hundredths of a second, the resolution of /usr/bin/time: ten in a row
  # are timed together and the row shows a tenth. They overwrite the output (-f: the same temporary
  # file and rename as a fresh one) instead of running `rm` between them: each rm is a process of its
  # own, ~4-5 ms of CPU on the build machine's VM, which the row counted until 2026-12-06.
  rm -f "$work/r.safetensors"
  range="for i in 1 2 3 4 5 6 7 8 9 10; do '$K' decode -j1 -f --tokens-from 1024 --tokens-to 1280 '$work/c.kvc' '$work/r.safetensors' || exit 1; done"
  row "kvcodec decode -j1 --tokens-from 1024 --tokens-to 1280 (x10)" bash -c "$range"; kr=$(echo "$(cat "$work/last") / 10" | bc -l)
  printf '%-44s cpu %8.4f s (a tenth of the row above)\n' "kvcodec decode -j1 --tokens-from 1024 --tokens-to 1280" "$kr" | tee -a "$out"
  printf 'ratios: encode/zstd-1 %.2f  decode/zstd-d %.2f  range/full decode %.3f\n' "$(echo "$kc / $zc" | bc -l)" "$(echo "$kd / $zd" | bc -l)" "$(echo "$kr / $kd" | bc -l)" | tee -a "$out"
  eval "kd_$mb=$kd"
  if [[ $mb == 256 ]]; then
    # The library rows: three bench_datapath processes, the one whose -j1 decode was fastest is kept
    # whole (its ratios are all from that one process). On the build machine's VM a process sometimes
    # runs ~20% slower throughout (all of its repetitions), even with nothing else running.
    bestlib="" bestt=""
    for k in 1 2 3; do
      $build/bench/bench_datapath "$work/c.kvc" "$f" > "$work/lib$k.txt"
      tk=$(sed -n 's/^decode_into f16 view, -j1: \([0-9.]*\) s CPU.*/\1/p' "$work/lib$k.txt")
      if [[ -z $bestt ]] || (( $(echo "$tk < $bestt" | bc) )); then bestt=$tk; bestlib=$work/lib$k.txt; fi
    done
    echo "library rows: the fastest of 3 bench_datapath processes (-j1 decode $(sed -n 's/^decode_into f16 view, -j1: \([0-9.]*\) s CPU.*/\1/p' "$work"/lib[123].txt | xargs | sed 's/ / \/ /g') s)" | tee -a "$out"
    tee -a "$out" < "$bestlib"
  fi
done
printf 'decode time 1 GB / 256 MB: %.2fx\n' "$(echo "$kd_1024 / $kd_256" | bc -l)" | tee -a "$out"
