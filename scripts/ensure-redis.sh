#!/usr/bin/env bash
# Print a Redis URL that answers: CRAWLDEX_REDIS_URL (default the machine's 127.0.0.1:6379), or else a
# private redis-server started here on port 6390 with its files in .run/.
set -euo pipefail
cd "$(dirname "$0")/.."
url="${CRAWLDEX_REDIS_URL:-redis://127.0.0.1:6379/0}"
if .venv/bin/python -c "import redis,sys; redis.Redis.from_url(sys.argv[1], socket_connect_timeout=2).ping()" "$url" 2>/dev/null; then
  echo "$url"; exit 0
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "ensure-redis: no Redis answers at $url and redis-server is not installed (apt-get install redis-server)" >&2
  exit 1
fi
mkdir -p .run
private="redis://127.0.0.1:6390/0"
if ! .venv/bin/python -c "import redis,sys; redis.Redis.from_url(sys.argv[1], socket_connect_timeout=2).ping()" "$private" 2>/dev/null; then
  echo "ensure-redis: no Redis at $url; starting a private redis-server on 127.0.0.1:6390" >&2
  redis-server --port 6390 --bind 127.0.0.1 --daemonize yes --save "" --appendonly no \
    --dir "$PWD/.run" --logfile "$PWD/.run/redis.log" --pidfile "$PWD/.run/redis.pid"
  for _ in $(seq 50); do
    .venv/bin/python -c "import redis,sys; redis.Redis.from_url(sys.argv[1]).ping()" "$private" 2>/dev/null && break
    sleep 0.1
  done
fi
echo "$private"
