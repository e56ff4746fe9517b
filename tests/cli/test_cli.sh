#!/usr/bin/env bash
# The kvcodec command on good and bad input: exit codes (0 ok, 1 usage, 2 bad input) and one clear
# line on stderr naming the problem. Usage: test_cli.sh KVCODEC_BINARY [SHARED_DIR]
set -u
K=$1
SHARED=${2:-}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0
fail=0
last=""

# expect CODE NEEDLE -- command...
expect() {
  local code=$1 needle=$2
  shift 3
  local out rc
  out=$("$@" 2>&1)
  rc=$?
  last=$out
  if [[ $rc -ne $code ]]; then
    echo "FAIL: '$*' exited $rc, expected $code"; echo "$out" | head -5; fail=$((fail + 1)); return
  fi
  if [[ -n $needle && $out != *"$needle"* ]]; then
    echo "FAIL: '$*' output lacks '$needle':"; echo "$out" | head -5; fail=$((fail + 1)); return
  fi
  pass=$((pass + 1))
}

# has NEEDLE: the output of the last expect contains NEEDLE too
has() {
  if [[ $last == *"$1"* ]]; then pass=$((pass + 1)); else
    echo "FAIL: output lacks '$1':"; echo "$last" | head -5; fail=$((fail + 1))
  fi
}

# A small synthetic dump made by the tool itself.
expect 0 "synthetic cache" -- "$K" synth --layers 2 --kv-heads 2 --q-heads 4 --head-dim 16 --tokens 300 "$T/s.safetensors"
expect 2 "exists" -- "$K" synth --layers 2 --kv-heads 2 --q-heads 4 --head-dim 16 --tokens 300 "$T/s.safetensors"
expect 0 "bits/element" -- "$K" encode -c zstd:level=1 "$T/s.safetensors" "$T/s.kvc"
expect 0 "raw:dtype=f16|zstd:level=1" -- "$K" info "$T/s.kvc"
expect 0 "checksums verified" -- "$K" info --verify "$T/s.kvc"
expect 0 "" -- "$K" decode "$T/s.kvc" "$T/back.safetensors"
expect 0 "" -- "$K" decode --dtype f32 "$T/s.kvc" "$T/back32.npz"
expect 1 "unknown KV dump extension" -- "$K" decode "$T/s.kvc" "$T/back.st"
expect 1 "" -- test -e "$T/back.st"
expect 0 "" -- "$K" encode -q -c raw "$T/back.safetensors" "$T/back.kvc"
expect 0 "" -- cmp <("$K" info --json "$T/s.kvc" | grep -v '"file"') <("$K" info --json "$T/s.kvc" | grep -v '"file"')
expect 0 '"bits_per_element"' -- "$K" eval --json -c raw -c zstd "$T/s.safetensors"
expect 0 '"attention"' -- "$K" eval --json -c raw:dtype=bf16 "$T/s.safetensors"
# where the attention metrics run: cpu forced; cuda refused without a GPU (or a CUDA build); a bad value
expect 0 '"device": "cpu"' -- "$K" eval --json --attention-device cpu -c q8_0 "$T/s.safetensors"
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  expect 1 "attention-device cuda" -- "$K" eval --attention-device cuda -c q8_0 "$T/s.safetensors"
  expect 0 '"device": "cpu"' -- "$K" eval --json -c q8_0 "$T/s.safetensors"  # auto falls back to the CPU
