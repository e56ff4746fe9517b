#!/usr/bin/env bash
# `kvcodec store` end to end on a real dump, against a file:// store and a real redis-server on loopback:
# exit codes (0 hit, 4 miss, 1 usage, 2 bad input or unreachable store), messages, longest-prefix hits,
# ls/stat/rm, and the served KV itself (a lossless round trip stored again gives byte-identical chunks).
#   tests/store/test_store_cli.sh KVCODEC SHARED_DIR
set -uo pipefail
K=$1
shared=$2
dump=$shared/kv/kvlab-d0.safetensors
ctx=$shared/kv/kvlab-d0.ctx256.safetensors
other=$shared/kv/kvlab-d1.safetensors
if [[ ! -f $dump || ! -f $ctx || ! -f $other ]]; then
  echo "skip: the real dumps under $shared/kv are absent"
  exit 77
fi
command -v redis-server >/dev/null || { echo "FAIL: redis-server is not installed (scripts/setup installs it)"; exit 1; }
work=$(mktemp -d)
pid=
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
port=
for _ in $(seq 50); do
  p=$((20000 + RANDOM % 25000))
  (echo >/dev/tcp/127.0.0.1/$p) 2>/dev/null && continue  # taken
  redis-server --port "$p" --bind 127.0.0.1 --dir "$work" --save "" --appendonly no --daemonize no --logfile "$work/redis.log" &
  pid=$!
  for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
  if redis-cli -p "$p" ping >/dev/null 2>&1; then port=$p; break; fi
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=
done
[[ -n $port ]] || { echo "FAIL: could not start redis-server"; exit 1; }

fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
# run WANT_RC CMD...: runs it, output in $work/out and $work/err
run() {
  local want=$1; shift
  "$@" >"$work/out" 2>"$work/err"
  local rc=$?
  if [[ $rc != "$want" ]]; then fail "'$*' exited $rc, expected $want"; cat "$work/out" "$work/err"; fi
}
has() { grep -q -- "$1" "$work/$2" || { fail "expected '$1' in $2 of the last command"; cat "$work/out" "$work/err"; }; }

for url in "file://$work/fs" "redis://127.0.0.1:$port"; do
  echo "== $url"
  rm -f "$work/o.safetensors"
  run 4 "$K" store get --url "$url" "$dump" "$work/o.safetensors"
  has "miss" out
  [[ -e $work/o.safetensors ]] && fail "a miss wrote OUT"
  run 0 "$K" store put --url "$url" -c kvc:level=5 "$dump"
  has "stored 512 tokens as 2 chunks (2 written, 0 already stored)" out
  run 0 "$K" store put --url "$url" -c kvc:level=5 "$dump"
  has "(0 written, 2 already stored)" out
  run 0 "$K" store get --url "$url" "$dump" "$work/o.safetensors"
  has "served 512 of 512 tokens (2 chunks" out
  [[ -s $work/o.safetensors ]] || fail "get wrote no OUT"
  run 2 "$K" store get --url "$url" "$dump" "$work/o.safetensors"   # OUT exists, no --force
  has "exists" err
  # The first 256 tokens of the same text: a prefix hit. Another text: a miss. Another model: a miss.
  run 0 "$K" store get --url "$url" -f "$ctx" "$work/o.safetensors"
  has "served 256 of 256 tokens" out
  run 4 "$K" store get --url "$url" -f "$other" "$work/o.safetensors"
  run 4 "$K" store get --url "$url" -f --model other-model "$dump" "$work/o.safetensors"
  run 0 "$K" store ls --url "$url"
  [[ $(wc -l < "$work/out") == 1 ]] || fail "ls: expected 1 entry"
  has "kvlab  512 tokens  2 chunks of 256" out
  key=$(cut -d' ' -f1 "$work/out")
  run 0 "$K" store stat --url "$url" "$key" "$dump"
  has "512 of 512 tokens stored as" out
  has "2 chunk keys" out
  run 4 "$K" store stat --url "$url" "$other"
  run 0 "$K" store stat --url "$url"
  has "1 contexts, 2 prefix markers, 2 chunks" out
  run 0 "$K" store rm --url "$url" "$key"
  has "removed 4 keys" out
  run 4 "$K" store get --url "$url" -f "$dump" "$work/o.safetensors"
  run 4 "$K" store rm --url "$url" "$key"
