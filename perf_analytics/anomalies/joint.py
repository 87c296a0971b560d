"""Several metrics of one asset moving together: a robust Mahalanobis distance.

An incident often shows as CPU, memory, disk and network of one asset each a little off
at the same time, none far enough to cross its own threshold. Each metric's deviation
from its own baseline (the robust z-score of the outlier detector, which already takes
the time of day into account) forms the asset's residual vector. z-scores are in units of
their own spread by construction, so how the asset's metrics usually move together is
their correlation: it is merged from the baseline days' state (per asset and pair of
metrics, sums of products of each sample's residual from its own hour, in that hour's
spreads, clipped so a past incident does not teach the asset that incidents are normal),
shrunk toward the identity, with no direction trusted to be quieter than a floor. The
Mahalanobis distance of a new vector says how unusual the combination is (CPU and
temperature that always rise as one are less unusual together than apart). It is
compared with the chi-square quantile of as many degrees of freedom as metrics, for the
same tail as a `joint_z`-sigma single event, and must hold for `joint_points` samples in
a row. The flag names the metrics that contributed most.

The correlation comes from the days before the flagged day only, so a day's flags depend
on that day and its history alone.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from perf_analytics.anomalies.config import AnomalyConfig
from perf_analytics.anomalies.series import ASSET

_SHRINK = 0.1  # share of the correlation replaced by the identity (a stable inverse)
_FLOOR = 0.05  # no direction of the metric space is trusted to be quieter than this
_MOVING = 1e-6  # a metric whose residuals never varied in the history tells nothing
_TOP = 3  # metrics named in a flag


def chi2_quantile(dof: int, z: float) -> float:
    """The chi-square quantile of `dof` degrees of freedom with the upper tail of a z-sigma event.

    The Wilson-Hilferty approximation: close in the body, and in the far tail somewhat
    above the exact quantile at few degrees of freedom (a stricter threshold, never a
    looser one), which is all a threshold needs.
    """
    k = 2.0 / (9.0 * dof)
    return float(dof * (1.0 - k + z * math.sqrt(k)) ** 3)


def correlations(pairs: pl.DataFrame) -> dict[tuple[str, str], tuple[list[str], np.ndarray]]:
    """Per asset, its moving metrics and their correlation, merged from the state's pair rows."""
    if pairs.is_empty():
        return {}
    merged = (
        pairs.group_by([*ASSET, "metric", "metric_b"])
        .agg(pl.col(c).sum() for c in ("n", "sa", "sb", "sab", "saa", "sbb"))
        .with_columns(
            (pl.col("sa") / pl.col("n")).alias("_ma"),
            (pl.col("sb") / pl.col("n")).alias("_mb"),
        )
        .with_columns(
            (pl.col("sab") / pl.col("n") - pl.col("_ma") * pl.col("_mb")).alias("cov"),
            (pl.col("saa") / pl.col("n") - pl.col("_ma") ** 2).alias("var_a"),
            (pl.col("sbb") / pl.col("n") - pl.col("_mb") ** 2).alias("var_b"),
        )
        .sort([*ASSET, "metric", "metric_b"])
    )
    out: dict[tuple[str, str], tuple[list[str], np.ndarray]] = {}
    for (org, asset), one in merged.group_by(ASSET, maintain_order=True):
        diag = one.filter((pl.col("metric") == pl.col("metric_b")) & (pl.col("var_a") > _MOVING))
        metrics = sorted(diag.get_column("metric").to_list())
        if len(metrics) < 2:
            continue  # one moving metric is the outlier detector's business
        index = {m: i for i, m in enumerate(metrics)}
        corr = np.eye(len(metrics))
        for a, b, cov, va, vb in one.select("metric", "metric_b", "cov", "var_a", "var_b").iter_rows():
            if a != b and a in index and b in index and va > _MOVING and vb > _MOVING:
                corr[index[a], index[b]] = corr[index[b], index[a]] = float(np.clip(cov / math.sqrt(va * vb), -1.0, 1.0))
        out[(str(org), str(asset))] = (metrics, corr)
    return out


def _inverse(corr: np.ndarray) -> np.ndarray:
    """The inverse of a correlation shrunk toward the identity, its eigenvalues floored."""
    shrunk = (1.0 - _SHRINK) * corr + _SHRINK * np.eye(corr.shape[0])
    values, vectors = np.linalg.eigh(shrunk)
    values = np.maximum(values, _FLOOR)
    return np.asarray((vectors / values) @ vectors.T)


def _labels(metrics: list[str], contrib: np.ndarray, resid: np.ndarray) -> list[str]:
    """For each row, the metrics that contributed most, with their z-scores."""
    out = []
    order = np.argsort(-contrib, axis=1)[:, :_TOP]
    for row, idx in enumerate(order):
        parts = [f"{metrics[i]} {resid[row, i]:+.1f}" for i in idx if contrib[row, i] > 0]
        out.append(", ".join(parts))
    return out