fi
expect 1 "attention-device" -- "$K" eval --attention-device tpu -c q8_0 "$T/s.safetensors"
# quality targets: kvc:target=KL / encode --max-kl choose the bins on the dump (its queries), and say how
expect 0 '"asked_kl": 0.01' -- "$K" eval --json -c kvc:target=0.01 "$T/s.safetensors"
expect 0 "kvc target: attention KL <= 0.01" -- "$K" encode --max-kl 0.01 "$T/s.safetensors" "$T/t.kvc"
expect 0 "cachegen-quant:kbins=" -- "$K" info "$T/t.kvc"
expect 1 "not with -c zstd" -- "$K" encode --max-kl 0.01 -c zstd "$T/s.safetensors" "$T/t2.kvc"
expect 1 "not both" -- "$K" eval -c kvc:target=0.01,level=3 "$T/s.safetensors"
expect 0 "kvc:target=0.01" -- "$K" compare -c kvc:target=0.01 --csv "$T/t.csv" "$T/s.safetensors"
# -c takes exactly one value per flag: the input after the last -c is the input, not a second codec
expect 0 "zstd" -- "$K" eval -c raw -c zstd "$T/s.safetensors"
expect 1 "not expected" -- "$K" eval -c raw zstd "$T/s.safetensors"
expect 0 "zstd:level=1" -- "$K" compare -c raw:dtype=f16 -c zstd:level=1 "$T/s.safetensors"
expect 0 "" -- "$K" compare -c zstd:level=1 --csv "$T/c.csv" "$T/s.safetensors"
expect 0 "zstd:level=1" -- cat "$T/c.csv"
expect 0 "" -- "$K" plan --levels 1,5 "$T/s.safetensors"
# without queries, compare's query-based drop rows are skipped with the reason, the rest still run
expect 0 "" -- "$K" synth --layers 2 --kv-heads 2 --q-heads 0 --head-dim 16 --tokens 64 "$T/noq.safetensors"
expect 0 "skipped snapkv:keep=0.5|kivi:bits=4|rans" -- "$K" compare --repeats 1 "$T/noq.safetensors"
has "streamingllm:keep=0.5|kivi:bits=4|rans"
# compare without -c covers every registered stage (by the canonical specs it ran) and every preset
if ! json=$("$K" compare --json --repeats 1 "$T/s.safetensors" 2>"$T/compare.err"); then
  echo "FAIL: kvcodec compare --json failed"; fail=$((fail + 1))
fi
ran=$(grep -o '"codec": "[^"]*"' <<<"$json" | sed 's/^"codec": "//; s/"$//' | tr '|' '\n' | sed 's/:.*//' | sort -u)
asked=$(grep -o '"requested": "[^"]*"' <<<"$json" | sed 's/^"requested": "//; s/"$//' | tr '|' '\n' | sed 's/:.*//' | sort -u)
n_stages=0
while read -r section name; do
  [[ -z $name ]] && continue
  if [[ $section == "[presets]" ]]; then pool=$asked; else pool=$ran; n_stages=$((n_stages + 1)); fi
  # klt needs a profile of the dump's model (none for a synthetic dump): skipped with that reason
  if [[ $name == klt ]] && grep -q "^skipped klt: .*exactly one profile loaded" "$T/compare.err"; then pass=$((pass + 1)); continue; fi
  if grep -qx -- "$name" <<<"$pool"; then pass=$((pass + 1)); else
    echo "FAIL: kvcodec compare has no row for registered $section '$name'"; fail=$((fail + 1))
  fi
done < <("$K" list | awk '/^\[/ { sec = $1; next } /^  [^ ]/ { print sec, $1 }')
if ((n_stages < 20)); then echo "FAIL: parsed only $n_stages stages from kvcodec list"; fail=$((fail + 1)); fi
grep -v "^skipped klt: " "$T/compare.err" >"$T/compare.err2" || true
if [[ -s $T/compare.err2 ]]; then echo "FAIL: compare skipped rows on a dump with queries and whole ggml blocks:"; cat "$T/compare.err2"; fail=$((fail + 1)); fi
expect 0 "NAME:keep=0.5|kivi:bits=4|rans" -- "$K" compare --help
expect 0 "[entropy]" -- "$K" list
expect 0 '"kind": "quant"' -- "$K" list --json

# Usage errors: exit 1.
expect 1 "" -- "$K"
expect 1 "" -- "$K" encode
expect 1 "unknown stage 'nosuch'" -- "$K" encode -c nosuch "$T/s.safetensors" "$T/x.kvc"
expect 1 "parameter 'level'" -- "$K" eval -c zstd:level=99 "$T/s.safetensors"

