#!/usr/bin/env bash
# Token-locality stages at matched distortion on the real dumps (issue: "a delta only earns its place if
# it reduces bits at equal error"). One quantizer (kvc:level=6's: keys per channel, values per token,
# 24 bins), then the rANS coder with each symbol-domain prediction (lossless: identical error) and the
# float-domain deltas (which change the error).
# Usage: bench/token_locality.sh [kvcodec binary] [shared dir] > bench/results/token_locality.md
set -euo pipefail
KV=${1:-build/cli/kvcodec}
SHARED=${2:-../shared}
Q="cachegen-quant:kbins=24,klayers=-,vbins=24,vlayers=-,kaxis=channel,vaxis=token"
echo "# Token locality at matched distortion (real dumps)"
echo
echo "Command: \`bench/token_locality.sh $KV $SHARED\`. Q = \`$Q\`."
echo "Symbol-domain predictions (\`rans:pred=...\`) are lossless, so their errors equal \`pred=none\`'s; the"
echo "float-domain \`delta\` stages change the error. bits/el counts everything the codec stores."
for d in s0 s1 s2; do
  f="$SHARED/kv/stories260K-$d.safetensors"
  [[ -f $f ]] || continue
  echo
  echo "## stories260K-$d"
  echo
  "$KV" eval "$f" --repeats 1 -j 1 --json \
    -c "$Q|rans:tables=shared" -c "$Q|rans:tables=shared,pred=prev" -c "$Q|rans:tables=shared,pred=anchor,group=10" \
    -c "$Q|rans:tables=shared,pred=linear" -c "$Q|rans:pred=linear" \
    -c "delta:mode=anchor|$Q|rans:tables=shared" -c "delta:mode=prev|$Q|rans:tables=shared" |
    python3 -c '
import json, sys
rows = json.load(sys.stdin)
q = sys.argv[1]
base = rows[0]["bits_per_element"]
print("| codec | bits/el | vs pred=none | K rel err | V rel err | attention KL |")
print("|---|---:|---:|---:|---:|---:|")
for r in rows:
    spec = r["requested"].replace(q, "Q").replace("|", "\\|")
    bpe, k, v, kl = r["bits_per_element"], r["key"]["rel_fro_error"], r["value"]["rel_fro_error"], r["attention"]["kl"]
    print("| `%s` | %.4f | %+.1f%% | %.4f | %.4f | %.4g |" % (spec, bpe, 100 * (bpe / base - 1), k, v, kl))
' "$Q"
done
