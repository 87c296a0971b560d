"""Windows over every series at once: one pass over the sorted points, not one per series.

The detectors need rolling windows per series (the last day, the last three hours).
Written as `.over(series)`, polars splits the frame into one group per series, runs the
window on each and scatters the results back: on 1.7M points of 130 series that made a
24-hour rolling mean 5x slower and a rolling median 1.3x slower than one window over
the whole column. Here the points, sorted by series and time, get a *spread time*: each
series' timestamps moved forward by its number times a span longer than all the data
plus the longest window, so one rolling window over the whole column never reaches from
one series into the next, and gives exactly what the window per series gives.
Shifts and runs (consecutive rows in the same state) use the index of their group's or
run's first row instead of a group per series or per run.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import polars as pl

GROUP = "_g"  # the group's number, increasing with the row order
FIRST = "_g0"  # the row index of the group's first row
SPREAD = "_st"  # the spread time: windows over it stay inside each group
_MARGIN = timedelta(days=1)


def _index() -> pl.Expr:
    return pl.int_range(pl.len(), dtype=pl.Int64)


def spread(df: pl.DataFrame, by: Sequence[str | pl.Expr], *, longest: timedelta) -> pl.DataFrame:
    """Add GROUP, FIRST and SPREAD to `df`, which is sorted by `by` and then `timestamp`.

    `longest` is the longest window that will run over SPREAD: groups lie further apart.
    """
    if df.is_empty():
        return df.with_columns(
            pl.lit(0, dtype=pl.Int64).alias(GROUP),
            pl.lit(0, dtype=pl.Int64).alias(FIRST),
            pl.col("timestamp").alias(SPREAD),
        )
    ts = df.get_column("timestamp")
    lo, hi = ts.min(), ts.max()
    assert lo is not None and hi is not None
    span_ms = int((hi - lo + longest + _MARGIN) / timedelta(milliseconds=1))  # type: ignore[operator]
    keys = [pl.col(k) if isinstance(k, str) else k for k in by]
    new = pl.any_horizontal(k != k.shift(1) for k in keys).fill_null(True)
    moved = pl.col("timestamp").dt.epoch("ms") + pl.col(GROUP) * span_ms
    return (
        df.with_columns(new.alias(GROUP))
        .with_columns(
            (pl.col(GROUP).cum_sum().cast(pl.Int64) - 1).alias(GROUP),
            pl.when(pl.col(GROUP)).then(_index()).forward_fill().alias(FIRST),
        )
        .with_columns(moved.cast(pl.Datetime("ms")).alias(SPREAD))
    )


def first_in_group() -> pl.Expr:
    """True on the first row of each group (after `spread`)."""
    return _index() == pl.col(FIRST)


def shifted(expr: pl.Expr) -> pl.Expr:
    """`expr` of the previous row of the same group (null on a group's first row)."""
    return pl.when(first_in_group()).then(None).otherwise(expr.shift(1))


def group_first(expr: pl.Expr) -> pl.Expr:
    """`expr` at the first row of each row's group."""
    return expr.gather(pl.col(FIRST))


def rows_window(expr: pl.Expr, n: int) -> pl.Expr:
    """Mask for a window of the last `n` rows: null until the group has `n` rows."""
    return pl.when(_index() - pl.col(FIRST) >= n - 1).then(expr).otherwise(None)


def run_start(starts: pl.Expr) -> pl.Expr:
    """The row index of the run's first row, where `starts` is true on each run's first row
    (and on each group's first row: runs never span groups)."""
    return pl.when(starts | first_in_group()).then(_index()).forward_fill()


def position_in(start: pl.Expr) -> pl.Expr:
    """1 for a run's first row, 2 for the next, ... (`start` from `run_start`)."""
    return _index() - start + 1
