"""A server speaking TEI's documented HTTP API (/info, /embed, /health), backed by the real model.

TEI itself cannot run on these machines; the e2e tests run the index-worker and the API in TEI mode
against this server, so that TEI's metrics and error paths happen for real over HTTP. It answers the
way TEI answers: 429 `Overloaded` for every `--overload-every`-th /embed call, 503 `Unhealthy` for
every `--unavailable-every`-th, and 424 `Backend` for any input containing FAIL-EMBED.

    python -m tests.e2e.tei_contract_server --port 8080
"""

from __future__ import annotations

import argparse
import itertools

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from crawldex.adapters.local_model import BUNDLED_MODEL_ID, LocalModelEmbedder

FAIL_MARKER = "FAIL-EMBED"


class EmbedRequest(BaseModel):
    inputs: str | list[str]
    normalize: bool = True
    truncate: bool | None = None
    prompt_name: str | None = None


def build(overload_every: int, unavailable_every: int) -> FastAPI:
    model = LocalModelEmbedder.load()
    calls = itertools.count(1)
    app = FastAPI()

    @app.get("/info")
    def info() -> dict[str, object]:
        return {
            "model_id": BUNDLED_MODEL_ID,
            "model_sha": None,
            "model_dtype": "float32",
            "model_type": {"embedding": {"pooling": "mean"}},
            "max_concurrent_requests": 512,
            "max_input_length": model.info.max_input_tokens,
            "max_batch_tokens": 16384,
            "max_batch_requests": None,
            "max_client_batch_size": 32,
            "auto_truncate": True,
            "tokenization_workers": 2,
            "version": "1.8.0",
        }

    @app.get("/health")
    def health() -> dict[str, str]:
        return {}

    @app.post("/embed", response_model=None)
    def embed(request: EmbedRequest) -> JSONResponse | list[list[float]]:
        inputs = [request.inputs] if isinstance(request.inputs, str) else request.inputs
        call = next(calls)
        if overload_every and call % overload_every == 0:
            return JSONResponse({"error": "Model is overloaded", "error_type": "overloaded"}, status_code=429)
        if unavailable_every and call % unavailable_every == 0:
            return JSONResponse({"error": "unhealthy", "error_type": "unhealthy"}, status_code=503)
        if any(FAIL_MARKER in text for text in inputs):
            return JSONResponse(
                {"error": 'DriverError("CUDA error")', "error_type": "backend"}, status_code=424
            )
        if len(inputs) > 32:
            return JSONResponse(
                {
                    "error": f"batch size {len(inputs)} > maximum allowed batch size 32",
                    "error_type": "validation",
                },
                status_code=422,
            )
        return model.embed_documents_sync(inputs)

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--overload-every", type=int, default=0)
    parser.add_argument("--unavailable-every", type=int, default=0)
    args = parser.parse_args()
    uvicorn.run(
        build(args.overload_every, args.unavailable_every),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
