"""Correlate predicted and measured effects of adding a sample, for the full model and the convex reference.

    validate_summary.py --recipe JSON --bootstrap 2000 --seed 0 --chosen chosen.csv --train CSV
                        --target-name validation --influence-stats ihvp_stats.json
                        --full RUNS.csv [RUNS.csv ...] --convex-effects CSV --convex-scores CSV --convex-stats JSON
                        --out-json influence_validation.json --out-table effects.csv
                        --out-plot influence_validation.png --out-plot-convex influence_validation_convex.png

--full takes the per-seed baseline files and the chunk files of validate_full.py. The JSON holds, per setting,
Pearson and Spearman correlation with bootstrap intervals, the scale ratio and the noise of the measurement; the
table one row per (setting, sample); the plots predicted against measured effect (error bars: sd over seeds). The
estimators compared on the same samples have their own summary, validate_estimator_table.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import add_summary_inputs, json_arg, run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", type=json_arg, required=True, help="validation.steps/lr/weight_decay/batch_size/train_mode")
    add_summary_inputs(p)
    p.add_argument("--convex-effects", required=True)
    p.add_argument("--convex-scores", required=True)
    p.add_argument("--convex-stats", required=True)
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-table", required=True)
    p.add_argument("--out-plot", required=True)
    p.add_argument("--out-plot-convex", required=True)
    args = p.parse_args()

    import pandas as pd

    from molinfluence.files import read_json, write_csv, write_json
    from molinfluence.plots import plot_influence_validation
    from molinfluence.validation import ValidationArgs, build_report

    chosen, n_train = pd.read_csv(args.chosen), len(pd.read_csv(args.train))
    full_runs = pd.concat([pd.read_csv(f) for f in args.full], ignore_index=True)
    influence_stats = read_json(args.influence_stats)
    report, table = build_report(
        chosen,
        n_train,
        full_runs,
        pd.read_csv(args.convex_effects),
        pd.read_csv(args.convex_scores),
        read_json(args.convex_stats),
        recipe=ValidationArgs.from_dict(args.recipe).recipe(),
        influence_stats=influence_stats,
        target=args.target_name,
        n_boot=args.bootstrap,
        seed=args.seed,
    )
    write_csv(args.out_table, table)
    params = report["settings"]["full"]["influence"].get("params", "?")
    titles = {
        "full": f"Full model, scores on params: {params}",
        "convex": "Convex reference: head on frozen features",
    }
    for setting, out in (("full", args.out_plot), ("convex", args.out_plot_convex)):
        title = f"{titles[setting]}\nchange of the {args.target_name} loss when a sample is added"
        plot_influence_validation(table[table.setting == setting], out, title)
    write_json(args.out_json, report)  # last: its presence means the stage finished
    for setting, s in report["settings"].items():
        print(f"{setting}: Pearson {s['pearson']['estimate']}, CI {s['pearson']['ci']}; "
              f"Spearman {s['spearman']['estimate']}, CI {s['spearman']['ci']}; noise {s['noise']}")


if __name__ == "__main__":
    run(main)
