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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--per-run", required=True)
    p.add_argument("--scores", required=True)
    p.add_argument("--outdir", required=True)
    args = p.parse_args()

    import pandas as pd

    from molinfluence.plots import report_figures

    tables = {name: pd.read_csv(path) for name, path in (("summary", args.table), ("per_run", args.per_run),
                                                          ("scores", args.scores))}
    report_figures(args.results, outdir=args.outdir, **tables)
    print(f"figures written to {args.outdir}")


if __name__ == "__main__":
    run(main)
