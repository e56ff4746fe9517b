#!/usr/bin/env bash
# Size / fidelity / coder overhead of the entropy presets on the real dumps (per-element bits from
# `kvcodec eval --json`: payload = coded streams, side = headers + tables + stage state, quant side =
# scales, bound = empirical entropy of the coded symbols under the coder's context model).
# Usage: bench/entropy_real_dumps.sh [kvcodec binary] [shared dir] > bench/results/entropy_real_dumps.md
set -euo pipefail
KV=${1:-build/cli/kvcodec}
SHARED=${2:-../shared}
echo "# Entropy presets on the real dumps"
echo
echo "Command: \`bench/entropy_real_dumps.sh $KV $SHARED\`. Bits per K+V element of the original cache."
echo "payload/bound = coded streams vs the empirical entropy of their symbols; on these small dumps (4 KV heads x"
echo "head_dim 8, 256-token chunks: 8192-symbol streams) the 32 lanes' final states (128 bytes per stream)"
echo "and the table side information are a visible share."
codecs=(cachegen cachegen-paper:level=1 cachegen-paper:level=2 cachegen-paper:level=3 "raw:dtype=f16|zstd" kivi:bits=4 q4_0)
for l in 1 2 3 4 5 6 7 8 9; do codecs+=("kvc:level=$l"); done
args=()
for c in "${codecs[@]}"; do args+=(-c "$c"); done
for d in s0 s1 s2; do
  f="$SHARED/kv/stories260K-$d.safetensors"
  [[ -f $f ]] || continue
  echo
  echo "## stories260K-$d"
  echo
  "$KV" eval "$f" --repeats 1 -j 1 --json "${args[@]}" | python3 -c '
import json, sys
rows = json.load(sys.stdin)
cg = next(r for r in rows if r["requested"] == "cachegen")["bits_per_element"]
print("| codec | bits/el | vs cachegen | payload | side | quant side | bound | payload/bound | K rel err | V rel err | attention KL |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    n = r["kv_elements"]
    pay, side, qs, bd = (r[k] / n for k in ("payload_bits", "side_info_bits", "quant_side_bits", "entropy_bound_bits"))
    print("| `%s` | %.3f | %.2fx | %.3f | %.3f | %.3f | %.3f | %.3f | %.4f | %.4f | %.4g |" % (
        r["requested"].replace("|", "\\|"), r["bits_per_element"], r["bits_per_element"] / cg, pay, side, qs, bd,
        pay / bd if bd > 0 else float("nan"), r["key"]["rel_fro_error"], r["value"]["rel_fro_error"], r["attention"]["kl"]))
'
done