def asset_blocks(long: pl.DataFrame, values: str) -> tuple[pl.DataFrame, list[str], np.ndarray, list[tuple[str, str, int, int]]]:
    """The points of many assets as one wide matrix (a column per metric, NaN where absent),
    with each asset's block of rows: one pivot for all of them, not one per asset."""
    wide = long.pivot(on="metric", index=[*ASSET, "timestamp"], values=values).sort([*ASSET, "timestamp"])
    metrics = sorted(c for c in wide.columns if c not in (*ASSET, "timestamp"))  # one order, whatever the batch
    matrix = wide.select(metrics).to_numpy().astype(np.float64)
    bounds = (
        wide.select(*ASSET).with_row_index("_row").group_by(ASSET, maintain_order=True)
        .agg(pl.col("_row").min().alias("lo"), (pl.col("_row").max() + 1).alias("hi"))
    )
    blocks = [(str(o), str(a), int(lo), int(hi)) for o, a, lo, hi in bounds.iter_rows()]
    return wide.select(*ASSET, "timestamp"), metrics, matrix, blocks


def _held_min(values: np.ndarray, n: int) -> np.ndarray:
    """The least of each value and the n - 1 before it (NaN for the first n - 1)."""
    out = values.astype(np.float64).copy()
    for k in range(1, n):
        out[k:] = np.minimum(out[k:], values[:-k])
    out[: n - 1] = np.nan
    return out


def _asset_flags(values: np.ndarray, metrics: list[str], corr: np.ndarray, config: AnomalyConfig) -> dict[str, np.ndarray]:
    """Flagged rows of one asset's residual vectors: row, held distance, note."""
    values = np.nan_to_num(values, nan=0.0)  # no baseline: no evidence
    solved = values @ _inverse(corr)
    d2 = np.einsum("ij,ij->i", values, solved)
    threshold = chi2_quantile(len(metrics), config.joint_z)
    held = _held_min(d2, config.joint_points)
    far = _held_min((np.abs(values) >= config.joint_metric_z).sum(axis=1), config.joint_points)
    rows = np.flatnonzero((held >= threshold) & (far >= 2))
    return {
        "row": rows,
        "held": held[rows],
        "threshold": np.full(rows.size, threshold),
        "note": np.array(_labels(metrics, (values * solved)[rows], values[rows]), dtype=object),
    }


def detect_joint(scored: pl.DataFrame, pairs: pl.DataFrame, config: AnomalyConfig) -> pl.DataFrame:
    """Flag rows (see `detectors.FLAG_COLUMNS`, plus `note`) of assets whose metrics moved together.

    `scored` has one row per point of the day with its robust z-score `z` (the outlier
    detector's) and `interval_s`; `pairs` the pair rows of the baseline days' state. Each
    flag's `value` is the distance, `ref` the threshold, `score` the ratio of the two (as
    distances), and `note` the metrics that moved most.
    """
    fitted = correlations(pairs)
    if scored.is_empty() or not fitted:
        return pl.DataFrame()
    keys = pl.DataFrame({"orgId": [o for o, _ in fitted], "assetId": [a for _, a in fitted]})
    df = scored.select(*ASSET, "metric", "timestamp", "z", "interval_s").join(keys, on=ASSET, how="semi")
    if df.is_empty():
        return pl.DataFrame()
    index, columns, matrix, blocks = asset_blocks(df, "z")
    position = {m: i for i, m in enumerate(columns)}
    found: dict[str, list[np.ndarray]] = {"row": [], "held": [], "threshold": [], "note": []}
    for org, asset, lo, hi in blocks:
        metrics, corr = fitted[(org, asset)]
        block = matrix[lo:hi]
        keep = [i for i, m in enumerate(metrics) if m in position and not np.isnan(block[:, position[m]]).all()]
        if len(keep) < 2:
            continue
        names = [metrics[i] for i in keep]
        got = _asset_flags(block[:, [position[m] for m in names]], names, corr[np.ix_(keep, keep)], config)
        got["row"] = got["row"] + lo
        for name, values in got.items():
            found[name].append(values)
    if not any(len(r) for r in found["row"]):
        return pl.DataFrame()
    rows = np.concatenate(found["row"])
    flags = index[rows].with_columns(
        pl.Series("held", np.concatenate(found["held"])),
        pl.Series("threshold", np.concatenate(found["threshold"])),
        pl.Series("note", np.concatenate(found["note"]).tolist(), dtype=pl.String),
    ).with_columns((pl.col("held") / pl.col("threshold")).sqrt().alias("score"))
    interval = df.group_by([*ASSET, "timestamp"]).agg(pl.col("interval_s").max())
    return flags.join(interval, on=[*ASSET, "timestamp"], how="left", maintain_order="left")
