"""Liveness of a worker without HTTP: `python -m crawldex.probe --kind index-worker`.

Exits 0 when a worker of this host (pod) and kind is registered in Redis and its heartbeat is fresh,
1 otherwise. RQ refreshes the heartbeat while it waits for jobs and between jobs; a job longer than
`--max-age` does not refresh it, so give the probe at least the job timeout.
"""

from __future__ import annotations

import argparse
import socket
import sys
from datetime import UTC, datetime

import redis
from rq import Worker

from crawldex.config import Settings


def fresh_worker(connection: redis.Redis, host: str, kind: str, max_age_seconds: float) -> str | None:
    now = datetime.now(UTC)
    for worker in Worker.all(connection=connection):
        if not (worker.name.startswith(f"{host}.") and worker.name.endswith(f".{kind}")):
            continue
        beat = worker.last_heartbeat
        if beat is None:
            continue
        if beat.tzinfo is None:
            beat = beat.replace(tzinfo=UTC)
        if (now - beat).total_seconds() <= max_age_seconds:
            return str(worker.name)
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m crawldex.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--kind", required=True, choices=["index-worker", "rescrape-worker"])
    parser.add_argument("--max-age", type=float, default=720.0, help="seconds since the last heartbeat")
    args = parser.parse_args(argv)
    connection = redis.Redis.from_url(Settings().redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        name = fresh_worker(connection, socket.gethostname(), args.kind, args.max_age)
    except redis.RedisError as exc:
        print(f"redis unavailable: {exc}", file=sys.stderr)
        sys.exit(1)
    if name is None:
        print(f"no live {args.kind} on {socket.gethostname()}", file=sys.stderr)
        sys.exit(1)
    print(f"live: {name}")


if __name__ == "__main__":
    main()
