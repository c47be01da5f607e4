"""The quality benchmark's cross-validation: a setting is scored only on queries it was not chosen on."""

from __future__ import annotations

import pytest
from benchmarks.quality import cross_validated


def test_a_setting_that_only_fits_the_queries_it_was_chosen_on_scores_nothing_held_out() -> None:
    # Each setting is perfect on half the queries, in a pattern that the folds (every 2nd id) cut across:
    # in-sample either looks worth 0.5, but what each fold learns is wrong for the queries it holds out.
    by_query = {
        "odd ids": {"1": 1.0, "2": 0.0, "3": 1.0, "4": 0.0},
        "even ids": {"1": 0.0, "2": 1.0, "3": 0.0, "4": 1.0},
    }

    score, chosen = cross_validated(by_query, folds=2)

    assert chosen == ["even ids", "odd ids"]  # fold 1 holds out "1" and "3", fold 2 "2" and "4"
    assert score == 0.0


def test_a_setting_better_on_every_query_is_chosen_by_every_fold() -> None:
    by_query = {
        "weak": {str(q): 0.2 for q in range(1, 13)},
        "strong": {str(q): 0.5 + q / 100 for q in range(1, 13)},
    }

    score, chosen = cross_validated(by_query, folds=4)

    assert chosen == ["strong"] * 4
    assert score == pytest.approx(sum(0.5 + q / 100 for q in range(1, 13)) / 12)
