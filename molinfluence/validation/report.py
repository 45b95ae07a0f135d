"""The stage's JSON summary and per-sample table: both settings, the same samples."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .args import Recipe
from .stats import summarize_setting

SETTINGS = {
    "full": (
        "every parameter continued from the base model with the validation recipe, with and without z (weight 1/n) "
        "under the same seed; predicted from the pipeline's scores (influence.params as configured)"
    ),
    "convex": (
        "encoder frozen, head only, damped objective L_train + (lambda/2)|theta - theta_base|^2 minimised to "
        "convergence (L-BFGS, float64) with and without z (weight 1/n); predicted from head-only scores at its optimum"
    ),
}


def build_report(
    chosen: pd.DataFrame,
    n_train: int,
    full_runs: pd.DataFrame,
    convex_runs: pd.DataFrame,
    convex_scores: pd.DataFrame,
    convex_stats: Mapping[str, Any],
    *,
    recipe: Recipe,
    influence_stats: Mapping[str, Any],
    target: str = "validation",
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """The stage's JSON summary and its per-sample table (both settings; column ``setting``).

    ``chosen`` is the table of :func:`choose_samples` (its ``score`` gives the ``full`` prediction), ``full_runs`` and
    ``convex_runs`` are run tables as :func:`full_effects` / :func:`convex_reference` return them (baselines
    included), ``convex_scores`` the head-only scores, ``influence_stats`` the pipeline's IHVP statistics (what the
    ``full`` scores were computed with). Predictions are ``score / n_train`` (module docstring).
    """
    if n_train < 1:
        raise ValueError(f"n_train must be >= 1, got {n_train}")
    order = [int(e) for e in chosen["ext_index"]]
    full_pred = pd.Series(chosen["score"].to_numpy(dtype=np.float64) / n_train, index=order)
    convex_by_ext = convex_scores.set_index("ext_index")["score"]
    missing = [e for e in order if e not in convex_by_ext.index]
    if missing:
        raise ValueError(f"the convex scores lack chosen sample ext_index {missing[0]}")
    convex_pred = pd.Series(convex_by_ext.loc[order].to_numpy(dtype=np.float64) / n_train, index=order)

    settings: dict[str, Any] = {}
    tables = []
    info = chosen[["ext_index", "smiles", "label", "rank", "quantile", "score"]]
    for name, predicted, runs in (("full", full_pred, full_runs), ("convex", convex_pred, convex_runs)):
        summary, table = summarize_setting(predicted, runs, n_boot, seed)
        settings[name] = {"description": SETTINGS[name], **summary}
        table = info.merge(table, on="ext_index", how="right")
        if name == "convex":
            table["score"] = convex_pred.to_numpy() * n_train
        tables.append(table.assign(setting=name))
    keep = ("method", "params", "damping", "lambda", "n_train", "converged", "relative_residual")
    settings["full"]["influence"] = {k: influence_stats[k] for k in keep if k in influence_stats}
    settings["full"]["recipe"] = recipe.to_dict()
    settings["convex"]["influence"] = dict(convex_stats)
    report = {
        "question": "does the influence score predict the measured change of the target loss when a sample is added?",
        "predicted": "score / n_train: the first-order change of the target loss for z added at weight 1/n_train",
        "actual": "mean over seeds of L_target(with z) - L_target(without z), same recipe, seed and start",
        "sign": "negative = adding z lowers the target loss (helps)",
        "target": target,
        "n_train": int(n_train),
        "epsilon": 1.0 / n_train,
        "m": len(order),
        "ext_index": order,
        "settings": settings,
    }
    per_sample = pd.concat(tables, ignore_index=True)
    first = ["setting", "ext_index", "smiles", "label", "rank", "quantile", "score", "predicted", "actual", "actual_sd"]
    per_sample = per_sample[first + [c for c in per_sample.columns if c not in first]]
    return report, per_sample