done

echo "== served KV is the stored KV (lossless spec, chunks stored again byte for byte)"
run 0 "$K" store put --url "file://$work/a" -c raw:dtype=f32 "$dump"
run 0 "$K" store get --url "file://$work/a" -f "$dump" "$work/o.safetensors"
run 0 "$K" store put --url "file://$work/b" -c raw:dtype=f32 "$work/o.safetensors"
diff -r "$work/a/kvc/v1/c" "$work/b/kvc/v1/c" >/dev/null || fail "chunks of the served dump differ from the original's"

echo "== plan"
s0=$shared/kv/stories260K-s0.safetensors
s1=$shared/kv/stories260K-s1.safetensors
run 0 "$K" store plan --levels 1,9 --alpha 50 --tier dram:0.1:10:1 --tier redis:inf:0.2:500 "$s0" "$s1"
has "fixed kvc:level=9" out
has "planner beats every fixed level" out
run 0 "$K" store plan --levels 1,9 --alpha 50 --tier dram:0.1:10:1 --tier redis:inf:0.2:500 --measure mem --measure "redis://127.0.0.1:$port" --measure-mb 0.1 "$s0" "$s1"
has "tiers measured:" out
has "redis  redis://127.0.0.1:$port  payload 0.1 MB" out
has "planner beats every fixed level" out
run 1 "$K" store plan --tier dram:0.1:10:1 --tier redis:inf:0.2:500 --measure mem "$s0"
has "1 URLs for 2 tiers" err
run 1 "$K" store plan --tier dram:x "$s0"
has "NAME:CAPACITY_MB:GBPS:LATENCY_US" err
run 0 "$K" synth --q-heads 0 --layers 2 --kv-heads 2 --head-dim 8 --tokens 64 "$work/noq.safetensors"
run 2 "$K" store plan "$work/noq.safetensors"
has "queries" err

echo "== tiered:// (memory -> directory -> redis)"
T="tiered://mem:2MB,file://$work/t1:400KB,redis://127.0.0.1:$port"
run 0 "$K" store put --url "$T" -c kvc:level=5 "$dump"
has "stored 512 tokens as 2 chunks" out
has "kvc:level=5, tier 0 (mem" out
has "moved 1 context(s) from the memory tier down" out   # the process's memory tier is emptied at exit
run 0 "$K" store stat --url "$T" "$dump"
has "512 of 512 tokens stored as" out
has "in tier 1 (file://" out                              # 300 KB: the 400 KB directory holds it
run 0 "$K" store put --url "$T" "$other"                   # no -c: the planner chooses the level
has "stored 512 tokens" out
run 0 "$K" store get --url "$T" -f "$ctx" "$work/o.safetensors"
has "served 256 of 256 tokens" out
has "promoted to tier 0" out
run 0 "$K" store ls --url "$T"
[[ $(wc -l < "$work/out") == 2 ]] || fail "tiered ls: expected 2 entries"
run 0 "$K" store stat --url "$T"
has "tier 2  redis://127.0.0.1:$port" out
run 0 "$K" store rm --url "$T" "$dump"
has "removed 1 contexts" out
run 4 "$K" store get --url "$T" -f "$dump" "$work/o.safetensors"
run 1 "$K" store ls --url "tiered://mem:12XB"
has "expected mem followed by :CAPACITY" err

echo "== errors"
run 1 "$K" store ls --url "ftp://x"
has "expected file://DIR" err
run 1 "$K" store ls --url "redis://127.0.0.1:$port?nope=1"
has "unknown option" err
kill "$pid"; wait "$pid" 2>/dev/null; pid=
run 2 "$K" store get --url "redis://127.0.0.1:$port?retries=0" -f "$dump" "$work/o.safetensors"
has "127.0.0.1:$port" err
run 2 "$K" store put --url "file://$work/fs" "$work/nonexistent.safetensors"

if ((fails)); then echo "$fails failure(s)"; exit 1; fi
echo "store CLI: all checks passed"
