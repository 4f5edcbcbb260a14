"""Hostile ``n`` for ``get_top`` as query text (``GET /v1/top?n=...``, ``query.top.parse_top``):
only ASCII digits name a count. Before: Python's ``int`` took ``'1_0'`` as 10 and ``'٥'``
(Arabic-Indic five) as 5, and a digit string over 4,300 characters raised a ``ValueError``
of its own (the int-string limit) where the service answers ``{error}``."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from query.stats import QueryError
from query.top import parse_top
from schemas.storage import TOP_K

AT = "2026-12-02T10:00:00Z"


@given(st.text(min_size=1, max_size=12).filter(lambda t: not (t.strip().isascii() and t.strip().isdigit())))
def test_text_that_is_not_ascii_digits_is_refused(text):
    with pytest.raises(QueryError, match="n must be an integer"):
        parse_top("view", "hour", AT, text)


@given(st.integers(1, TOP_K), st.sampled_from(["", " ", "0"]), st.sampled_from(["", " "]))
def test_ascii_digits_in_range_are_the_count(n, lead, trail):
    assert parse_top("view", "hour", AT, f"{lead}{n}{trail}").n == n


@pytest.mark.parametrize("text", ["1_0", "٥", "１０", "+5", "9" * 5000, "5\x00"])
def test_odd_numerals_are_refused(text):
    with pytest.raises(QueryError, match=f"n must be an integer from 1 to {TOP_K}"):
        parse_top("view", "hour", AT, text)


@pytest.mark.parametrize("text", ["1_0", "٥"])
def test_cli_refuses_odd_numerals(text, capsys, monkeypatch):
    """``viewcounts top -n``: argparse's ``type=int`` took them too; the text goes to ``get_top``."""
    from viewcounts import cli

    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", "127.0.0.1:9")  # refused before any read
    assert cli.main(["top", "--type", "view", "--granularity", "hour", "--at", AT, "-n", text]) == 2
    assert f"n must be an integer from 1 to {TOP_K}" in capsys.readouterr().err