# Bad input: exit 2 with the file named.
expect 2 "output path is the input" -- "$K" encode -c raw "$T/s.safetensors" "$T/s.safetensors"
expect 2 "exists; pass --force" -- "$K" encode -c raw "$T/s.safetensors" "$T/s.kvc"
expect 0 "" -- "$K" encode -q --force -c raw "$T/s.safetensors" "$T/s.kvc"
size=$(stat -c %s "$T/s.kvc")
head -c $((size / 2)) "$T/s.kvc" > "$T/trunc.kvc"
expect 2 "trunc.kvc" -- "$K" decode "$T/trunc.kvc" "$T/o1.safetensors"
cp "$T/s.kvc" "$T/flip.kvc"
printf '\xff' | dd of="$T/flip.kvc" bs=1 seek=$((size - 100)) conv=notrunc status=none
expect 2 "checksum" -- "$K" decode "$T/flip.kvc" "$T/o2.safetensors"
head -c "$size" /dev/zero > "$T/zero.kvc"
expect 2 "not a .kvc container" -- "$K" info "$T/zero.kvc"
expect 2 "not a .kvc container" -- "$K" decode "$T/s.safetensors" "$T/o3.safetensors"
expect 2 "nope.kvc" -- "$K" info "$T/nope.kvc"
printf 'hello, not a KV dump at all' > "$T/text.safetensors"
expect 2 "text.safetensors" -- "$K" encode -c raw "$T/text.safetensors" "$T/o4.kvc"
# safetensors whose header length exceeds the file
printf '\xff\xff\x00\x00\x00\x00\x00\x00{}' > "$T/hlen.safetensors"
expect 2 "hlen.safetensors" -- "$K" eval -c raw "$T/hlen.safetensors"
# a valid safetensors with no KV tensors: lists what was found and what is accepted
hdr='{"foo":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
{ printf "$(printf '\\x%02x' ${#hdr})\\x00\\x00\\x00\\x00\\x00\\x00\\x00"; printf '%s' "$hdr"; head -c 8 /dev/zero; } > "$T/foo.safetensors"
expect 2 "foo" -- "$K" encode -c raw "$T/foo.safetensors" "$T/o5.kvc"
# unknown dtype
hdr='{"past_key_values.0.key":{"dtype":"C64","shape":[1,1,1,2],"data_offsets":[0,16]}}'
{ printf "$(printf '\\x%02x' ${#hdr})\\x00\\x00\\x00\\x00\\x00\\x00\\x00"; printf '%s' "$hdr"; head -c 16 /dev/zero; } > "$T/c64.safetensors"
expect 2 "C64" -- "$K" encode -c raw "$T/c64.safetensors" "$T/o6.kvc"
# mismatched K/V shapes
hdr='{"past_key_values.0.key":{"dtype":"F32","shape":[1,1,2,2],"data_offsets":[0,16]},"past_key_values.0.value":{"dtype":"F32","shape":[1,1,1,2],"data_offsets":[16,24]}}'
{ printf "$(printf '\\x%02x' ${#hdr})\\x00\\x00\\x00\\x00\\x00\\x00\\x00"; printf '%s' "$hdr"; head -c 24 /dev/zero; } > "$T/mis.safetensors"
expect 2 "shape" -- "$K" encode -c raw "$T/mis.safetensors" "$T/o7.kvc"
# zero tokens
hdr='{"past_key_values.0.key":{"dtype":"F32","shape":[1,1,0,2],"data_offsets":[0,0]},"past_key_values.0.value":{"dtype":"F32","shape":[1,1,0,2],"data_offsets":[0,0]}}'
{ printf "$(printf '\\x%02x' ${#hdr})\\x00\\x00\\x00\\x00\\x00\\x00\\x00"; printf '%s' "$hdr"; } > "$T/zero.safetensors"
expect 2 "token" -- "$K" encode -c raw "$T/zero.safetensors" "$T/o8.kvc"

