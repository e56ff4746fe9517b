#!/usr/bin/env bash
# The store's level/tier planner (include/kvcodec/store/plan.hpp) on the six real dumps with their
# measured profiles (container bytes, attention KL and decode time per kvc level, measured by the
# command) and the tiers' latency and bandwidth measured on real backends (`--measure`: this process's
# memory, a directory under $TMPDIR, a redis-server started here on loopback), at several DRAM
# capacities (one measurement of the profiles): planner against every single fixed level on the
# documented utility. Writes bench/results/store_plan.md.
#   bench/store_plan.sh [KVCODEC] [SHARED_DIR] [ALPHA]     (needs redis-server: scripts/setup)
set -euo pipefail
cd "$(dirname "$0")/.."
K=${1:-build/cli/kvcodec}; shared=${2:-../shared}; alpha=${3:-50}
out=bench/results/store_plan.md
dumps=()
for d in stories260K-s0 stories260K-s1 stories260K-s2 kvlab-d0 kvlab-d1 kvlab-d2; do dumps+=("$shared/kv/$d.safetensors"); done
source bench/redis_up.sh  # $work, $port: a throwaway redis-server, stopped at exit
args=(--alpha "$alpha" --first-tier-mb 0.1,0.3,0.6,1.2 --tier dram:1:10:1 --tier disk:0.4:1:100 --tier redis:inf:0.2:500
      --measure mem --measure "file://$work/disk" --measure "redis://127.0.0.1:$port" --measure-mb 0.25)
{
  echo "# Store planner on the real dumps"
  echo
  echo "$(date -u +%F), $(nproc) cores, $(redis-server --version | cut -d' ' -f1-3). Utility (docs/STORE.md, store/plan.hpp): sum over contexts of"
  echo "w * (-attention KL - alpha * (tier latency + bytes / tier bandwidth + decode time)), alpha = $alpha KL/s, w = 1."
  echo "Tiers: dram (this process's memory), disk (a directory under \$TMPDIR: page cache) with 0.4 MB, redis (loopback"
  echo "redis-server, unbounded); their latency and bandwidth are measured by the command on the real backends (\`--measure\`,"
  echo "0.25 MB payload: the contexts here are 0.06-0.5 MB), the --tier figures only give names and capacities."
  echo "Levels kvc:level=1,3,5,7,9. Profiles are measured once (decode time: best of 5 on a shared 2-core machine) and every"
  echo "capacity is planned with them."
  echo
  echo "Command: \`bench/store_plan.sh $K $shared $alpha\` = \`$K store plan ${args[*]//$work/\$TMP} --markdown DUMPS\`"
  echo
  "$K" store plan "${args[@]}" --markdown "${dumps[@]}"
} | tee "$out"
