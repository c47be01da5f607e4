from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crawldex.cleaning import clean_markdown, content_hash


def test_keeps_markdown_structure() -> None:
    markdown = "# Title\n\nIntro text.\n\n## Section\n\n- one\n- two\n\n```python\nx = 1\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |"
    assert clean_markdown(markdown) == markdown


def test_removes_noise() -> None:
    markdown = (
        "\ufeffTitle\r\n\r\n\r\n\r\nText\u200b with zero-width   \n"
        "![logo](data:image/png;base64,AAAA) ![](data:image/gif;base64,BBBB)\n"
        "[](https://example.com/empty) [kept](https://example.com)\x00"
    )
    assert clean_markdown(markdown) == "Title\n\nText with zero-width\nlogo\n [kept](https://example.com)"


def test_hash_changes_with_text_and_metadata_only() -> None:
    base = content_hash("text", url="https://a/", title="T", description=None, language="en")
    assert base == content_hash("text", url="https://a/", title="T", description=None, language="en")
    assert base != content_hash("text!", url="https://a/", title="T", description=None, language="en")
    assert base != content_hash("text", url="https://a/", title="T2", description=None, language="en")
    assert base != content_hash("text", url="https://a/", title="T", description=None, language="de")
    # Field boundaries matter: moving text between fields is a change.
    assert content_hash("ab", url="u", title="", description=None, language=None) != content_hash(
        "b", url="u", title="a", description=None, language=None
    )


@given(st.text())
def test_cleaning_is_idempotent(markdown: str) -> None:
    once = clean_markdown(markdown)
    assert clean_markdown(once) == once
    assert "\r" not in once
    assert "\n\n\n" not in once
