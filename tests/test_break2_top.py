"""Hostile ``n`` for ``get_top`` as query text (``GET /v1/top?n=...``, ``query.top.parse_top``):
only ASCII digits name a count. Before: Python's ``int`` took ``'1_0'`` as 10 and ``'٥'``
(Arabic-Indic five) as 5, and a digit string over 4,300 characters raised a ``ValueError``
of its own (the int-string limit) where the service answers ``{error}``."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from query.stats import QueryError
from query.top import parse_top
from schemas.event import format_time_us
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


@pytest.fixture(scope="module")
def markup_table(bigtable_host):
    import uuid

    from tests.test_top import INSTANCE, PROJECT, store_tops
    from viewcounts.local import provision

    table = f"top-markup-{uuid.uuid4().hex[:8]}"
    provision.create_table(PROJECT, INSTANCE, table)
    return table, PROJECT, INSTANCE, store_tops


_HOURS = itertools.count()
MARKUP_IDS = st.sampled_from(["[/bold]", "[red]V1", "[link=http://x]V", "[bold]", "a[/]b", "\\[x]", "[#ff0000]%23"])


@pytest.mark.emulator
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(MARKUP_IDS, st.text(min_size=1, max_size=12)), min_size=1, max_size=5, unique=True))
def test_cli_table_prints_video_ids_as_they_are(markup_table, capsys, monkeypatch, ids):
    """``viewcounts top`` (table) prints each stored video_id verbatim: rich read them as console
    markup (``[/bold]`` raised a MarkupError, ``[red]V1`` printed as ``V1``)."""
    from viewcounts import cli

    table, project, instance, store_tops = markup_table
    hour_s = 1_715_648_400 + 3600 * next(_HOURS)  # a window of its own per example
    store_tops({("view", "hour", hour_s): [(v, 100 - i) for i, v in enumerate(sorted(ids))]}, table)
    monkeypatch.setenv("COLUMNS", "400")
    capsys.readouterr()
    assert (
        cli.main(
            [
                "top",
                "--type",
                "view",
                "--granularity",
                "hour",
                "--at",
                format_time_us(hour_s * 1_000_000),
                "-n",
                "5",
                "--project",
                project,
                "--instance",
                instance,
                "--table",
                table,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for v in ids:
        if v.isprintable() and v.strip() == v:
            assert v in out


@pytest.mark.emulator
@pytest.mark.parametrize("video_id", ["[/bold]", "a[/]b", "[red]V1"])
def test_cli_stats_table_title_holds_the_video_id_as_it_is(markup_table, capsys, monkeypatch, video_id):
    """``viewcounts stats`` (table) puts the video id in the table's title: rich read it as
    console markup too (``[/bold]`` raised a MarkupError after the query was answered)."""
    from viewcounts import cli

    table, project, instance, _ = markup_table
    monkeypatch.setenv("COLUMNS", "400")
    capsys.readouterr()
    assert (
        cli.main(
            [
                "stats",
                "--video-id",
                video_id,
                "--event-type",
                "view",
                "--function",
                "count",
                "--start",
                "2024-05-14T00:00:00Z",
                "--end",
                "2024-05-14T02:00:00Z",
                "--granularity",
                "hour",
                "--project",
                project,
                "--instance",
                instance,
                "--table",
                table,
            ]
        )
        == 0
    )
    assert video_id in capsys.readouterr().out
