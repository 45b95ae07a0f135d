"""Report figures (PNG, matplotlib Agg). Each function validates its input, writes one file atomically
(via :func:`molinfluence.files.atomic_path`, so an interrupted run never leaves a half-written PNG that
Snakemake would take as done) and returns the path.

Figures are drawn on a :class:`matplotlib.figure.Figure` with an explicit Agg canvas rather than through
``pyplot``: no global figure state, no GUI backend, nothing to close, and the same input gives the same
bytes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from molinfluence.files import atomic_path
from molinfluence.grid import RANKED, Condition, selection_pattern

DPI = 150
BASE_INIT = "base"
_MAX_LEGEND_CURVES = 12


def _require(df: object, columns: Iterable[str], what: str, numeric: Iterable[str] | None = None) -> pd.DataFrame:
    """Check ``df`` is a non-empty DataFrame with ``columns``; ``numeric`` (default: all of them) must be finite."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    columns = list(columns)
    for col in columns:
        if col not in df.columns:
            raise ValueError(f"{what} is missing column {col!r}; has {list(df.columns)}")
    if df.empty:
        raise ValueError(f"{what} has no rows")
    for col in columns if numeric is None else numeric:
        _finite(df, col, what)
    return df


def _finite(df: pd.DataFrame, col: str, what: str, allow_nan: bool = False) -> np.ndarray:
    """Column ``col`` as float64, raising ValueError naming the column and row if a value is not finite."""
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isinf(values) if allow_nan else ~np.isfinite(values)
    bad |= df[col].notna().to_numpy() & np.isnan(values)  # non-numeric text
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{what} column {col!r} has a non-finite or non-numeric value at row {i}: {df[col].iloc[i]!r}")
    return values


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _check_path(path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"plot output {target} must end in .png (figures are written as PNG)")
    return target


def _save(fig: Figure, target: Path) -> Path:
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return target


def _fit_text(truth: np.ndarray, prediction: np.ndarray) -> str:
    """'MSE … RMSE … MAE … R² …' for a title (R² 'n/a' for constant truth, where it is undefined)."""
    resid = truth - prediction
    mse = float(np.mean(resid**2))
    ss_tot = float(np.sum((truth - truth.mean()) ** 2))
    r2 = f"{1.0 - float(np.sum(resid**2)) / ss_tot:.3f}" if ss_tot > 0 else "n/a"
    return f"MSE {mse:.4f}   RMSE {math.sqrt(mse):.4f}   MAE {float(np.mean(np.abs(resid))):.4f}   R² {r2}"


