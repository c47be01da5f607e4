"""Hypothesis strategies shared by the property tests of the webhook parsers."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Any JSON value (NaN excluded: it is not JSON).
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
_hosts = st.lists(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True), min_size=1, max_size=3
).map(lambda labels: ".".join([*labels, "example"]))
# Pages' URLs. They end in a letter, a digit or "/": text is read up to the URL's end, trailing punctuation
# (a sentence's full stop) left out.
web_urls: st.SearchStrategy[str] = st.builds(
    "{}://{}/{}".format,
    st.sampled_from(["http", "https", "HTTPS"]),
    _hosts,
    st.from_regex(r"([A-Za-z0-9._~/-]{0,30}[A-Za-z0-9])?", fullmatch=True),
)
# Non-empty text with no whitespace at either end (what the parsers strip).
words: st.SearchStrategy[str] = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Zs", "Zl", "Zp"]), min_size=1, max_size=30
)
