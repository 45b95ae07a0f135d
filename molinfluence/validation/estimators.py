"""Estimators compared on the same samples against the same retraining."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from ..batch import Batch
from ..config import ConfigError, schema_default
from ..influence import InfluenceArgs, InfluenceDivergence, compute_ihvp, score_samples
from .stats import summarize_setting, topk_overlap_with_ci

DEFAULT_ESTIMATORS: list[dict[str, Any]] = schema_default("validation.estimators")
"""``validation.estimators`` by default: what the comparison table of docs/validation.md shows."""

def check_estimators(specs: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rules of ``validation.estimators`` the schema cannot say (it checks the list, the names and the keys):
    names are unique, and each entry's values are valid ``influence`` options (they override the influence section
    for that estimator)."""
    names: set[str] = set()
    out = []
    for i, spec in enumerate(specs):
        where = f"validation.estimators[{i}]"
        if spec["name"] in names:
            raise ConfigError(f"{where}: the name {spec['name']!r} is used twice")
        names.add(spec["name"])
        try:
            estimator_args({}, spec)
        except ValueError as exc:
            raise ConfigError(f"{where} ({spec['name']}): {exc}") from None
        out.append(dict(spec))
    return out


def estimator_args(influence: Mapping[str, Any], spec: Mapping[str, Any]) -> InfluenceArgs:
    """The influence options of one estimator: the influence section with the estimator's keys on top."""
    return InfluenceArgs.from_dict({**influence, **{k: v for k, v in spec.items() if k != "name"}})


_STAT_KEYS = ("method", "curvature", "params", "n_params", "damping", "lambda", "lambda_max_C", "lambda_min_C",
              "relative_residual", "converged", "hvp_full_equivalents", "topk_stability", "seconds")


def compare_estimators(
    model: nn.Module,
    train: Batch,
    target: Batch,
    samples: Batch,
    influence: Mapping[str, Any],
    estimators: Sequence[Mapping[str, Any]],
    ext_index: Sequence[int],
    progress: bool = False,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score the chosen ``samples`` with every estimator (its keys over the ``influence`` section) on the base model.

    Returns ``(scores, stats)``: one row per (estimator, sample) with ``estimator``, ``ext_index``, ``score``; and
    per estimator its IHVP diagnostics, or ``{"refused": message}`` when the estimator refused (e.g. negative
    curvature of the Hessian): a refusal is a result of the comparison and is reported, not hidden.
    """
    rows, stats = [], {}
    for spec in check_estimators(list(estimators)):
        args = estimator_args(influence, spec)
        try:
            result = compute_ihvp(model, train, target, args, progress=progress)
        except InfluenceDivergence as exc:
            stats[spec["name"]] = {"spec": dict(spec), "refused": str(exc)}
            continue
        scores = score_samples(model, result, samples, batch_size=args.scoring.batch_size)
        rows += [{"estimator": spec["name"], "ext_index": int(e), "score": float(v)} for e, v in zip(ext_index, scores)]
        stats[spec["name"]] = {"spec": dict(spec), **{k: result.stats.get(k) for k in _STAT_KEYS}}
    return pd.DataFrame(rows, columns=["estimator", "ext_index", "score"]), stats


def estimator_table(
    chosen: pd.DataFrame,
    n_train: int,
    full_runs: pd.DataFrame,
    scores: pd.DataFrame,
    stats: Mapping[str, Any],
    influence_stats: Mapping[str, Any],
    *,
    k: int = 5,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per estimator (the pipeline's own scores first, as ``pipeline``): agreement of its predicted effect
    (score / n) with the measured effect of the ``full`` setting on the same chosen samples, with bootstrap
    intervals, and what it cost. Refused estimators keep their row with the reason."""
    order = [int(e) for e in chosen["ext_index"]]
    entries = [("pipeline", chosen.set_index("ext_index")["score"], {k_: influence_stats.get(k_) for k_ in _STAT_KEYS})]
    for name, st in stats.items():
        part = scores[scores.estimator == name].set_index("ext_index")["score"]
        entries.append((name, part if len(part) else None, st))
    rows = []
    for name, score, st in entries:
        row: dict[str, Any] = {"estimator": name}
        for key in ("method", "curvature", "params", "n_params", "relative_residual", "hvp_full_equivalents", "seconds"):
            value = st.get(key)
            row[key] = json_cell(value)
        row["refused"] = st.get("refused")
        if score is not None:
            missing = [e for e in order if e not in score.index]
            if missing:
                raise ValueError(f"estimator {name!r} has no score for chosen sample ext_index {missing[0]}")
            predicted = pd.Series(score.loc[order].to_numpy(dtype=np.float64) / n_train, index=order)
            summary, table = summarize_setting(predicted, full_runs, n_boot, seed)
            overlap = topk_overlap_with_ci(table.predicted.to_numpy(), table.actual.to_numpy(), k, n_boot, seed)
            for metric in ("pearson", "spearman"):
                row[metric] = summary[metric]["estimate"]
                row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = summary[metric]["ci"] or (None, None)
            row["topk_overlap"], row["topk"] = overlap["estimate"], overlap["k"]
            row["topk_ci_low"], row["topk_ci_high"] = overlap["ci"]
            row["scale_ratio"] = summary["scale_ratio"]
        rows.append(row)
    columns = ["estimator", "method", "curvature", "params", "n_params", "pearson", "pearson_ci_low", "pearson_ci_high",
               "spearman", "spearman_ci_low", "spearman_ci_high", "topk_overlap", "topk", "topk_ci_low", "topk_ci_high",
               "scale_ratio", "relative_residual", "hvp_full_equivalents", "seconds", "refused"]
    return pd.DataFrame(rows).reindex(columns=columns)


def json_cell(value: Any) -> Any:
    """A table cell: lists (e.g. params as prefixes) joined, everything else as is."""
    return "+".join(map(str, value)) if isinstance(value, (list, tuple)) else value
