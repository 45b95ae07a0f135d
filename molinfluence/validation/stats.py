"""Agreement of predicted and measured effects, with bootstrap intervals, and the noise of the measurement."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sstats

from ..metrics import correlation_defined, topk_overlap

CI_LEVEL = 0.95

PAIR_CHECK = -2
"""``ext_index`` of a baseline rerun inside a sample job (CUDA only): it measures the noise of a run pair."""


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of two (B, m) arrays; NaN where a row is constant."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    denom = np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=1) / denom
    r[~(denom > 0)] = np.nan
    return np.clip(r, -1.0, 1.0)


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def correlation_with_ci(
    predicted: Sequence[float], actual: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = CI_LEVEL
) -> dict[str, Any]:
    """Pearson and Spearman correlation of ``predicted`` and ``actual`` with seeded percentile bootstrap intervals.

    The bootstrap resamples the samples (pairs) with replacement ``n_boot`` times; resamples in which either variable
    is constant have no correlation and are left out (their count is reported). A correlation that is undefined
    (fewer than 3 points, a constant variable) is ``None``, never NaN.
    """
    x = np.asarray(predicted, dtype=np.float64)
    y = np.asarray(actual, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"predicted and actual must be 1-D of equal length, got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("predicted and actual must be finite")
    m = len(x)
    defined = correlation_defined(x, y)
    point = {
        "pearson": float(sstats.pearsonr(x, y).statistic) if defined else math.nan,
        "spearman": float(sstats.spearmanr(x, y).statistic) if defined else math.nan,
    }
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, m, size=(n_boot, m))
    xb, yb = x[idx], y[idx]
    boot = {
        "pearson": _pearson_rows(xb, yb),
        "spearman": _pearson_rows(sstats.rankdata(xb, axis=1), sstats.rankdata(yb, axis=1)),
    }
    alpha = (1.0 - level) / 2.0
    out: dict[str, Any] = {}
    for name, values in boot.items():
        ok = values[np.isfinite(values)]
        ci = [float(np.quantile(ok, alpha)), float(np.quantile(ok, 1.0 - alpha))] if defined and len(ok) else None
        out[name] = {"estimate": _finite_or_none(point[name]), "ci": ci, "bootstrap_defined": int(len(ok))}
    out["bootstrap"] = {"resamples": int(n_boot), "seed": int(seed), "level": level, "method": "percentile, pairs"}
    return out


def summarize_setting(
    predicted: pd.Series, runs: pd.DataFrame, n_boot: int = 2000, seed: int = 0
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Agreement of the predicted and the measured effects of one setting, and the noise of the measurement.

    ``predicted``: Δ̂ per ``ext_index`` (index). ``runs``: columns ``ext_index``, ``seed``, ``target_loss``, with one
    baseline row per seed (``ext_index`` -1) and one row per (sample, seed). Returns the JSON-able summary and a
    per-sample table (``ext_index``, ``predicted``, ``actual`` = mean Δ over seeds, ``actual_sd``, one ``delta_seed{s}``
    column per seed). Raises ValueError when a sample lacks a seed's run or a seed lacks its baseline.
    """
    base = runs[runs.ext_index == -1].set_index("seed")["target_loss"]
    if base.index.has_duplicates:
        raise ValueError("more than one baseline run for a seed")
    checks = runs[runs.ext_index == PAIR_CHECK]
    pair_noise = float((checks.target_loss - checks.seed.map(base)).abs().max()) if len(checks) else None
    runs = runs[runs.ext_index != PAIR_CHECK]
    with_z = runs[runs.ext_index != -1]
    seeds = sorted(int(s) for s in with_z.seed.unique())
    missing_base = [s for s in seeds if s not in base.index]
    if missing_base:
        raise ValueError(f"no baseline run for seed(s) {missing_base}")
    deltas = with_z.assign(delta=with_z.target_loss - with_z.seed.map(base)).pivot(index="ext_index", columns="seed", values="delta")
    expected = list(predicted.index)
    missing = [e for e in expected if e not in deltas.index] or [e for e in expected if deltas.loc[e].isna().any()]
    if missing:
        raise ValueError(f"sample ext_index {missing[0]} has no retraining run for every seed {seeds}")
    deltas = deltas.loc[expected, seeds]
    d = deltas.to_numpy(dtype=np.float64)
    r = len(seeds)
    actual = d.mean(axis=1)
    sd = d.std(axis=1, ddof=1) if r > 1 else np.zeros(len(d))
    table = pd.DataFrame({"ext_index": expected, "predicted": predicted.to_numpy(dtype=np.float64), "actual": actual,
                          "actual_sd": sd})
    for j, s in enumerate(seeds):
        table[f"delta_seed{s}"] = d[:, j]

    x = table.predicted.to_numpy()
    agreement = correlation_with_ci(x, actual, n_boot, seed)
    denom = float(np.dot(x, x))
    pairs = [(a, b) for a in range(r) for b in range(a + 1, r)]
    pair_r = _pearson_rows(np.stack([d[:, a] for a, _ in pairs]), np.stack([d[:, b] for _, b in pairs])) if pairs else np.array([])
    within = float(np.mean(sd**2)) if r > 1 else math.nan
    standard_error = math.sqrt(within / r) if r > 1 else math.nan
    between = float(np.std(actual, ddof=1))
    noise = {
        "seeds": seeds,
        "delta_sd_median": float(np.median(sd)) if r > 1 else None,
        "delta_sd_max": float(np.max(sd)) if r > 1 else None,
        "delta_standard_error": _finite_or_none(standard_error),
        "actual_sd_across_samples": between,
        "signal_to_noise": _finite_or_none(between / standard_error) if r > 1 and standard_error > 0 else None,
        "seed_agreement_pearson": _finite_or_none(float(np.nanmean(pair_r))) if len(pair_r) and np.isfinite(pair_r).any() else None,
        "baseline_loss_mean": float(base.loc[seeds].mean()),
        "baseline_loss_sd": float(base.loc[seeds].std(ddof=1)) if r > 1 else None,
        # |baseline rerun inside a sample job − baseline job|, CUDA only (None: CPU runs are bit-reproducible)
        "pair_noise_max": pair_noise,
    }
    summary = {
        "m": len(expected),
        "pearson": agreement["pearson"],
        "spearman": agreement["spearman"],
        "bootstrap": agreement["bootstrap"],
        "scale_ratio": _finite_or_none(float(np.dot(x, actual)) / denom) if denom > 0 else None,
        "sign_agreement": float(np.mean(np.sign(x) == np.sign(actual))),
        "predicted_range": [float(x.min()), float(x.max())],
        "actual_range": [float(actual.min()), float(actual.max())],
        "noise": noise,
    }
    return summary, table


def topk_overlap_with_ci(
    predicted: Sequence[float], actual: Sequence[float], k: int, n_boot: int = 2000, seed: int = 0, level: float = CI_LEVEL
) -> dict[str, Any]:
    """Fraction of the ``k`` most negative predicted effects that are among the ``k`` most negative measured ones
    (the samples a most-helpful selection would pick), with a seeded percentile bootstrap over the samples."""
    x = np.asarray(predicted, dtype=np.float64)
    y = np.asarray(actual, dtype=np.float64)
    m = len(x)
    k = max(1, min(int(k), m - 1)) if m > 1 else 1
    point = topk_overlap(x, y, k)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, m, size=(n_boot, m))
    boot = np.array([topk_overlap(x[i], y[i], k) for i in idx])
    alpha = (1.0 - level) / 2.0
    return {"estimate": point, "k": k, "ci": [float(np.quantile(boot, alpha)), float(np.quantile(boot, 1.0 - alpha))]}
