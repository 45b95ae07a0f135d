"""The estimators compared on the same chosen samples against the same full-model retraining: one table and a plot.

    validate_estimator_table.py --bootstrap 2000 --seed 0 --topk 5 --chosen chosen.csv --train CSV
                                --target-name validation --influence-stats ihvp_stats.json
                                --full RUNS.csv [RUNS.csv ...] --scores estimators/scores.csv
                                --stats estimators/stats.json --out-table estimators.csv --out-plot estimators.png

--full takes the per-seed baseline files and the chunk files of validate_full.py (the measured effects), --scores and
--stats what validate_estimators.py wrote. One row per estimator (the pipeline's own scores first, as ``pipeline``):
Pearson, Spearman and top-k overlap of its predicted effect (score / n) with the measured one, each with a bootstrap
interval, and its cost; a refused estimator keeps its row with the reason. Its own summary, so that the influence
summary (validate_summary.py) does not wait for the estimator comparison.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import add_summary_inputs, run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_summary_inputs(p)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--scores", required=True, help="scores.csv of validate_estimators.py")
    p.add_argument("--stats", required=True, help="stats.json of validate_estimators.py")
    p.add_argument("--out-table", required=True)
    p.add_argument("--out-plot", required=True)
    args = p.parse_args()

    import pandas as pd

    from molinfluence.files import read_json, write_csv
    from molinfluence.plots import plot_estimator_comparison
    from molinfluence.validation import estimator_table

    chosen, n_train = pd.read_csv(args.chosen), len(pd.read_csv(args.train))
    full_runs = pd.concat([pd.read_csv(f) for f in args.full], ignore_index=True)
    table = estimator_table(chosen, n_train, full_runs, pd.read_csv(args.scores), read_json(args.stats),
                            read_json(args.influence_stats), k=args.topk, n_boot=args.bootstrap, seed=args.seed)
    plot_estimator_comparison(table, args.out_plot, f"Estimators vs the same full-model retraining ({len(chosen)} "
                                                    f"samples, {args.target_name} loss)")
    write_csv(args.out_table, table)  # last: its presence means the summary finished
    print(table.to_string(index=False))


if __name__ == "__main__":
    run(main)
