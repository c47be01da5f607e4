from __future__ import annotations

import json
import logging

import pytest

from crawldex.logs import configure_logging, current_context, log_context


@pytest.fixture
def restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_context(capsys: pytest.CaptureFixture[str], restore_logging: object) -> None:
    configure_logging("INFO", "json")
    log = logging.getLogger("crawldex.test")
    with log_context(job_id="index-1", url="https://a.example/", crawl_id=None):
        with log_context(request_id="r-9"):
            log.info("indexed %d chunks", 3)
        assert current_context() == {"job_id": "index-1", "url": "https://a.example/"}
    log.warning("outside")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["message"] == "indexed 3 chunks"
    assert lines[0]["level"] == "info"
    assert lines[0]["logger"] == "crawldex.test"
    assert (lines[0]["job_id"], lines[0]["url"], lines[0]["request_id"]) == (
        "index-1",
        "https://a.example/",
        "r-9",
    )
    assert "crawl_id" not in lines[0]
    assert "job_id" not in lines[1]
    assert "ValueError: boom" in lines[2]["exception"]


def test_text_format_for_people(capsys: pytest.CaptureFixture[str], restore_logging: object) -> None:
    configure_logging("DEBUG", "text")
    with log_context(job_id="index-2"):
        logging.getLogger("x").debug("hello")
    line = capsys.readouterr().err.strip()
    assert line.endswith("hello job_id=index-2")
    assert " DEBUG x [" in line
