"""Base training: train a regressor, evaluate it on the test split, write results atomically.

    train.py --args JSON --spec JSON --init fresh|continue --encoder DIR --train CSV --validation CSV --test CSV
             [--resume-dir DIR] [--code HASH] [--threads N] [--out-model DIR] --out-metrics JSON --out-predictions CSV --out-log CSV

``--init fresh`` puts a new seeded head on the pretrained encoder in ``--encoder``; ``--init continue`` loads the
trained regressor directory in ``--encoder``. The fine-tuning grid runs through ``finetune.py`` (all seeds of a
condition in one process).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import json_arg, run, set_threads  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--args", type=json_arg, required=True, help="training recipe (TrainConfig fields) as JSON")
    p.add_argument("--spec", type=json_arg, required=True, help="head/pooling spec (RegressorSpec fields) as JSON")
    p.add_argument("--init", choices=("fresh", "continue"), required=True)
    p.add_argument("--encoder", required=True, help="pretrained encoder dir (fresh) or trained regressor dir (continue)")
    p.add_argument("--train", required=True)
    p.add_argument("--validation", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--resume-dir", help="where to keep the resume checkpoint (outside the declared outputs)")
    p.add_argument("--code", help="hash of the training code (part of the resume checkpoint's run identity); "
                   "default: the hash of molinfluence.training and what it imports")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-model")
    p.add_argument("--out-metrics", required=True)
    p.add_argument("--out-predictions", required=True)
    p.add_argument("--out-log", required=True)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    set_threads(args.threads)

    from molinfluence.runs import Splits, train_run, write_run
    from molinfluence.training import TrainConfig

    splits = Splits.read(args.train, args.validation, args.test)
    result = train_run(args.init, args.encoder, args.spec, TrainConfig.from_dict(args.args), splits,
                       resume_dir=args.resume_dir, code=args.code)
    write_run(result, metrics=args.out_metrics, predictions=args.out_predictions, log=args.out_log,
              model=args.out_model)
    if args.resume_dir:
        shutil.rmtree(args.resume_dir, ignore_errors=True)


if __name__ == "__main__":
    run(main)
