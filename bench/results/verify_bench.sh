#!/bin/sh
# Regenerates bench/results/verify.md numbers: model-in-the-loop fidelity (kvcodec eval --model) and
# draft-and-verify acceptance / horizon comparison (kvcodec verify, cost model draft=1, verify=1, fetch=8).
# Usage: KVCODEC=build/cli/kvcodec SHARED=../shared sh bench/results/verify_bench.sh
set -e
K=${KVCODEC:-build/cli/kvcodec}; S=${SHARED:-../shared}
M="--model $S/models/stories260K/stories260K.bin --tokenizer $S/models/stories260K/tok512.bin"
CODECS="raw raw:dtype=bf16 q8_0 kivi:bits=4 kivi:bits=2 q4_0 snapkv:keep=0.2 streamingllm:keep=0.2"
for c in $CODECS; do set -- "$@" -c "$c"; done
$K eval $M --context-tokens 256 "$@" --markdown $S/kv/stories260K-s0.safetensors
for d in s0 s1 s2; do for c in $CODECS; do for h in 1 2 4 8 16 32 auto; do
  printf '%s %s %s ' "$d" "$c" "$h"
  $K verify $M -c "$c" --context $S/kv/stories260K-$d.safetensors --context-tokens 256 --tokens 192 \
     --horizon $h --k-max 32 --cost 1,1,8 --json | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["identical"], j["rounds"], round(j["mean_accepted"],3), round(j["acceptance_rate"],4), j["timings"]["modeled_s"], round(j["timings"]["modeled_s"]/len(j["tokens"]),4))'
done; done; done
