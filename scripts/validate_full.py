"""Measure the effect of adding a sample on the full model: continue training with and without it, per seed.

    validate_full.py --recipe JSON --seeds 0 1 2 --model BASE_DIR --train CSV --target CSV --target-name validation
                     (--chosen chosen.csv --chunk C --chunk-size K | --baseline)
                     [--device auto] [--threads N] [--no-truncation] --out CSV

--recipe holds validation.steps, lr, weight_decay, batch_size and train_mode. With --chosen, rows C*K ... C*K + K - 1
of chosen.csv are each added at weight 1/n (n = training rows) and trained with every seed; with --baseline, the
training split alone is trained with every seed. The output has one row per run: ext_index (-1 for a baseline), seed,
target_loss (mean squared error on the target split after training).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import add_base_inputs, json_arg, load_base_inputs, run, set_threads  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", type=json_arg, required=True, help="validation.steps/lr/weight_decay/batch_size/train_mode")
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    add_base_inputs(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--chosen", help="chosen.csv of the validation stage")
    which.add_argument("--baseline", action="store_true", help="train on the training split alone")
    p.add_argument("--chunk", type=int, default=0)
    p.add_argument("--chunk-size", type=int, default=5)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    set_threads(args.threads)

    import pandas as pd

    from molinfluence.files import write_csv
    from molinfluence.validation import ValidationArgs, chunk_rows, full_effects

    recipe = ValidationArgs.from_dict({**args.recipe, "seeds": args.seeds}).recipe()
    part = None
    if not args.baseline:
        chosen = pd.read_csv(args.chosen)
        part = chosen.iloc[chunk_rows(len(chosen), args.chunk_size, args.chunk)].reset_index(drop=True)
        part.attrs["source"] = args.chosen
    model, _, splits = load_base_inputs(args, **({} if part is None else {"chosen": part}))
    train, target = splits["train"], splits["target"]
    if args.baseline:
        samples, ext_index = None, None
        print(f"baselines: {len(train)} training molecules alone, seeds {args.seeds}")
    else:
        samples, ext_index = splits["chosen"], part["ext_index"].tolist()
        print(f"chunk {args.chunk}: ext_index {ext_index}, each added at weight 1/{len(train)}, seeds {args.seeds}")
    runs = full_effects(model, train, target, samples, recipe, args.seeds, ext_index, progress=True)
    write_csv(args.out, runs)
    print(runs.to_string(index=False))


if __name__ == "__main__":
    run(main)
