"""Properties of the markdown cleaner on arbitrary text."""

from __future__ import annotations

import re
import unicodedata

from hypothesis import example, given
from hypothesis import strategies as st

from crawldex.cleaning import clean_markdown, content_hash

# The two constructs the cleaner removes, as single regular expressions: what must not be left.
DATA_URI_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*data:[^)]*\)")
EMPTY_LINK = re.compile(r"(?<!!)\[\s*\]\([^)]*\)")
NOISE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\u200c\u200d\u2060\ufeff\r]")

# Text built from the characters the cleaner reacts to, so that nesting and edge cases are common.
_markdown_alphabet = st.sampled_from(
    ["[", "]", "(", ")", "!", " ", "\t", "\n", "\r", "data:", "x", "é", "e", "\u0301", "\u200b", "\x00",
     "\ufeff", "\x1c", "\u2028", "\u00a0", "K", "\u212a", "#", "*", "`"]
)  # fmt: skip
bracket_soup = st.lists(_markdown_alphabet, max_size=60).map("".join)
any_text = st.one_of(st.text(), bracket_soup)

NESTED = [
    "[[](a)](b)",  # an empty link that appears once the inner one is gone
    "![![y](data:a)](data:b)",  # an image whose alt text held an image
    "!![[x](data:y)](data:z)",  # a "!" that meets the alt text's "[" once its image is gone
    "[ ![ ](data:x)](b)",  # a link left blank by an image with a blank alt text
    "e\u200b\u0301",  # a letter and its accent, brought together by the removal between them
    "x[](a)\u0301",
]


@given(any_text)
@example(NESTED[0])
@example(NESTED[1])
@example(NESTED[2])
@example(NESTED[3])
@example(NESTED[4])
@example(NESTED[5])
def test_cleaning_is_idempotent_and_leaves_no_noise(markdown: str) -> None:
    cleaned = clean_markdown(markdown)
    assert clean_markdown(cleaned) == cleaned
    assert cleaned == cleaned.strip()
    assert unicodedata.is_normalized("NFC", cleaned)
    assert NOISE.search(cleaned) is None
    assert "\n\n\n" not in cleaned
    assert re.search(r"[ \t]\n", cleaned) is None
    assert DATA_URI_IMAGE.search(cleaned) is None
    assert EMPTY_LINK.search(cleaned) is None


@given(st.text(alphabet=st.characters(exclude_characters="[]!"), max_size=300))
@example("\u0339 \u0334")  # removing the space lets NFC reorder the marks: compare both sides normalised
def test_text_without_brackets_loses_only_noise(markdown: str) -> None:
    """Without link syntax, only whitespace and the invisible characters change; the rest is kept in
    order (up to Unicode composition)."""
    cleaned = clean_markdown(markdown)
    visible = NOISE.sub("", markdown)
    assert unicodedata.normalize("NFC", "".join(cleaned.split())) == unicodedata.normalize(
        "NFC", "".join(visible.split())
    )


@given(alt=st.text(alphabet=st.characters(exclude_characters="[]!()"), max_size=20), prose=st.text(
    alphabet=st.characters(exclude_characters="[]!()", exclude_categories=("Cc", "Cf", "Zl", "Zp", "Zs")),
    min_size=1, max_size=20,
))  # fmt: skip
def test_inline_images_become_their_alt_text_and_links_stay(alt: str, prose: str) -> None:
    markdown = f"{prose} ![{alt}](data:image/png;base64,AAAA) [{prose}](https://example.com/{prose})"
    cleaned = clean_markdown(markdown)
    assert "base64,AAAA" not in cleaned  # the image's data URI is gone (the prose may say "data:" itself)
    assert f"[{unicodedata.normalize('NFC', prose)}](https://example.com/" in cleaned


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_never_raises_on_surrogates(markdown: str) -> None:
    # Lone surrogates (JSON "\ud800" escapes) reach the cleaner only if the boundary lets them in, but the
    # cleaner itself must not be where it breaks.
    clean_markdown(markdown + "\ud800")


@given(
    text=st.text(max_size=50),
    metadata=st.tuples(*(st.none() | st.text(max_size=10) for _ in range(3))),
    signature=st.text(max_size=10),
)
def test_content_hash_is_stable(text: str, metadata: tuple[str | None, ...], signature: str) -> None:
    title, description, language = metadata
    arguments = {
        "url": "https://example.com/",
        "title": title,
        "description": description,
        "language": language,
        "index_signature": signature,
    }
    digest = content_hash(text, **arguments)  # type: ignore[arg-type]
    assert digest == content_hash(text, **arguments)  # type: ignore[arg-type]
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest != content_hash(text + "!", **arguments)  # type: ignore[arg-type]
