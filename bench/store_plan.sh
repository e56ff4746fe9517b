#!/usr/bin/env bash
# The store's level/tier planner (include/kvcodec/store/plan.hpp) on the six real dumps with their
# measured profiles (container bytes, attention KL and decode time per kvc level, measured by the
# command), at several DRAM capacities (one measurement of the profiles): planner against every single fixed level on the documented
# utility. Writes bench/results/store_plan.md.
#   bench/store_plan.sh [KVCODEC] [SHARED_DIR] [ALPHA]
set -euo pipefail
cd "$(dirname "$0")/.."
K=${1:-build/cli/kvcodec}; shared=${2:-../shared}; alpha=${3:-50}
out=bench/results/store_plan.md
dumps=()
for d in stories260K-s0 stories260K-s1 stories260K-s2 kvlab-d0 kvlab-d1 kvlab-d2; do dumps+=("$shared/kv/$d.safetensors"); done
{
  echo "# Store planner on the real dumps"
  echo
  echo "$(date -u +%F), $(nproc) cores. Utility (docs/STORE.md, store/plan.hpp): sum over contexts of"
  echo "w * (-attention KL - alpha * (tier latency + bytes / tier bandwidth + decode time)), alpha = $alpha KL/s, w = 1."
  echo "Tiers: dram (10 GB/s, 1 us, capacity below), disk (1 GB/s, 100 us, 0.4 MB), redis (0.2 GB/s as measured"
  echo "in bench/results/store.txt, 500 us, unbounded). Levels kvc:level=1,3,5,7,9."
  echo "Profiles are measured once (decode time: best of 5 on a shared 2-core machine) and every capacity is"
  echo "planned with them."
  echo
  echo "Command: \`$K store plan --alpha $alpha --first-tier-mb 0.1,0.3,0.6,1.2 --tier dram:1:10:1 --tier disk:0.4:1:100 --tier redis:inf:0.2:500 --markdown DUMPS\`"
  echo
  "$K" store plan --alpha "$alpha" --first-tier-mb 0.1,0.3,0.6,1.2 --tier dram:1:10:1 --tier disk:0.4:1:100 --tier redis:inf:0.2:500 --markdown "${dumps[@]}"
} | tee "$out"
