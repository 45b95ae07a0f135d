"""Correlate every selector's predicted group effect with the measured effect of adding random subsets of the pool
(group validation, LDS): ``group_summary.py --subsets CSV --runs CSV [CSV ...] --scores NAME=CSV [NAME=CSV ...]
[--bootstrap N] [--seed S] [--target-name validation] --out-table CSV --out-markdown MD --out-subsets CSV --out-plot PNG``.

--scores takes each selector's table with columns ext_index and score (the influence scores for most_negative, a
ranking of rank_pool.py for a model-ranked selector). The table has one row per (selector, k) and one per selector
over all k (effects centred within each k): Spearman (the LDS) and Pearson with bootstrap intervals, the seeds' own
agreement and the noise ceiling (molinfluence.validation.groups.group_table).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subsets", required=True)
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--scores", nargs="+", required=True, metavar="NAME=CSV")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-name", choices=("validation", "test"), default="validation")
    p.add_argument("--out-table", required=True)
    p.add_argument("--out-markdown", required=True)
    p.add_argument("--out-subsets", required=True)
    p.add_argument("--out-plot", required=True)
    args = p.parse_args()

    import pandas as pd

    from molinfluence.files import atomic_path, write_csv
    from molinfluence.plots import plot_group_validation
    from molinfluence.validation.groups import group_table, markdown, predicted_effects

    scores = {}
    for item in args.scores:
        name, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"--scores: expected NAME=CSV, got {item!r}")
        table = pd.read_csv(path)
        missing = {"ext_index", "score"} - set(table.columns)
        if missing:
            raise ValueError(f"{path}: lacks column(s) {sorted(missing)}; has {list(table.columns)}")
        scores[name] = table.set_index("ext_index")["score"]
    subsets = pd.read_csv(args.subsets)
    runs = pd.concat([pd.read_csv(f) for f in args.runs], ignore_index=True)
    summary, per_subset = group_table(predicted_effects(subsets, scores), runs, n_boot=args.bootstrap, seed=args.seed)
    write_csv(args.out_table, summary)
    write_csv(args.out_subsets, per_subset)
    with atomic_path(args.out_markdown) as tmp:
        tmp.write_text(f"Group validation on the {args.target_name} split: predicted (each selector's score summed "
                       "over the subset) vs actual Δ target loss of fine-tuning with the subset added, mean over "
                       "seeds; positive = agreement.\n\n" + markdown(summary))
    plot_group_validation(per_subset, summary, list(scores), args.out_plot,
                          title=f"Group validation: Δ {args.target_name} loss of adding random subsets of the pool")
    print(markdown(summary))


if __name__ == "__main__":
    run(main)