def plot_rmse_vs_k(summary: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Test RMSE (mean ± sd over seeds) against k, one line per strategy, one panel per init.

    ``summary`` is :func:`molinfluence.metrics.summarize_runs` output (columns ``init, strategy, k,
    mean_rmse, sd_rmse``). The baseline row (``init == "base"``) is drawn as a horizontal line with a
    ±sd band in every panel. Points of different strategies at the same k are shifted slightly sideways
    so their error bars do not hide each other.
    """
    target = _check_path(path)
    df = _require(summary, ["init", "strategy", "k", "mean_rmse", "sd_rmse"], "summary", numeric=["k", "mean_rmse"])
    _finite(df, "sd_rmse", "summary", allow_nan=True)  # sd is NaN for a single run
    base = df[df["init"] == BASE_INIT]
    runs = df[df["init"] != BASE_INIT]
    if runs.empty:
        raise ValueError("summary has only baseline rows (init 'base'); there is no k to plot against")

    inits = list(dict.fromkeys(runs["init"]))
    strategies = list(dict.fromkeys(runs["strategy"]))
    k_all = runs["k"].to_numpy(dtype=np.float64)
    step = 0.012 * (k_all.max() - k_all.min() or 1.0)
    fig = _new_figure(5.0 * len(inits) + 1.0, 4.2)
    axes = fig.subplots(1, len(inits), sharey=True, squeeze=False)[0]
    for ax, init in zip(axes, inits):
        if not base.empty:
            mean, sd = float(base["mean_rmse"].iloc[0]), float(base["sd_rmse"].iloc[0])
            ax.axhline(mean, color="black", linestyle="--", linewidth=1, label="base (no external data)")
            if math.isfinite(sd):
                ax.axhspan(mean - sd, mean + sd, color="grey", alpha=0.15, linewidth=0)
        sub = runs[runs["init"] == init]
        for i, strategy in enumerate(strategies):
            s = sub[sub["strategy"] == strategy].sort_values("k")
            if s.empty:
                continue
            offset = (i - (len(strategies) - 1) / 2) * step
            ax.errorbar(
                s["k"].to_numpy(dtype=np.float64) + offset,
                s["mean_rmse"].to_numpy(dtype=np.float64),
                yerr=s["sd_rmse"].to_numpy(dtype=np.float64),
                color=f"C{i % 10}",
                marker="o",
                markersize=4,
                capsize=3,
                linewidth=1.2,
                label=strategy,
            )
        ax.set_title(f"init: {init}")
        ax.set_xlabel("k (external samples added)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test RMSE (mean ± sd over seeds)")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    return _save(fig, target)


def best_epoch(log: pd.DataFrame) -> int:
    """The early-stopping epoch of a training log: the last epoch flagged ``is_best`` if that column has
    any True value (the checkpoint that was kept is the last improvement), else the epoch of the lowest
    ``val_loss`` (first one on ties)."""
    flags = log["is_best"].eq(True) if "is_best" in log.columns else pd.Series(False, index=log.index)
    if flags.any():
        return int(log.loc[flags, "epoch"].max())
    return int(log["epoch"].iloc[int(np.argmin(log["val_loss"].to_numpy(dtype=np.float64)))])


def plot_training_curves(logs: Mapping[str, pd.DataFrame], path: str | os.PathLike[str]) -> Path:
    """Validation loss per epoch for each run in ``logs`` (label -> log), early-stopping epoch starred.

    Each log has columns ``epoch`` and ``val_loss``; ``train_loss`` is drawn dashed when present and
    ``is_best`` decides the marked epoch (see :func:`best_epoch`). The legend lists each run with its
    best epoch (omitted above 12 curves, where it would cover the plot).
    """
    target = _check_path(path)
    if not isinstance(logs, Mapping) or not logs:
        raise ValueError("logs must be a non-empty mapping of label -> training log DataFrame")
    checked = {}
    for label, log in logs.items():
        what = f"training log {label!r}"
        _require(log, ["epoch", "val_loss"], what)
        if "train_loss" in log.columns:
            _finite(log, "train_loss", what, allow_nan=True)
        if log["epoch"].duplicated().any():
            raise ValueError(f"{what} column 'epoch' has duplicates, e.g. {log.loc[log['epoch'].duplicated(), 'epoch'].iloc[0]}")
        checked[label] = log.sort_values("epoch", kind="stable")

    fig = _new_figure(7.0, 4.5)
    ax = fig.subplots()
    for i, (label, log) in enumerate(checked.items()):
        color = f"C{i % 10}"
        epochs = log["epoch"].to_numpy(dtype=np.float64)
        val = log["val_loss"].to_numpy(dtype=np.float64)
        best = best_epoch(log)
        ax.plot(epochs, val, color=color, linewidth=1.4, label=f"{label} (best epoch {best})")
        if "train_loss" in log.columns:
            ax.plot(epochs, log["train_loss"].to_numpy(dtype=np.float64), color=color, linewidth=1, linestyle="--", alpha=0.6)
        at_best = log.loc[log["epoch"] == best, "val_loss"].to_numpy(dtype=np.float64)
        ax.plot([best], at_best[:1], marker="*", markersize=13, color=color, markeredgecolor="black", linestyle="none")
        ax.axvline(best, color=color, linestyle=":", linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    has_train = any("train_loss" in log.columns for log in checked.values())
    ax.set_title("Validation loss (solid" + (", training loss dashed" if has_train else "") + "); ★ = early-stopping epoch")
    if len(checked) <= _MAX_LEGEND_CURVES:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, target)


def plot_score_histogram(
    scores: pd.DataFrame, selected: Mapping[str, Iterable[int]], path: str | os.PathLike[str]
) -> Path:
    """Histogram of influence scores with each selection's samples marked as a rug row below it.

    ``scores`` has columns ``ext_index`` and ``score``; ``selected`` maps a label (e.g. a strategy) to
    the ``ext_index`` values it picked. Negative scores are expected helpful (marked on the plot).
    Raises ValueError if a selected index is not among the scored samples.
    """
    target = _check_path(path)
    df = _require(scores, ["ext_index", "score"], "scores")
    if df["ext_index"].duplicated().any():
        dup = df.loc[df["ext_index"].duplicated(), "ext_index"].iloc[0]
        raise ValueError(f"scores column 'ext_index' has duplicates, e.g. {dup}")
    by_index = pd.Series(df["score"].to_numpy(dtype=np.float64), index=df["ext_index"].to_numpy())
    rugs = {}
    for label, indices in selected.items():
        wanted = list(indices)
        unknown = [i for i in wanted if i not in by_index.index]
        if unknown:
            raise ValueError(f"selection {label!r} names ext_index {unknown[:5]} that have no score")
        rugs[label] = by_index.loc[wanted].to_numpy()

    fig = _new_figure(7.0, 4.5)
    ax = fig.subplots()
    values = by_index.to_numpy()
    counts, _, _ = ax.hist(values, bins=min(50, max(10, len(values) // 5)), color="0.75", edgecolor="0.5",
                           label=f"all scored samples (n={len(values)})")
    row_height = 0.08 * max(float(counts.max()), 1.0)
    for i, (label, xs) in enumerate(rugs.items()):
        ax.plot(xs, np.full(len(xs), -(i + 1) * row_height), linestyle="none", marker="|", markersize=10,
                markeredgewidth=1.5, color=f"C{i % 10}", label=f"{label} (n={len(xs)})")
    ax.set_ylim(bottom=-(len(rugs) + 1) * row_height)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.annotate("← expected helpful", xy=(0, 1), xycoords=("data", "axes fraction"), xytext=(-4, -12),
                textcoords="offset points", ha="right", fontsize=8)
    ax.annotate("expected harmful →", xy=(0, 1), xycoords=("data", "axes fraction"), xytext=(4, -12),
                textcoords="offset points", ha="left", fontsize=8)
    ax.set_xlabel("influence score (predicted change of target loss when up-weighted)")
    ax.set_ylabel("count")
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, target)


def plot_pred_vs_true(df: pd.DataFrame, path: str | os.PathLike[str], title: str) -> Path:
    """Scatter of ``prediction`` against ``truth`` with the y = x line; MSE, RMSE, MAE and R² in the title."""
    target = _check_path(path)
    _require(df, ["truth", "prediction"], "predictions")
    truth = df["truth"].to_numpy(dtype=np.float64)
    pred = df["prediction"].to_numpy(dtype=np.float64)
    fig = _new_figure(5.5, 5.5)
    ax = fig.subplots()
    ax.scatter(truth, pred, s=10, alpha=0.5, edgecolors="none")
    lo, hi = float(min(truth.min(), pred.min())), float(max(truth.max(), pred.max()))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="black", linewidth=1, label="y = x")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    ax.set_xlabel("true value")
    ax.set_ylabel("prediction")
    ax.set_title(f"{title}\n{_fit_text(truth, pred)}  (n={len(truth)})", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return _save(fig, target)


def _correlations(x: np.ndarray, y: np.ndarray) -> str:
    """'Pearson r …  Spearman ρ …' ('n/a' with fewer than 3 points or a constant variable)."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return "Pearson r n/a   Spearman ρ n/a"
    return f"Pearson r {stats.pearsonr(x, y).statistic:.3f}   Spearman ρ {stats.spearmanr(x, y).statistic:.3f}"


def plot_influence_validation(df: pd.DataFrame, path: str | os.PathLike[str], title: str) -> Path:
    """Predicted vs actual effect (e.g. influence estimate vs measured loss change) for a validation stage.

    ``df`` has columns ``predicted`` and ``actual`` and optionally ``actual_sd`` (drawn as vertical error
    bars, e.g. the spread over retraining seeds). The y = x line is drawn for reference; Pearson r and
    Spearman ρ are in the title.
    """
    target = _check_path(path)
    _require(df, ["predicted", "actual"], "influence validation")
    x = df["predicted"].to_numpy(dtype=np.float64)
    y = df["actual"].to_numpy(dtype=np.float64)
    yerr = None
    if "actual_sd" in df.columns:
        yerr = _finite(df, "actual_sd", "influence validation")
        if (yerr < 0).any():
            raise ValueError(f"influence validation column 'actual_sd' is negative at row {int(np.argmax(yerr < 0))}")
    fig = _new_figure(5.5, 5.0)
    ax = fig.subplots()
    ax.errorbar(x, y, yerr=yerr, linestyle="none", marker="o", markersize=4, capsize=2, elinewidth=0.8, alpha=0.8,
                label="samples" + (" (± sd)" if yerr is not None else ""))
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, linestyle="--", label="y = x")
    ax.axhline(0.0, color="0.6", linewidth=0.6)
    ax.axvline(0.0, color="0.6", linewidth=0.6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"{title}\n{_correlations(x, y)}  (n={len(x)})", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, target)


