"""`crawldex-index-worker`: an RQ worker on the `indexing` queue.

Services (the model above all) are built once per process and reused by every job. SIGTERM lets the
running job or batch finish (RQ's warm shutdown; a batch's jobs that would index on their own go back to
their queue); a second SIGTERM stops at once.
"""

from __future__ import annotations

from crawldex.worker import main as worker_main


def main(argv: list[str] | None = None) -> None:
    worker_main("index-worker", argv)


if __name__ == "__main__":
    main()
