"""Score the chosen samples with every estimator of validation.estimators, on the base model.

    validate_estimators.py --influence INFLUENCE_JSON --estimators JSON --model BASE_DIR --train CSV --target CSV
                           --target-name validation --chosen chosen.csv [--device auto] [--threads N]
                           [--no-truncation] --out-scores CSV --out-stats JSON

Each estimator is the influence section with its own keys on top (e.g. method: ekfac, or curvature: hessian with
params: head). scores.csv has one row per (estimator, chosen sample); stats.json each estimator's IHVP diagnostics
(relative residual, cost, spectrum) or the reason it refused. The summary compares them against the same retraining.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import add_base_inputs, json_arg, load_base_inputs, run, set_threads  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_base_inputs(p, chosen=True, influence=True)
    p.add_argument("--estimators", type=json_arg, required=True, help="{\"estimators\": validation.estimators} as JSON")
    p.add_argument("--out-scores", required=True)
    p.add_argument("--out-stats", required=True)
    args = p.parse_args()
    set_threads(args.threads)

    from molinfluence.files import write_csv, write_json
    import pandas as pd

    from molinfluence.validation import compare_estimators

    chosen = pd.read_csv(args.chosen)
    chosen.attrs["source"] = args.chosen
    model, _, splits = load_base_inputs(args, chosen=chosen)
    train, target, chosen_batch = splits["train"], splits["target"], splits["chosen"]
    scores, stats = compare_estimators(
        model, train, target, chosen_batch, args.influence,
        args.estimators["estimators"], chosen["ext_index"].tolist(), progress=True,
    )
    write_csv(args.out_scores, scores)
    write_json(args.out_stats, stats)
    for name, st in stats.items():
        print(f"{name}: " + (f"refused: {st['refused']}" if "refused" in st else
                             f"relative residual {st['relative_residual']:.3g}, {st['seconds']:.1f} s"))


if __name__ == "__main__":
    run(main)