# ---------------------------------------------------------------------------------------------------------------------
# Which runs the report figures show


def first_run(per_run: pd.DataFrame, row: pd.Series) -> Condition | None:
    """The lowest-seed run of a summary row's condition (None for the base model's row)."""
    if row["init"] == BASE_INIT:
        return None
    same = per_run[(per_run["init"] == row["init"]) & (per_run["strategy"] == row["strategy"]) & (per_run["k"] == row["k"])]
    if same.empty:
        raise ValueError(f"per-run table has no run of {row['init']}/{row['strategy']}/k={row['k']}")
    return Condition.make(row["init"], row["strategy"], row["k"], int(same["seed"].min()))


def curve_runs(summary: pd.DataFrame) -> dict[str, pd.Series]:
    """Per init, the condition with the lowest mean test RMSE (label -> summary row)."""
    chosen = {}
    for init, rows in summary[summary["init"] != BASE_INIT].groupby("init", sort=True):
        best = rows.loc[rows["mean_rmse"].idxmin()]
        chosen[f"{init}: {best['strategy']} k={int(best['k'])} (best mean RMSE)"] = best
    return chosen


def report_figures(results: str | os.PathLike[str], summary: pd.DataFrame, per_run: pd.DataFrame,
                   scores: pd.DataFrame, outdir: str | os.PathLike[str]) -> list[Path]:
    """The four report figures of a finished grid under ``results`` (the metrics table's summary and per-run rows).

    rmse_vs_k.png (every condition), training_curves.png (the base model and each init's best condition, first seed),
    influence_histogram.png (the score-ranked selections at their largest k marked), pred_vs_true.png (the best row's
    first seed). Run files are found through :class:`Condition` paths.
    """
    results, outdir = Path(results), Path(outdir)

    def run_dir(row: pd.Series) -> Path:
        run = first_run(per_run, row)
        return results / "base" if run is None else Path(run.path(str(results)))

    written = [plot_rmse_vs_k(summary, outdir / "rmse_vs_k.png")]
    logs = {"base model": pd.read_csv(results / "base" / "train_log.csv")}
    logs.update({label: pd.read_csv(run_dir(row) / "train_log.csv") for label, row in curve_runs(summary).items()})
    written.append(plot_training_curves(logs, outdir / "training_curves.png"))

    selected = {}
    for strategy in RANKED:
        ks = sorted(summary.loc[summary["strategy"] == strategy, "k"].astype(int))
        if ks:
            chosen = pd.read_csv(selection_pattern(str(results), per_seed=False).format(strategy=strategy, k=ks[-1]))
            selected[f"{strategy} k={ks[-1]}"] = set(chosen["ext_index"].astype(int))
    written.append(plot_score_histogram(scores, selected, outdir / "influence_histogram.png"))

    best = summary.loc[summary["mean_rmse"].idxmin()]
    label = "base model" if best["init"] == BASE_INIT else f"{best['init']} / {best['strategy']} / k={int(best['k'])}"
    predictions = pd.read_csv(run_dir(best) / "predictions.csv")
    written.append(plot_pred_vs_true(predictions, outdir / "pred_vs_true.png", f"Best mean test RMSE: {label} (first seed)"))
    return written


