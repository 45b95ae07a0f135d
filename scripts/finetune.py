"""Fine-tune every seed of one grid condition in one process: ``finetune.py --init I --strategy S --k K --seeds 0 1 ...``.

    finetune.py --results DIR --init continue|fresh --strategy S --k K|all --seeds S... --args JSON --spec JSON
                --start DIR --train CSV --validation CSV --test CSV --code HASH [--keep-models] [--concurrent N]
                [--threads N]

Each seed writes ``DIR/finetune/{init}/{strategy}/k{k}/seed{s}/{metrics.json,predictions.csv,train_log.csv}`` (and
``model/`` with ``--keep-models``) and reads its selection from ``DIR/selection/``. A seed whose finished result is
cached under ``DIR/.cache`` with the same code, recipe and inputs is restored instead of retrained (see
``molinfluence/runs.py``). ``--start`` is the base model (continue) or the pretrained encoder (fresh); ``--args`` is
the training recipe without its seed; ``--code`` the hash of the training code. ``--concurrent N`` trains up to N
seeds at once in worker processes sharing the device; ``--threads`` (the cores Snakemake gave the job) is divided
among them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import json_arg, run, set_threads  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("results", "init", "strategy", "train", "validation", "test"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--k", required=True, help="number of selected samples, or 'all'")
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--args", type=json_arg, required=True, help="training recipe (TrainConfig fields) as JSON")
    p.add_argument("--spec", type=json_arg, required=True, help="head/pooling spec (RegressorSpec fields) as JSON")
    p.add_argument("--start", required=True, help="trained base model (continue) or pretrained encoder (fresh)")
    p.add_argument("--code", required=True, help="hash of the training code: part of each run's cache key")
    p.add_argument("--keep-models", action="store_true")
    p.add_argument("--concurrent", type=int, default=1, help="seeds trained at once, each in its own process")
    p.add_argument("--threads", type=int, default=None, help="cores of the job, divided among concurrent seeds")
    args = p.parse_args()
    workers = max(1, min(args.concurrent, len(args.seeds)))  # finetune_condition refuses concurrent < 1
    set_threads(max(1, args.threads // workers) if args.threads else None)

    from molinfluence.grid import Condition
    from molinfluence.runs import finetune_condition

    finetune_condition(
        Condition.make(args.init, args.strategy, args.k), args.seeds, results=args.results, start=args.start,
        spec=args.spec, recipe=args.args, splits={"train": args.train, "validation": args.validation, "test": args.test},
        code=args.code, keep_models=args.keep_models, concurrent=args.concurrent,
    )


if __name__ == "__main__":
    run(main)