# Real dumps, when shared/ is beside the project.
if [[ -n $SHARED && -f $SHARED/kv/stories260K-s0.safetensors ]]; then
  S=$SHARED/kv/stories260K-s0.safetensors
  expect 0 "" -- "$K" encode -q -c raw "$S" "$T/real.kvc"
  expect 0 "" -- "$K" decode "$T/real.kvc" "$T/real.safetensors"
  expect 0 "" -- "$K" encode -q -c raw "$T/real.safetensors" "$T/real2.kvc"
  expect 0 "" -- "$K" decode "$T/real2.kvc" "$T/real2.safetensors"
  expect 0 "" -- cmp "$T/real.safetensors" "$T/real2.safetensors"
  expect 0 "" -- "$K" encode -q -c raw "$SHARED/kv/stories260K-s0.bf16.safetensors" "$T/bf.kvc"
  expect 0 "source dtype    bf16" -- "$K" info "$T/bf.kvc"
  # token dropping: kept masks in the container, zeros + .kept on decode, --compact, re-rotation
  expect 0 "" -- "$K" encode -q -c "snapkv:keep=0.25|raw:dtype=f16|zstd" "$S" "$T/drop.kvc"
  expect 0 "token dropping  yes" -- "$K" info "$T/drop.kvc"
  expect 0 "" -- "$K" decode "$T/drop.kvc" "$T/drop.safetensors"
  expect 0 "past_key_values.4.kept" -- grep -a -o "past_key_values.4.kept" "$T/drop.safetensors"
  expect 0 "" -- "$K" decode --compact --rerotate-keys "$T/drop.kvc" "$T/dropc.safetensors"
  expect 0 "h3.positions" -- grep -a -o "past_key_values.0.h3.positions" "$T/dropc.safetensors"
  expect 0 "" -- "$K" encode -q -c raw "$T/dropc.safetensors" "$T/dropc.kvc"
  expect 2 "queries" -- "$K" encode -c snapkv:keep=0.5 "$T/real.safetensors" "$T/noq.kvc"
  expect 1 "keep" -- "$K" encode -c snapkv:keep=1.5 "$S" "$T/badkeep.kvc"
  # model in the loop and draft-and-verify on the real model
  M=$SHARED/models/stories260K
  expect 0 '"top1_agreement"' -- "$K" eval --json --model "$M/stories260K.bin" --tokenizer "$M/tok512.bin" --context-tokens 256 -c q8_0 "$S"
  expect 0 '"asked_kl"' -- "$K" eval --json --model "$M/stories260K.bin" --context-tokens 256 -c kvc:target=0.01 "$S"
  expect 0 '"identical": true' -- "$K" verify --json --model "$M/stories260K.bin" --tokenizer "$M/tok512.bin" -c q4_0 --context "$S" --context-tokens 256 --tokens 32 --horizon auto
  expect 2 "nope.bin" -- "$K" verify --model "$T/nope.bin" --tokenizer "$M/tok512.bin" -c q4_0 --context "$S" --context-tokens 256 --tokens 8
  expect 0 '"rows_dropped"' -- "$K" verify --json --model "$M/stories260K.bin" --tokenizer "$M/tok512.bin" -c q4_0 --context "$S" --context-tokens 256 --tokens 48 --horizon 4 --decoding-every 16 --decoding-codec "snapkv:keep=0.5,window=8|kivi:bits=4,residual=0"
  expect 1 "decoding-every" -- "$K" verify --model "$M/stories260K.bin" --tokenizer "$M/tok512.bin" -c q4_0 --context "$S" --context-tokens 256 --tokens 8 --decoding-every -1
  # klt: a profile fitted by calibrate on one dump codes another; decode needs it and names it otherwise
  S1=$SHARED/kv/stories260K-s1.safetensors
  expect 0 "profile: $T/p.kvp" -- "$K" calibrate --model "$M/stories260K.bin" --context-tokens 256 --profile-out "$T/p.kvp" "$S1"
  has "spec: klt:profile="
  expect 1 "exists" -- "$K" calibrate --model "$M/stories260K.bin" --context-tokens 256 --profile-out "$T/p.kvp" "$S1"
  expect 0 "" -- "$K" encode -q --profile "$T/p.kvp" -c "klt:kstep=0.3,vstep=0.4|rans" "$S" "$T/klt.kvc"
  expect 2 "not loaded" -- "$K" decode "$T/klt.kvc" "$T/klt.safetensors"
  expect 0 "" -- "$K" decode --profile "$T/p.kvp" "$T/klt.kvc" "$T/klt.safetensors"
  expect 1 "exactly one profile" -- "$K" encode -q -c "klt|rans" "$S" "$T/klt2.kvc"
  expect 2 "kvcodec_profile" -- "$K" decode --profile "$S" "$T/klt.kvc" "$T/klt3.safetensors"
  expect 0 '"kl"' -- "$K" eval --json --profile "$T/p.kvp" --model "$M/stories260K.bin" --context-tokens 256 -c "klt:kstep=0.3,vstep=0.4|rans" "$S"

else
  echo "shared/ not found: real-dump CLI checks skipped"
fi

