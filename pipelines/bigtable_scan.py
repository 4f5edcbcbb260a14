"""A filtered scan of a Bigtable table: the rows whose key matches a regex (the recompute's
checks of stored top lists and aggregates)."""

from __future__ import annotations


def rows_matching(project: str, instance: str, table: str, key_regex: bytes, *filters) -> list:
    """The rows (``google.cloud.bigtable`` ``PartialRowData``, in key order) of ``table`` whose
    key matches the RE2 ``key_regex`` (matched by Bigtable: write it for the whole key,
    ``^...$``; ``(?s)`` lets ``.`` match the newlines a key may hold), each passed through
    ``filters`` (row filters, chained after the key filter). Opens a data client and closes it
    once every row is read. Raises ``google.api_core.exceptions.NotFound`` for a table that does
    not exist."""
    from google.cloud import bigtable
    from google.cloud.bigtable import row_filters as rf

    client = bigtable.Client(project=project, admin=False)
    try:
        rows = (
            client.instance(instance)
            .table(table)
            .read_rows(filter_=rf.RowFilterChain([rf.RowKeyRegexFilter(key_regex), *filters]))
        )
        return list(rows)
    finally:
        client.close()
