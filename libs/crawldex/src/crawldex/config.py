"""The one configuration object of crawldex, read from ``CRAWLDEX_*`` environment variables.

Every knob is documented in docs/configuration.md; keep the two in step.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from crawldex.keyword import DEFAULT_STEMMER, stemmer_names

QUEUE_INDEXING = "indexing"
QUEUE_RESCRAPE = "rescrape"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRAWLDEX_", env_file=None, extra="ignore")

    # Secrets. Unset secrets switch their check off only where that is safe; see `require_secrets`.
    api_token: SecretStr | None = Field(default=None, description="Bearer token for /api/* (not webhooks).")
    firecrawl_webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 secret shared with Firecrawl (X-Firecrawl-Signature)."
    )

    # Outside systems.
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy async URL (postgresql+asyncpg://...). Unset: SQLite file in data_dir (embedded).",
    )
    # Connections kept open per pool (a process has two: transactions and single statements), and as
    # many more opened for bursts. Too few, and a burst of webhooks opens and closes connections.
    database_pool_size: int = Field(default=10, ge=1, le=100)
    qdrant_url: str | None = Field(default=None, description="Qdrant server URL. Unset: embedded store.")
    qdrant_api_key: SecretStr | None = None
    qdrant_collection: str = "crawldex"
    qdrant_max_request_mb: float = Field(
        default=24.0,
        gt=0,
        description=(
            "Most MiB of points one write request to a Qdrant server may carry, counted from above; a "
            "larger write (a page of millions of characters) is sent in several. Keep it under the "
            "server's service.max_request_size_mb (32 by default)."
        ),
    )
    tei_url: str | None = Field(default=None, description="TEI base URL. Unset: in-process model.")
    tei_timeout_seconds: float = Field(default=30.0, gt=0)
    tei_max_retries: int = Field(default=5, ge=0)
    tei_query_prompt_name: str | None = None
    tei_document_prompt_name: str | None = None
    data_dir: Path = Path("./data")

    # Change detection and re-fetching.
    changedetection_token: SecretStr | None = Field(
        default=None,
        description="Shared secret changedetection.io sends (X-Crawldex-Token header or ?token=).",
    )
    firecrawl_url: str | None = Field(
        default=None, description="Firecrawl API base URL. Unset: built-in fetcher."
    )
    firecrawl_api_key: SecretStr | None = None
    firecrawl_timeout_ms: int = Field(default=30000, ge=1000, le=300000)
    fetch_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts or CIDRs the built-in fetcher may reach although private/loopback (e.g. 127.0.0.1).",
    )
    fetch_timeout_seconds: float = Field(default=30.0, gt=0)
    fetch_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    fetch_max_redirects: int = Field(default=5, ge=0, le=20)
    fetch_user_agent: str = "crawldex/0.1 (+https://github.com/crawldex/crawldex)"
    rescrape_job_timeout_seconds: int = Field(default=180, ge=1)
    rescrape_job_retries: int = Field(default=3, ge=0)
    rescrape_job_retry_intervals: list[int] = Field(default_factory=lambda: [10, 60, 300])
    reconcile_delay_seconds: int = Field(
        default=30,
        ge=0,
        le=86400,
        description="Wait after crawl.completed before reading the crawl's results back from Firecrawl.",
    )
    reconcile_job_timeout_seconds: int = Field(default=1800, ge=10)

    # In-process model and chunking.
    model_name: str = Field(
        default="all-MiniLM-L6-v2", description="In-process model; only the bundled all-MiniLM-L6-v2 ships."
    )
    model_device: str = "cpu"
    # 8: on 2 CPU cores as fast as 32 (less padding) with ~130 MB less peak memory (docs/benchmarks.md).
    model_batch_size: int = Field(default=8, ge=1)
    tokenizer_path: Path | None = Field(
        default=None, description="tokenizer.json used to count chunk tokens; default: the bundled model's."
    )
    chunk_tokens: int = Field(default=250, ge=16)
    chunk_overlap_tokens: int = Field(default=40, ge=0)

    # Keyword (BM25) scoring, computed client side; Qdrant supplies the IDF.
    bm25_k1: float = Field(default=1.2, gt=0)
    bm25_b: float = Field(default=0.75, ge=0, le=1)
    bm25_avg_doc_tokens: float = Field(default=120.0, gt=0)
    # The stemmer of a new collection; an existing collection keeps the one it was built with.
    keyword_stemmer: str = DEFAULT_STEMMER

    # Search.
    search_rrf_k: int = Field(default=60, ge=1)
    # Weighted 0.55/0.45 of z-scores, grouped by page: on SciFact (stemmed keywords) hybrid nDCG@10
    # 0.837 against semantic's 0.815; 0.50-0.60 all within 0.003 of it; RRF k=60 ranked below
    # semantic alone (0.805); fused chunk by chunk, 0.829 (docs/benchmarks.md).
    search_fusion: Literal["rrf", "weighted"] = "weighted"
    search_vector_weight: float = Field(default=0.55, ge=0, le=1)
    search_keyword_weight: float = Field(default=0.45, ge=0, le=1)
    search_group_by: Literal["page", "chunk"] = Field(
        default="page", description="Results per page: one (its best chunk) or every chunk."
    )
    search_candidates: int = Field(
        default=100, ge=1, le=1000, description="Per-mode candidates before fusion."
    )

    # API.
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = Field(
        default="json", description="json: one JSON object per line (production); text: for people."
    )
    migrate_on_start: bool = True

    # Abuse protection of the ingest-api (docs/operations.md#security). Limits live in Redis, shared by
    # every replica; a client may send `burst` requests at once, then `per_minute` a minute.
    rate_limit_enabled: bool = True
    rate_limit_api_per_minute: int = Field(
        default=1200, ge=1, description="Sustained /api/* requests a minute per client (webhooks apart)."
    )
    rate_limit_api_burst: int = Field(
        default=200, ge=1, description="/api/* requests a client may send at once."
    )
    rate_limit_webhook_per_minute: int = Field(
        default=12000, ge=1, description="Sustained /api/webhook/* deliveries a minute per sender address."
    )
    rate_limit_webhook_burst: int = Field(default=2000, ge=1)
    rate_limit_trust_forwarded: bool = Field(
        default=False,
        description="Identify clients by rate_limit_forwarded_header (set by a proxy you trust), not the peer.",
    )
    rate_limit_forwarded_header: str = Field(default="X-Forwarded-For", min_length=1)
    webhook_replay_window_seconds: int = Field(
        default=300,
        ge=0,
        le=7 * 86400,
        description="Deliveries whose X-Crawldex-Timestamp is further than this from now are refused (0: off).",
    )
    cors_allow_origins: list[str] = Field(
        default_factory=list, description="Origins browsers may call the API from; empty: no CORS at all."
    )

    # Jobs.
    redis_memory_refuse_ratio: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description=(
            "New work from outside (webhooks, /api/index, change notifications, imports, reconciled pages) is "
            "refused with 503 while Redis's used memory is above this share of its maxmemory, so that the "
            "workers, which need to write to take and finish jobs (and hand re-scraped pages on), keep room to "
            "drain the queues. No maxmemory: never refused."
        ),
    )
    redis_memory_check_seconds: float = Field(default=5.0, gt=0)
    index_job_timeout_seconds: int = Field(default=600, ge=1)
    index_batch_pages: int = Field(
        default=8,
        ge=1,
        le=256,
        description=(
            "Index jobs an index-worker takes from the queue at once and indexes as one batch (whatever is "
            "queued, up to this many; it never waits for more). 1: one job at a time."
        ),
    )
    index_batch_max_chars: int = Field(
        default=1_000_000,
        ge=1,
        description=(
            "Markdown characters a batch holds at most, its pages together: the jobs that would go past it "
            "are left queued for the next batch (a first page larger than this is indexed alone)."
        ),
    )
    job_result_ttl_seconds: int = Field(default=86400, ge=0)
    job_failure_ttl_seconds: int = Field(default=7 * 86400, ge=0)
    index_job_retries: int = Field(default=3, ge=0)
    index_job_retry_intervals: list[int] = Field(default_factory=lambda: [10, 30, 60])
    job_retry_jitter: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Each job's retry waits are spread over (1 ± jitter) times the configured intervals.",
    )
    worker_heartbeat_seconds: int = Field(
        default=10,
        ge=1,
        le=300,
        description="How often a busy worker proves it is alive; a job whose worker misses 3 beats is re-run.",
    )
    worker_maintenance_seconds: int = Field(
        default=30,
        ge=5,
        le=3600,
        description="How often workers look for jobs of dead workers (and stuck change events) to recover.",
    )

    # Telemetry.
    metrics_port: int = Field(
        default=9100,
        ge=0,
        le=65535,
        description="Port of a worker's /metrics (0: none). ingest-api serves its own.",
    )
    metrics_host: str = "0.0.0.0"  # noqa: S104 - scraped from other pods
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces endpoint (http://collector:4318/v1/traces). Unset: no export.",
    )
    trace_sample_ratio: float = Field(default=1.0, ge=0, le=1)
    operation_metrics_enabled: bool = True
    operation_metrics_retention_days: int = Field(default=30, ge=1)

    # Embedded mode (`make dev`): consumers of the queues run inside the ingest-api process.
    embedded_workers: bool = Field(
        default=False, description="Run in-process queue consumers (embedded mode; one process only)."
    )

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if value.startswith(("postgres://", "postgresql://")):
            return "postgresql+asyncpg://" + value.split("://", 1)[1]
        return value

    @field_validator("keyword_stemmer")
    @classmethod
    def _known_stemmer(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in stemmer_names():
            raise ValueError(f"unknown stemmer {value!r}: one of {', '.join(stemmer_names())}")
        return value

    @field_validator("qdrant_url", "tei_url", "firecrawl_url")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else None

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Settings:
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError(
                f"CRAWLDEX_CHUNK_OVERLAP_TOKENS ({self.chunk_overlap_tokens}) must be smaller than "
                f"CRAWLDEX_CHUNK_TOKENS ({self.chunk_tokens})"
            )
        return self

    def __repr_args__(self) -> Any:
        # URLs may carry a password (postgresql://user:pass@..., redis://:pass@...): repr and str mask it.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name in _URL_FIELDS and isinstance(value, str) else value

    def startup_summary(self) -> str:
        """What a process logs about where it connects at start-up: no secret, URLs without passwords."""
        return ", ".join(
            f"{name}={redact_url(value) if isinstance(value, str) else value}"
            for name, value in (
                ("redis", self.redis_url),
                ("database", self.effective_database_url),
                ("qdrant", self.qdrant_url or "embedded"),
                ("embedder", self.tei_url or self.model_name),
                ("firecrawl", self.firecrawl_url or "builtin fetcher"),
            )
        )

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'crawldex.db').resolve()}"

    @property
    def qdrant_path(self) -> Path:
        return self.data_dir / "qdrant"


_URL_FIELDS = frozenset(
    {"redis_url", "database_url", "qdrant_url", "tei_url", "firecrawl_url", "otlp_endpoint"}
)


def redact_url(url: str) -> str:
    """``url`` with the password of its user-info part replaced by ``***`` (everything else kept)."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    authority, slash, path = rest.partition("/")
    user_info, at, host = authority.rpartition("@")
    if not at or ":" not in user_info:
        return url
    user = user_info.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{slash}{path}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
