#!/usr/bin/env bash
# `make test`: needs Redis and PostgreSQL (the machine's: 127.0.0.1:6379, 127.0.0.1:5432 trust auth).
# CRAWLDEX_TEST_REDIS_URL and CRAWLDEX_TEST_DATABASE_URL point the tests elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
CRAWLDEX_TEST_REDIS_URL="${CRAWLDEX_TEST_REDIS_URL:-$(CRAWLDEX_REDIS_URL=redis://127.0.0.1:6379/0 scripts/ensure-redis.sh)}"
export CRAWLDEX_TEST_REDIS_URL
scripts/ensure-prometheus.sh  # promtool and prometheus, for the alert-rule and metrics tests
CRAWLDEX_TEST_CHANGEDETECTION="${CRAWLDEX_TEST_CHANGEDETECTION:-$(scripts/ensure-changedetection.sh)}"
export CRAWLDEX_TEST_CHANGEDETECTION  # the real changedetection.io, for tests/e2e/test_changedetection.py
export HF_HUB_OFFLINE=1
exec .venv/bin/pytest "$@"
