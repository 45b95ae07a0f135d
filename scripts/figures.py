"""Draw the report figures from the finished grid.

    figures.py --results DIR --table metrics.csv --per-run metrics_per_run.csv --scores scores.csv --outdir DIR

rmse_vs_k.png (RMSE vs k per strategy, error bars = sd over seeds), training_curves.png (validation loss with the
early-stopping epoch marked, for the base model and each init's best condition), influence_histogram.png (scores with
the score-based selections at the largest k marked) and pred_vs_true.png (test predictions of the best row).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import run  # noqa: E402


def run_dir(results: Path, init: str, strategy: str, k_label: str, seed: int) -> Path:
    return results / "finetune" / init / strategy / f"k{k_label}" / f"seed{seed}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--per-run", required=True)
    p.add_argument("--scores", required=True)
    p.add_argument("--outdir", required=True)
    args = p.parse_args()

    import pandas as pd

    from molinfluence.plots import plot_pred_vs_true, plot_rmse_vs_k, plot_score_histogram, plot_training_curves

    results, outdir = Path(args.results), Path(args.outdir)
    summary = pd.read_csv(args.table)
    per_run = pd.read_csv(args.per_run)

    def k_label(strategy: str, k: int) -> str:
        return "all" if strategy in ("all", "weighted") else str(k)

    def first_run(row: pd.Series) -> Path:
        if row["init"] == "base":
            return results / "base"
        seed = int(per_run[(per_run.init == row.init) & (per_run.strategy == row.strategy) & (per_run.k == row.k)].seed.min())
        return run_dir(results, row["init"], row["strategy"], k_label(row["strategy"], int(row["k"])), seed)

    plot_rmse_vs_k(summary, outdir / "rmse_vs_k.png")

    logs = {"base model": pd.read_csv(results / "base" / "train_log.csv")}
    for init, rows in summary[summary.init != "base"].groupby("init", sort=True):
        best = rows.loc[rows["mean_rmse"].idxmin()]
        logs[f"{init}: {best.strategy} k={int(best.k)} (best mean RMSE)"] = pd.read_csv(first_run(best) / "train_log.csv")
    plot_training_curves(logs, outdir / "training_curves.png")

    scores = pd.read_csv(args.scores)
    selected = {}
    for strategy in ("most_negative", "most_positive", "both_ends"):
        ks = sorted(summary.loc[summary.strategy == strategy, "k"].astype(int))
        if ks:
            chosen = pd.read_csv(results / "selection" / f"{strategy}_k{ks[-1]}.csv")
            selected[f"{strategy} k={ks[-1]}"] = set(chosen["ext_index"].astype(int))
    plot_score_histogram(scores, selected, outdir / "influence_histogram.png")

    best = summary.loc[summary["mean_rmse"].idxmin()]
    label = "base model" if best.init == "base" else f"{best.init} / {best.strategy} / k={int(best.k)}"
    predictions = pd.read_csv(first_run(best) / "predictions.csv")
    plot_pred_vs_true(predictions, outdir / "pred_vs_true.png", f"Best mean test RMSE: {label} (first seed)")
    print(f"figures written to {outdir}")


if __name__ == "__main__":
    run(main)
