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


def _asset_flags(wide: pl.DataFrame, metrics: list[str], corr: np.ndarray, config: AnomalyConfig) -> pl.DataFrame:
    """Flagged rows of one asset's residual vectors (timestamp, d2, threshold, note, score)."""
    values = np.nan_to_num(wide.select(metrics).to_numpy().astype(np.float64), nan=0.0)  # no baseline: no evidence
    solved = values @ _inverse(corr)
    found = pl.DataFrame(
        {
            "timestamp": wide.get_column("timestamp"),
            "d2": np.einsum("ij,ij->i", values, solved),
            "threshold": chi2_quantile(len(metrics), config.joint_z),
            "n_far": (np.abs(values) >= config.joint_metric_z).sum(axis=1),
        }
    )
    held = pl.col("d2").rolling_min(config.joint_points)
    far = pl.col("n_far").rolling_min(config.joint_points)
    flagged = found.with_columns(held.alias("held"), far.alias("far"), pl.Series("_row", np.arange(len(found)))).filter(
        (pl.col("held") >= pl.col("threshold")) & (pl.col("far") >= 2)
    )
    rows = flagged.get_column("_row").to_numpy()
    return flagged.drop("_row").with_columns(
        pl.Series("note", _labels(metrics, (values * solved)[rows], values[rows]), dtype=pl.String),
        (pl.col("held") / pl.col("threshold")).sqrt().alias("score"),
    )


def detect_joint(scored: pl.DataFrame, pairs: pl.DataFrame, config: AnomalyConfig) -> pl.DataFrame:
    """Flag rows (see `detectors.FLAG_COLUMNS`, plus `note`) of assets whose metrics moved together.

    `scored` has one row per point of the day with its robust z-score `z` (the outlier
    detector's) and `interval_s`; `pairs` the pair rows of the baseline days' state. Each
    flag's `value` is the distance, `ref` the threshold, `score` the ratio of the two (as
    distances), and `note` the metrics that moved most.
    """
    df = scored.select(*ASSET, "metric", "timestamp", "z", "interval_s")
    fitted = correlations(pairs)
    if df.is_empty() or not fitted:
        return pl.DataFrame()
    keys = pl.DataFrame({"orgId": [o for o, _ in fitted], "assetId": [a for _, a in fitted]})
    df = df.join(keys, on=ASSET, how="semi")
    parts = []
    for (org, asset), one in df.group_by(ASSET, maintain_order=True):
        metrics, corr = fitted[(str(org), str(asset))]
        wide = one.pivot(on="metric", index="timestamp", values="z").sort("timestamp")
        keep = [i for i, m in enumerate(metrics) if m in wide.columns]
        if len(keep) < 2:
            continue
        names = [metrics[i] for i in keep]
        flags = _asset_flags(wide, names, corr[np.ix_(keep, keep)], config)
        if flags.is_empty():
            continue
        interval = one.group_by("timestamp").agg(pl.col("interval_s").max())
        parts.append(
            flags.join(interval, on="timestamp", how="left").with_columns(
                pl.lit(org).alias("orgId"), pl.lit(asset).alias("assetId")
            )
        )
    return pl.concat(parts) if parts else pl.DataFrame()
