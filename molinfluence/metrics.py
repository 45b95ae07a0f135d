"""Regression metrics, and the multi-seed summary that says whether a selection beats its matched controls.

The original report compared single runs (one baseline, one run with selected samples). Seed-to-seed
spread of fine-tuning is of the same size as the effect claimed, so every comparison here is over
repeated runs matched by seed:

- control (a) "random": the ``random`` strategy at the same ``init`` and ``k`` — does *influence*
  selection beat picking the same number of external samples blindly?
- control (b) "k0": the same ``init`` with ``k = 0`` (no external samples) — does adding these samples
  help at all?

For each control the runs are paired by ``seed`` (same seed = same data split/initialisation/batch
order, so the seed effect cancels) and tested with a two-sided paired t-test
(``scipy.stats.ttest_rel``) and, with at least 6 pairs, a Wilcoxon signed-rank test. Differences are
``row − control``: negative means lower error than the control. p values are not corrected for
multiple comparisons; :func:`markdown_table` states how many tests the table holds.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy import stats

from .grid import Condition

METRICS: tuple[str, ...] = ("mse", "rmse", "mae", "r2")
TESTED_METRICS: tuple[str, ...] = ("mse", "rmse")
CONTROLS: tuple[str, ...] = ("random", "k0")
PER_RUN_COLUMNS: tuple[str, ...] = ("init", "strategy", "k", "seed", *METRICS, "n_added")
BASE_INIT = "base"
BASE_STRATEGY = "none"
#: Columns of a run's metrics.json kept in the per-run table.
RUN_COLUMNS: tuple[str, ...] = ("mse", "rmse", "mae", "r2", "n_added", "best_epoch", "epochs_run")
MIN_PAIRS_T = 2
MIN_PAIRS_WILCOXON = 6
PAIRED_T = "paired t-test (scipy.stats.ttest_rel, two-sided)"
_K0_PREFERENCE = ("none", "random")
_COMPARISON_KEYS: tuple[str, ...] = (
    "n_pairs",
    "test",
    *(f"{stat}_{m}" for m in TESTED_METRICS for stat in ("delta", "t", "p", "wilcoxon", "p_wilcoxon")),
    "note",
)


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Return ``{"mse", "rmse", "mae", "r2"}`` for predictions ``y_pred`` of targets ``y_true``.

    ``r2`` is ``1 - SS_res / SS_tot`` (as sklearn's ``r2_score``); it is NaN when ``y_true`` is constant,
    where R² is undefined. Raises ValueError on empty, mismatched or non-finite input.
    """
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.size == 0:
        raise ValueError("regression_metrics: y_true is empty")
    if t.shape != p.shape:
        raise ValueError(f"regression_metrics: y_true has {t.size} values but y_pred has {p.size}")
    for name, arr in (("y_true", t), ("y_pred", p)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise ValueError(f"regression_metrics: {name} has {bad.size} NaN/inf values (first at position {bad[0]})")
    resid = t - p
    mse = float(np.mean(resid**2))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else math.nan
    return {"mse": mse, "rmse": math.sqrt(mse), "mae": float(np.mean(np.abs(resid))), "r2": r2}


def correlation_defined(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether a correlation of the paired values ``x``, ``y`` is defined: at least 3 pairs and neither variable
    constant. Where it is not, callers report None (JSON) or leave the pair out, never NaN or a number."""
    x, y = np.asarray(x), np.asarray(y)
    return len(x) >= 3 and float(np.ptp(x)) > 0 and float(np.ptp(y)) > 0


def bottom_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest (most negative: most helpful) ``values``, ties in index order."""
    return np.argsort(np.asarray(values), kind="stable")[:k]


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Fraction of the ``k`` most negative entries of ``a`` that are among the ``k`` most negative of ``b``: the
    agreement of two rankings on the samples a most-helpful selection would pick."""
    return len(set(bottom_k(a, k).tolist()) & set(bottom_k(b, k).tolist())) / k


def per_run_table(base: Mapping[str, Any], runs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """The per-run table: the base model, then one row per fine-tuning run, sorted by (init, strategy, k, seed).

    ``base`` is the base model's metrics.json; ``runs`` maps each run's metrics.json path to its content. A run's
    condition is what its metrics.json records (:meth:`Condition.from_record`); a file whose record disagrees with the
    run directory it lies in is an error. ``k`` is the number of samples selected (for the whole-pool strategies, the
    pool size the run recorded as ``n_selected``).
    """
    rows = [{"init": BASE_INIT, "strategy": BASE_STRATEGY, "k": 0, "seed": base["seed"],
             **{c: base.get(c, 0) for c in RUN_COLUMNS}}]
    for path, record in runs.items():
        run = Condition.from_record(record, source=str(path))
        try:
            where = Condition.parse(path)
        except ValueError:
            where = run  # a file outside the results layout: its record is all there is
        if where != run:
            raise ValueError(f"{path}: records the run {run} but lies in the directory of {where}")
        missing = [c for c in (*RUN_COLUMNS, "n_selected") if c not in record]
        if missing:
            raise ValueError(f"{path}: missing {missing}; rerun its fine-tune job")
        k = int(record["n_selected"]) if run.k is None else run.k
        rows.append({"init": run.init, "strategy": run.strategy, "k": k, "seed": run.seed,
                     **{c: record[c] for c in RUN_COLUMNS}})
    return pd.DataFrame(rows).sort_values(["init", "strategy", "k", "seed"], kind="stable", ignore_index=True)


def _check_per_run(per_run: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(per_run, pd.DataFrame):
        raise ValueError(f"per_run must be a pandas DataFrame, got {type(per_run).__name__}")
    missing = [c for c in PER_RUN_COLUMNS if c not in per_run.columns]
    if missing:
        raise ValueError(f"per_run is missing column(s) {missing}; has {list(per_run.columns)}")
    if per_run.empty:
        raise ValueError("per_run has no rows")
    df = per_run.loc[:, list(PER_RUN_COLUMNS)].reset_index(drop=True).copy()
    df["init"] = df["init"].astype(str)
    df["strategy"] = df["strategy"].astype(str)
    for col in ("k", "seed", "n_added"):
        values = df[col].to_list()
        for row, v in enumerate(values):
            ok = isinstance(v, numbers.Integral) or (isinstance(v, float) and v.is_integer())
            if isinstance(v, bool) or not ok or (col != "seed" and v < 0):
                kind = "an integer" if col == "seed" else "a non-negative integer"
                raise ValueError(f"per_run row {row}: column {col!r} must be {kind}, got {v!r}")
        df[col] = np.asarray(values, dtype=np.int64)
    for col in METRICS:
        vals = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(vals))
        if bad.size:
            raise ValueError(f"per_run row {bad[0]}: column {col!r} is not a finite number ({df[col].iloc[bad[0]]!r})")
        df[col] = vals
    base = df[df["init"] == BASE_INIT]
    wrong = base[(base["strategy"] != BASE_STRATEGY) | (base["k"] != 0)]
    if len(wrong):
        row = wrong.index[0]
        raise ValueError(
            f"per_run row {row}: init {BASE_INIT!r} is the baseline and must have strategy "
            f"{BASE_STRATEGY!r} and k 0, got strategy {wrong.loc[row, 'strategy']!r}, k {wrong.loc[row, 'k']}"
        )
    dup = df.duplicated(["init", "strategy", "k", "seed"], keep=False)
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        key = df.loc[row, ["init", "strategy", "k", "seed"]].to_dict()
        raise ValueError(f"per_run row {row}: more than one run for {key}; each (init, strategy, k, seed) must be unique")
    return df


def _k0_control(groups: dict[tuple[str, str, int], pd.DataFrame], init: str) -> str | None:
    """The strategy whose k=0 runs are the "no external data" control for ``init``, or None if there are none.

    Every k=0 run adds nothing, so a grid that ran several strategies at k=0 ran the same experiment
    several times; one of them is used for every row of the init so that all rows share one control:
    'none' if present, else 'random', else the alphabetically first.
    """
    candidates = sorted(s for (i, s, k) in groups if i == init and k == 0)
    for preferred in _K0_PREFERENCE:
        if preferred in candidates:
            return preferred
    return candidates[0] if candidates else None


def _paired(row_runs: pd.DataFrame, ctrl_runs: pd.DataFrame) -> dict[str, object]:
    """Pair runs by seed and return the mean paired differences and the paired tests."""
    merged = row_runs.merge(ctrl_runs, on="seed", suffixes=("", "_ctrl"), validate="one_to_one")
    n = len(merged)
    out: dict[str, object] = {"n_pairs": n}
    notes: list[str] = []
    if n < len(row_runs) or n < len(ctrl_runs):
        notes.append(f"paired on {n} seeds (row has {len(row_runs)} runs, control {len(ctrl_runs)})")
    if n < MIN_PAIRS_T:
        notes.append(f"fewer than {MIN_PAIRS_T} seed-matched pairs: no test")
    if n < MIN_PAIRS_WILCOXON and n >= MIN_PAIRS_T:
        notes.append(f"Wilcoxon n/a (needs >= {MIN_PAIRS_WILCOXON} pairs)")
    out["test"] = PAIRED_T if n >= MIN_PAIRS_T else ""
    for m in TESTED_METRICS:
        diff = merged[m].to_numpy() - merged[f"{m}_ctrl"].to_numpy()
        out[f"delta_{m}"] = float(diff.mean()) if n else math.nan
        t = p = w = pw = math.nan
        if n >= MIN_PAIRS_T:
            if np.all(diff == diff[0]):
                notes.append(f"{m}: all paired differences equal {diff[0]:.3g}; t-test undefined")
            else:
                res = stats.ttest_rel(merged[m].to_numpy(), merged[f"{m}_ctrl"].to_numpy())
                t, p = float(res.statistic), float(res.pvalue)
        if n >= MIN_PAIRS_WILCOXON:
            if np.all(diff == 0):
                notes.append(f"{m}: all paired differences are 0; Wilcoxon undefined")
            else:
                res = stats.wilcoxon(diff)
                w, pw = float(res.statistic), float(res.pvalue)
        out[f"t_{m}"], out[f"p_{m}"] = t, p
        out[f"wilcoxon_{m}"], out[f"p_wilcoxon_{m}"] = w, pw
    out["note"] = "; ".join(notes)
    return out


def _no_comparison(note: str) -> dict[str, object]:
    """An empty comparison (no control, or the row is its own control): NaN numbers, ``note`` says why."""
    out: dict[str, object] = {key: math.nan for key in _COMPARISON_KEYS}
    out.update(n_pairs=0, test="", note=note)
    return out


def _columns(result: dict[str, object], control: str, suffix: str) -> dict[str, object]:
    """Flatten one control comparison into summary columns ``<key>_vs_<suffix>``."""
    return {f"control_vs_{suffix}": control, **{f"{key}_vs_{suffix}": result[key] for key in _COMPARISON_KEYS}}


def summarize_runs(per_run: pd.DataFrame) -> pd.DataFrame:
    """Summarise repeated runs: one row per (init, strategy, k), baseline first, with paired control tests.

    ``per_run`` has one row per run with columns ``init, strategy, k, seed, mse, rmse, mae, r2, n_added``
    (``n_added`` = external samples actually added); baseline runs have ``init="base"``,
    ``strategy="none"``, ``k=0``. Output columns: ``init, strategy, k, n_runs``, ``mean_<m>`` and
    ``sd_<m>`` (ddof=1) for each metric, ``n_added`` (mean), ``n_added_min``, ``n_added_max``, and for each
    control ``c`` in ("random", "k0"): ``control_vs_c`` (e.g. "random k=70"), ``n_pairs_vs_c``,
    ``test_vs_c``, ``delta_mse_vs_c``/``delta_rmse_vs_c`` (mean over seed-matched pairs of row − control),
    ``t_*``/``p_*`` (paired t), ``wilcoxon_*``/``p_wilcoxon_*`` (signed-rank, >= 6 pairs) and ``note_vs_c``.

    A row that is its own control (the ``random`` rows for control (a), every ``k = 0`` row, the
    baseline) has an empty comparison: empty ``control_vs_c`` and note, NaN numbers. A missing control
    or fewer than 2 pairs gives NaN tests and a note saying why. When several strategies ran at k = 0
    (all identical "nothing added" experiments) one serves as the k0 control for the whole init:
    ``none`` if present, else ``random``, else the alphabetically first.

    Rows are ordered: baseline, then each init in order of first appearance, by k, then strategy in order
    of first appearance — so strategies at the same k sit next to each other.
    """
    df = _check_per_run(per_run)
    init_order = {v: i for i, v in enumerate(dict.fromkeys(df["init"]))}
    strat_order = {v: i for i, v in enumerate(dict.fromkeys(df["strategy"]))}
    groups = {key: g for key, g in df.groupby(["init", "strategy", "k"], sort=False)}
    keys = sorted(groups, key=lambda key: (key[0] != BASE_INIT, init_order[key[0]], key[2], strat_order[key[1]]))

    rows = []
    for init, strategy, k in keys:
        g = groups[(init, strategy, k)]
        row: dict[str, object] = {"init": init, "strategy": strategy, "k": k, "n_runs": len(g)}
        for m in METRICS:
            row[f"mean_{m}"] = float(g[m].mean())
            row[f"sd_{m}"] = float(g[m].std(ddof=1)) if len(g) > 1 else math.nan
        row["n_added"] = float(g["n_added"].mean())
        row["n_added_min"] = int(g["n_added"].min())
        row["n_added_max"] = int(g["n_added"].max())
        runs = g[["seed", *TESTED_METRICS]]

        # (a) random at the same init and k.
        if strategy == "random" or k == 0:
            row.update(_columns(_no_comparison(""), "", "random"))
        elif (init, "random", k) in groups:
            ctrl = groups[(init, "random", k)][["seed", *TESTED_METRICS]]
            row.update(_columns(_paired(runs, ctrl), f"random k={k}", "random"))
        else:
            row.update(_columns(_no_comparison(f"no 'random' run at init {init!r}, k={k}"), "", "random"))

        # (b) k = 0 at the same init.
        if k == 0:
            row.update(_columns(_no_comparison(""), "", "k0"))
        else:
            found = _k0_control(groups, init)
            if found is None:
                row.update(_columns(_no_comparison(f"no k=0 run for init {init!r}"), "", "k0"))
            else:
                ctrl = groups[(init, found, 0)][["seed", *TESTED_METRICS]]
                row.update(_columns(_paired(runs, ctrl), f"{found} k=0", "k0"))
        rows.append(row)
    return pd.DataFrame(rows)


def _text(value: object) -> str:
    """A summary text cell as a string ('' for missing, e.g. after a CSV round trip)."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _mean_sd(mean: float, sd: float) -> str:
    return f"{mean:.4f} ± {sd:.4f}" if math.isfinite(sd) else f"{mean:.4f} ± n/a"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.2g}"


def _model(row: pd.Series) -> str:
    if row["init"] == BASE_INIT:
        return "base (no external data)"
    return f"{row['init']} · {row['strategy']} · k={int(row['k'])}"


def markdown_table(summary: pd.DataFrame) -> str:
    """Render :func:`summarize_runs` output as a Markdown table with a legend and a how-to-read paragraph.

    Columns: Model | n | added | MSE ↓ | RMSE ↓ | MAE ↓ | R² ↑ (mean ± sd over seeds) | ΔMSE vs random | p |
    ΔMSE vs k=0 | p. "—" marks a row that is its own control, "n/a" a comparison that could not be made
    (explained in the notes under the table).
    """
    needed = ["init", "strategy", "k", "n_runs", "n_added_min", "n_added_max"]
    needed += [f"{s}_{m}" for m in METRICS for s in ("mean", "sd")]
    needed += [f"{c}_vs_{s}" for s in CONTROLS for c in ("control", "delta_mse", "p_mse", "n_pairs", "note")]
    missing = [c for c in needed if c not in summary.columns]
    if missing:
        raise ValueError(f"summary is missing column(s) {missing}; pass the output of summarize_runs")
    if summary.empty:
        raise ValueError("summary has no rows")

    lines = [
        "| Model | n | added | MSE ↓ | RMSE ↓ | MAE ↓ | R² ↑ | ΔMSE vs random | p | ΔMSE vs k=0 | p |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes: list[str] = []
    n_tests = 0
    controls_k0: set[str] = set()
    for _, row in summary.iterrows():
        lo, hi = int(row["n_added_min"]), int(row["n_added_max"])
        cells = [_model(row), str(int(row["n_runs"])), str(lo) if lo == hi else f"{lo}–{hi}"]
        cells += [_mean_sd(float(row[f"mean_{m}"]), float(row[f"sd_{m}"])) for m in METRICS]
        for s in CONTROLS:
            control, note = _text(row[f"control_vs_{s}"]), _text(row[f"note_vs_{s}"])
            if not control and not note:
                cells += ["—", "—"]
                continue
            delta, p = float(row[f"delta_mse_vs_{s}"]), float(row[f"p_mse_vs_{s}"])
            cells += [f"{delta:+.4f}" if math.isfinite(delta) else "n/a", _p(p)]
            n_tests += math.isfinite(p)
            if s == "k0" and control:
                controls_k0.add(control)
            if note:
                notes.append(f"- {_model(row)} (vs {'random' if s == 'random' else 'k=0'}): {note}")
        lines.append("| " + " | ".join(cells) + " |")

    k0_used = ", ".join(sorted(controls_k0)) or "none"
    legend = [
        "",
        "Legend:",
        "- MSE/RMSE/MAE/R²: mean ± sd over n runs with different seeds; sd (ddof = 1) is the seed-to-seed "
        "spread of single runs, not the standard error of the mean.",
        "- added: external samples actually added to the training set (a range if it varied between runs).",
        "- ΔMSE vs random: mean over seeds of (row MSE − MSE of the `random` strategy at the same init and k, "
        "same seed). Negative = lower error than adding the same number of randomly chosen external samples.",
        f"- ΔMSE vs k=0: the same against the run at the same init without external samples (control used: {k0_used}).",
        "- p: two-sided paired t-test (scipy.stats.ttest_rel) on per-seed MSE, runs matched by seed. Wilcoxon "
        f"signed-rank p values (≥ {MIN_PAIRS_WILCOXON} pairs) and the RMSE tests are in the summary CSV.",
        "- —: the row is its own control (or adds nothing), so there is nothing to compare. "
        f"n/a: no control run or fewer than {MIN_PAIRS_T} seed-matched pairs.",
    ]
    if n_tests:
        legend.append(
            f"- p values are uncorrected for multiple comparisons: this table holds {n_tests} tests, so about "
            f"{0.05 * n_tests:.1f} would fall below 0.05 by chance alone; a Bonferroni threshold is "
            f"0.05 / {n_tests} = {0.05 / n_tests:.2g}."
        )
    else:
        legend.append("- p values are uncorrected for multiple comparisons (this table holds no tests).")
    if notes:
        legend += ["", "Notes:", *notes]
    how_to_read = [
        "",
        "How to read: influence-based selection is better than chance only if its row has a negative "
        "ΔMSE vs random with a p value that survives the number of tests; a difference between two "
        "single runs that is smaller than the sd column is expected from the seed alone. ΔMSE vs k=0 "
        "answers a different question — whether adding external samples helps at all — and `random` "
        "rows answer it for unselected data. Compare strategies at the same k, since adding more data "
        "changes the error by itself.",
    ]
    return "\n".join(lines + legend + how_to_read) + "\n"
