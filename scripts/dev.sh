#!/usr/bin/env bash
# `make dev`: the whole pipeline in one process on embedded defaults (in-process model, embedded
# vector store and SQLite in ./data, in-process queue consumers), on http://127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")/.."
CRAWLDEX_REDIS_URL="$(scripts/ensure-redis.sh)"
export CRAWLDEX_REDIS_URL
export CRAWLDEX_EMBEDDED_WORKERS=true
export CRAWLDEX_API_TOKEN="${CRAWLDEX_API_TOKEN:-dev-token}"
export CRAWLDEX_FIRECRAWL_WEBHOOK_SECRET="${CRAWLDEX_FIRECRAWL_WEBHOOK_SECRET:-dev-webhook-secret}"
export CRAWLDEX_DATA_DIR="${CRAWLDEX_DATA_DIR:-./data}"
export CRAWLDEX_HOST="${CRAWLDEX_HOST:-127.0.0.1}"
export CRAWLDEX_PORT="${CRAWLDEX_PORT:-8000}"
export CRAWLDEX_LOG_FORMAT="${CRAWLDEX_LOG_FORMAT:-text}"
cat >&2 <<MSG
crawldex embedded mode on http://${CRAWLDEX_HOST}:${CRAWLDEX_PORT}  (OpenAPI docs: /docs)
  API token:               ${CRAWLDEX_API_TOKEN}
  Firecrawl webhook secret: ${CRAWLDEX_FIRECRAWL_WEBHOOK_SECRET}
  Redis:                   ${CRAWLDEX_REDIS_URL}
  Data:                    ${CRAWLDEX_DATA_DIR}
MSG
exec .venv/bin/crawldex-ingest-api