# Every `kvcodec ...` command line documented in README.md runs as written (placeholders filled in,
# argument order kept): the subcommand table, the planner's worked examples and the codec spec examples.
README=$(dirname "$0")/../../README.md
if [[ -n $SHARED && -f $SHARED/kv/stories260K-s0.safetensors && -f $README ]]; then
  S=$SHARED/kv/stories260K-s0.safetensors
  M=$SHARED/models/stories260K
  n_lines=0
  while IFS= read -r line; do
    n_lines=$((n_lines + 1))
    line=${line//'[-c SPEC ...]'/-c SPEC2}
    read -ra words <<<"$line"
    sub=${words[0]}
    [[ $sub == plan-verify && ${words[1]} == "..." ]] && continue  # its worked examples run below
    args=()
    for w in "${words[@]}"; do
      case $w in
        SPEC) args+=(q8_0) ;;
        SPEC2) args+=("kivi:bits=4|rans") ;;
        IN) case $sub in
              decode) args+=("$T/readme.kvc") ;;
              compare) args+=("$T/s.safetensors") ;;  # every registered codec: the small dump keeps it fast
              *) args+=("$S") ;;
            esac ;;
        OUT) case $sub in
               encode) args+=("$T/readme.kvc") ;;
               decode) args+=("$T/readme.safetensors") ;;
               *) args+=("$T/readme-$sub.safetensors") ;;
             esac ;;
        FILE) args+=("$T/readme.kvc") ;;
        CKPT) args+=("$M/stories260K.bin") ;;
        TOK) args+=("$M/tok512.bin") ;;
        DUMP) args+=("$S") ;;
        C) args+=(256) ;;
        N) args+=(16) ;;
        G) args+=(1) ;;
        S) args+=(0.5) ;;
        *[A-Z]*) if [[ $w =~ ^[A-Z][A-Z0-9_]*$ ]]; then
                   echo "FAIL: README placeholder '$w' in 'kvcodec $line' is unknown to test_cli.sh"; fail=$((fail + 1)); continue 2
                 fi
                 args+=("$w") ;;
        *) args+=("$w") ;;
      esac
    done
    # synth's documented shape (--size-mb 256 in the README) at 2 MB, to stay fast
    [[ $sub == synth ]] && args+=(--layers 32 --kv-heads 8 --head-dim 128 --size-mb 2)
    expect 0 "" -- "$K" "${args[@]}"
  done < <(grep -o '^| `kvcodec [^`]*`' "$README" | sed 's/^| `kvcodec //; s/`$//')
  if ((n_lines < 10)); then echo "FAIL: found only $n_lines kvcodec command lines in README.md"; fail=$((fail + 1)); fi
  n_lines=0
  while read -ra words; do
    n_lines=$((n_lines + 1))
    expect 0 "tokens/s" -- "$K" "${words[@]:1}"
  done < <(grep '^build/cli/kvcodec ' "$README")
  if ((n_lines < 2)); then echo "FAIL: found only $n_lines worked examples in README.md"; fail=$((fail + 1)); fi
  # the codec spec examples of "Codec specs", each in one eval, several -c flags
  expect 0 "snapkv:keep=0.5|kivi:bits=4|rans" -- "$K" eval --repeats 1 -c raw:dtype=f16 -c zstd:level=3 -c q8_0 -c q4_0 -c fp8:format=e4m3 \
    -c kivi:bits=4 -c "derope|uniform:bits=4,kaxis=channel" -c "kivi:bits=4|rans" -c cachegen -c kvc:level=1 -c kvc:level=9 \
    -c "snapkv:keep=0.5|kivi:bits=4|rans" "$T/s.safetensors"
else
  echo "shared/ or README.md not found: README command-line checks skipped"
fi
# Lying inputs of issue 11 (tests/fuzz/regressions): exit 2 in bounded memory (ulimit 1 GiB), the dumps
# naming the file (the stage errors of a container name the stream; the file name is the decoder's to add).
R=$(cd "$(dirname "$0")/../fuzz/regressions" && pwd)
# An AddressSanitizer build reserves terabytes of address space for its shadow memory and cannot start
# under an address-space limit: the sanitizer run (KVCODEC_SANITIZED=1, set by CMake) checks the exit
# codes without it (ASan itself reports any oversized allocation).
LIMIT='ulimit -v 1048576; '
[[ ${KVCODEC_SANITIZED:-0} == 1 ]] && LIMIT=''

expect 2 "CDFs of 65536 entries need" -- bash -c "${LIMIT}"'exec "$0" decode "$1" "$2"' "$K" "$R/decode/issue11-ac-cdf-17gb.kvc" "$T/lying.safetensors"
expect 2 "field 'cols'" -- bash -c "${LIMIT}"'exec "$0" decode "$1" "$2"' "$K" "$R/decode/issue11-rans-shared-pooled-2e24-cols.kvc" "$T/lying.safetensors"
for f in "$R"/safetensors/issue11-*.safetensors; do
  expect 2 "$(basename "$f")" -- bash -c "${LIMIT}"'exec "$0" encode -c raw "$1" "$2"' "$K" "$f" "$T/lying.kvc"
done
# --force keeps the permissions of the file it replaces.
expect 0 "" -- "$K" encode -q -c raw "$T/s.safetensors" "$T/private.kvc"
chmod 600 "$T/private.kvc"
expect 0 "" -- "$K" encode -q --force -c zstd "$T/s.safetensors" "$T/private.kvc"
expect 0 "600" -- stat -c %a "$T/private.kvc"
expect 0 "" -- bash -c '! ls "$0"/*.tmp-* 2>/dev/null' "$T"

echo "cli: $pass passed, $fail failed"
[[ $fail -eq 0 ]]
