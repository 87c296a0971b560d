"""Several metrics of one asset moving together: a robust Mahalanobis distance.

An incident often shows as CPU, memory, disk and network of one asset each a little off
at the same time, none far enough to cross its own threshold. Each metric's deviation
from its own baseline (the robust z-score of the outlier detector, which already takes
the time of day into account) forms the asset's residual vector; its covariance over the
baseline days says how the asset's metrics usually move together (CPU and temperature,
say, always rise as one), and the Mahalanobis distance of a new vector from that
history says how unusual the combination is. The distance is compared with the
chi-square quantile of as many degrees of freedom as metrics, for the same tail as a
`joint_z`-sigma single event, and must hold for `joint_points` samples in a row. The
flag names the metrics that contributed most.

The covariance of a day is fitted on the baseline days before that day only, so a day's
flags depend on that day and its history alone. Residuals are clipped before fitting, so
a past incident does not teach the asset that incidents are normal.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from perf_analytics.anomalies.config import AnomalyConfig
from perf_analytics.anomalies.series import ASSET

_CLIP = 4.0  # residuals are clipped to this many spreads before the covariance is fitted
_SHRINK = 0.1  # share of the covariance replaced by its diagonal (a stable inverse)
_RIDGE = 0.05  # added to the diagonal: no metric is trusted to be quieter than this
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


def _fit(history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and inverse covariance of clipped residual vectors, shrunk toward the diagonal."""
    clipped = np.clip(history, -_CLIP, _CLIP)
    centre = np.median(clipped, axis=0)
    cov = np.cov(clipped - centre, rowvar=False).reshape(history.shape[1], history.shape[1])
    cov = (1.0 - _SHRINK) * cov + _SHRINK * np.diag(np.diag(cov)) + _RIDGE * np.eye(cov.shape[0])
    return centre, np.linalg.inv(cov)


def _labels(metrics: list[str], contrib: np.ndarray, resid: np.ndarray) -> list[str]:
    """For each row, the metrics that contributed most, with their z-scores."""
    out = []
    order = np.argsort(-contrib, axis=1)[:, :_TOP]
    for row, idx in enumerate(order):
        parts = [f"{metrics[i]} {resid[row, i]:+.1f}" for i in idx if contrib[row, i] > 0]
        out.append(", ".join(parts))
    return out


def _asset_flags(wide: pl.DataFrame, metrics: list[str], config: AnomalyConfig) -> pl.DataFrame | None:
    """Flagged rows of one asset's residual vectors (timestamp, d2, threshold, note, score)."""
    ts = wide.get_column("timestamp")
    seconds = ts.dt.epoch("s").to_numpy().astype(np.float64)
    raw = wide.select(metrics).to_numpy().astype(np.float64)
    known = ~np.isnan(raw).all(axis=1)  # a baseline has formed for at least one metric
    values = np.nan_to_num(raw, nan=0.0)  # a metric without a baseline yet: no evidence
    day_of = np.floor(seconds / 86400.0)
    window = config.baseline_days * 86400.0
    out = []
    for day in np.unique(day_of):
        today = day_of == day
        past = (seconds < day * 86400.0) & (seconds >= day * 86400.0 - window) & known
        if past.sum() < max(config.baseline_min_points, 2 * len(metrics)):
            continue
        if day * 86400.0 - seconds[0] < config.learn_hours * 3600.0:
            continue  # the learning period, as for the other baselines
        history = values[past]
        moving = history.std(axis=0) > _MOVING
        if moving.sum() < 2:
            continue  # one moving metric is the outlier detector's business
        cols = [m for m, keep in zip(metrics, moving, strict=True) if keep]
        centre, inv = _fit(history[:, moving])
        resid = values[today][:, moving] - centre
        solved = resid @ inv
        out.append(
            pl.DataFrame(
                {
                    "timestamp": ts.filter(pl.Series(today)),
                    "d2": np.einsum("ij,ij->i", resid, solved),
                    "threshold": chi2_quantile(len(cols), config.joint_z),
                    "n_far": (np.abs(resid) >= config.joint_metric_z).sum(axis=1),
                    "note": _labels(cols, resid * solved, resid),
                }
            )
        )
    if not out:
        return None
    held = pl.col("d2").rolling_min(config.joint_points)
    far = pl.col("n_far").rolling_min(config.joint_points)
    return (
        pl.concat(out)
        .with_columns(held.alias("held"), far.alias("far"))
        .filter((pl.col("held") >= pl.col("threshold")) & (pl.col("far") >= 2))
        .with_columns((pl.col("held") / pl.col("threshold")).sqrt().alias("score"))
    )


def detect_joint(scored: pl.DataFrame, config: AnomalyConfig) -> pl.DataFrame:
    """Flag rows (see `detectors.FLAG_COLUMNS`, plus `note`) of assets whose metrics moved together.

    `scored` has one row per point with its robust z-score `z` (the outlier detector's)
    and `interval_s`. Each flag's `value` is the distance, `ref` the threshold, `score`
    the ratio of the two (as distances), and `note` the metrics that moved most.
    """
    df = scored.select(*ASSET, "metric", "timestamp", "z", "interval_s")
    if df.is_empty():
        return pl.DataFrame()
    parts = []
    for (org, asset), one in df.group_by(ASSET, maintain_order=True):
        wide = one.pivot(on="metric", index="timestamp", values="z").sort("timestamp")
        metrics = sorted(c for c in wide.columns if c != "timestamp")
        if len(metrics) < 2:
            continue
        flags = _asset_flags(wide, metrics, config)
        if flags is None or flags.is_empty():
            continue
        interval = one.group_by("timestamp").agg(pl.col("interval_s").max())
        parts.append(
            flags.join(interval, on="timestamp", how="left").with_columns(
                pl.lit(org).alias("orgId"), pl.lit(asset).alias("assetId")
            )
        )
    return pl.concat(parts) if parts else pl.DataFrame()