def plot_estimator_comparison(df: pd.DataFrame, path: str | os.PathLike[str], title: str) -> Path:
    """Influence estimators side by side: Pearson, Spearman and top-k overlap of predicted vs measured effects.

    ``df`` has one row per estimator with ``estimator`` and, for each metric ``pearson``, ``spearman``,
    ``topk_overlap``, the estimate and ``<metric>_ci_low``/``_ci_high`` (``topk_ci_low``/``_high`` for the overlap),
    drawn as bars with interval whiskers. Rows without an estimate (a refused estimator) are drawn as "refused".
    """
    target = _check_path(path)
    _require(df, ["estimator", "pearson", "spearman", "topk_overlap"], "estimator comparison", numeric=[])
    metrics = [("pearson", "pearson_ci"), ("spearman", "spearman_ci"), ("topk_overlap", "topk_ci")]
    names = df["estimator"].astype(str).tolist()
    y = np.arange(len(names))
    fig = _new_figure(9.0, 1.2 + 0.45 * len(names))
    axes = fig.subplots(1, 3, sharey=True)
    for ax, (metric, ci) in zip(axes, metrics):
        est = pd.to_numeric(df[metric], errors="coerce").to_numpy(dtype=np.float64)
        lo = pd.to_numeric(df.get(f"{ci}_low"), errors="coerce").to_numpy(dtype=np.float64)
        hi = pd.to_numeric(df.get(f"{ci}_high"), errors="coerce").to_numpy(dtype=np.float64)
        ok = np.isfinite(est)
        err = np.vstack([np.where(ok, est - lo, 0.0), np.where(ok, hi - est, 0.0)])
        ax.barh(y[ok], est[ok], xerr=np.nan_to_num(err[:, ok]), color="tab:blue", alpha=0.7, capsize=3)
        for i in y[~ok]:
            ax.text(0.0, i, " refused", va="center", fontsize=8, color="tab:red")
        ax.axvline(0.0, color="0.5", linewidth=0.6)
        ax.set_xlim(-1.0 if metric != "topk_overlap" else 0.0, 1.0)
        ax.set_title(metric.replace("_", " "), fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(y, names, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(title, fontsize=9)
    return _save(fig, target)


def plot_group_validation(per_subset: pd.DataFrame, summary: pd.DataFrame, selectors: Iterable[str],
                          path: str | os.PathLike[str], title: str) -> Path:
    """Group validation: one panel per selector, its predicted group effect (score summed over the subset) against
    the measured Δ target loss (mean over seeds, ± sd), one colour per subset size k; the panel's title gives the
    Spearman (LDS) over all k (within-k centred) or at the single k, with its interval and the noise ceiling.

    ``per_subset``: columns ``k``, ``actual``, ``actual_sd`` and one per selector; ``summary``: the rows of
    :func:`molinfluence.validation.groups.group_table`."""
    target = _check_path(path)
    selectors = list(selectors)
    _require(per_subset, ["k", "actual", "actual_sd", *selectors], "group validation")
    _require(summary, ["selector", "k", "spearman", "spearman_lo", "spearman_hi", "ceiling"], "group validation summary",
             numeric=[])
    cols = min(3, len(selectors))
    rows = math.ceil(len(selectors) / cols)
    fig = _new_figure(3.6 * cols, 3.2 * rows + 0.5)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    ks = sorted(per_subset["k"].unique())
    y = _finite(per_subset, "actual", "group validation")
    yerr = _finite(per_subset, "actual_sd", "group validation", allow_nan=True)
    overall = "all" if len(ks) > 1 else ks[0]
    for ax, name in zip(axes, selectors):
        x = _finite(per_subset, name, "group validation")
        for i, k in enumerate(ks):
            at = (per_subset["k"] == k).to_numpy()
            ax.errorbar(x[at], y[at], yerr=np.nan_to_num(yerr[at]), linestyle="none", marker="o", markersize=4,
                        capsize=2, elinewidth=0.7, alpha=0.8, color=f"C{i}", label=f"k = {k}")
        ax.axhline(0.0, color="0.6", linewidth=0.6)
        row = summary[(summary["selector"] == name) & (summary["k"].astype(str) == str(overall))]
        text = "Spearman n/a"
        if len(row) and pd.notna(row["spearman"].iloc[0]):
            r = row.iloc[0]
            text = f"Spearman {float(r['spearman']):.2f}"
            if pd.notna(r["spearman_lo"]):
                text += f" [{float(r['spearman_lo']):.2f}, {float(r['spearman_hi']):.2f}]"
            if pd.notna(r["ceiling"]):
                text += f"\nceiling {float(r['ceiling']):.2f}"
        ax.set_title(f"{name}\n{text}", fontsize=8)
        ax.set_xlabel("predicted (score summed over the subset)", fontsize=7)
        ax.set_ylabel("actual Δ target loss", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(selectors):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, target)


def plot_audit(table: pd.DataFrame, path: str | os.PathLike[str], title: str) -> Path:
    """The planted-label audit (:func:`molinfluence.audit.summarise`): left, each selector's clean share of its first k
    against k (the pool's base rate dashed); right, each arm's ΔMSE vs random at each k (the oracle in black), a k where
    the oracle is not significantly better than random shaded and marked "cannot judge"."""
    target = _check_path(path)
    _require(table, ["k", "arm", "clean_share", "delta", "judged"], "audit table", numeric=["k"])
    ks = sorted(int(k) for k in table["k"].unique())
    arms = [a for a in table["arm"].unique() if a not in ("random", "oracle")]
    fig = _new_figure(10.0, 4.0)
    left, right = fig.subplots(1, 2)
    colors = {arm: f"C{i % 10}" for i, arm in enumerate(arms)}
    for arm in arms:
        part = table[table["arm"] == arm].sort_values("k")
        left.plot(part["k"], part["clean_share"], marker="o", color=colors[arm], label=arm)
    if "base_rate" in table.columns:
        left.axhline(float(table["base_rate"].iloc[0]), color="0.4", linestyle="--", linewidth=0.8, label="base rate")
    left.set_xlabel("k (rows added)")
    left.set_ylabel("clean share of the first k")
    left.set_ylim(-0.02, 1.02)
    left.set_xticks(ks)
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    width = 0.8 / max(1, len(arms) + 1)
    for j, k in enumerate(ks):
        part = table[table["k"] == k].set_index("arm")
        if not bool(part["judged"].iloc[0]):
            right.axvspan(j - 0.45, j + 0.45, color="0.9", zorder=0)
            right.text(j, 0.98, "cannot judge", transform=right.get_xaxis_transform(), ha="center", va="top",
                       fontsize=7, color="0.3")
        for i, arm in enumerate(["oracle", *arms]):
            if arm in part.index:
                x = j - 0.4 + width * (i + 0.5)
                right.bar(x, float(part.loc[arm, "delta"]), width, color="black" if arm == "oracle" else colors[arm],
                          label=arm if j == 0 else None)
    right.axhline(0.0, color="0.3", linewidth=0.8)
    right.set_xticks(range(len(ks)), [f"k={k}" for k in ks])
    right.set_ylabel("test ΔMSE vs random (mean over seeds)")
    right.grid(alpha=0.3, axis="y")
    right.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, target)
