# Sourced by the store benchmarks: starts a throwaway redis-server on a free loopback port in a temp dir
# and stops it (and removes the dir) when the sourcing script exits. Sets $work (the temp dir) and $port.
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --dir "$work" --save "" --appendonly no --daemonize no --logfile "$work/redis.log" &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null; wait $redis_pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
redis-cli -p "$port" ping >/dev/null 2>&1 || { echo "$0: redis-server did not start on port $port (see $work/redis.log)" >&2; exit 1; }
