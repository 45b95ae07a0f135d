"""Fine-tune with each random subset of the pool added (or without additions: the baseline) over seeds, through the
grid's own run: ``group_finetune.py --part baseline|kK --subsets CSV --seeds S... --args JSON --spec JSON
--start BASE_DIR --train CSV --validation CSV --test CSV --external CSV --target CSV [--threads N]
--out CSV``.

Output: one row per run: subset (-1: baseline), k, seed, target_loss (MSE on --target), test_mse, epochs_run
(molinfluence.validation.groups.measure with grid_finetune).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import json_arg, run, set_threads  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", required=True, help="'baseline' or k<size>: the subsets of that size")
    p.add_argument("--subsets", required=True)
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--args", type=json_arg, required=True, help="the fine-tune recipe without its seed, as JSON")
    p.add_argument("--spec", type=json_arg, required=True, help="head/pooling spec (RegressorSpec fields) as JSON")
    p.add_argument("--start", required=True, help="the trained base model")
    for name in ("train", "validation", "test", "external", "target"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    set_threads(args.threads)
    match = re.fullmatch(r"baseline|k(\d+)", args.part)
    if not match:
        raise ValueError(f"--part must be 'baseline' or k<size>, got {args.part!r}")

    import pandas as pd

    from molinfluence.files import write_csv
    from molinfluence.runs import Splits
    from molinfluence.validation.groups import grid_finetune, measure

    subsets = pd.read_csv(args.subsets)
    if match.group(1) is not None:
        subsets = subsets[subsets["k"] == int(match.group(1))]
        if subsets.empty:
            raise ValueError(f"{args.subsets}: no subset of size {match.group(1)}")
    else:
        subsets = subsets.iloc[:0]
    pool, target = pd.read_csv(args.external), pd.read_csv(args.target)
    pool.attrs["source"], target.attrs["source"] = args.external, args.target
    finetune = grid_finetune(args.start, args.spec, args.args, Splits.read(args.train, args.validation, args.test),
                             pool, target)
    runs = measure(subsets, args.seeds, finetune, baseline=match.group(1) is None, log=print)
    write_csv(args.out, runs)
    print(f"{len(runs)} fine-tunes -> {args.out}")


if __name__ == "__main__":
    run(main)
