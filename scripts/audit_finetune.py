"""Fine-tune one arm of the planted-label audit at one k over every seed (molinfluence.runs.finetune_arm).

    audit_finetune.py --arm random|oracle|SELECTOR --k K --seeds S... --draw-seed N --args JSON --spec JSON
                      --start BASE_DIR --train CSV --validation CSV --test CSV --pool CSV [--ranking CSV]
                      [--threads N] --out CSV

Each seed continues from the audit's base model (``--start``) on the audit's training split plus the arm's k pool
rows (a selector's: the first k of ``--ranking``; random and oracle: drawn per seed and k with ``--draw-seed``), with
the fine-tune recipe ``--args`` (without its seed), and is evaluated on the test split. One row per seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import json_arg, run, set_threads  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("arm", "start", "train", "validation", "test", "pool", "out"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--draw-seed", type=int, required=True, help="audit.seed: the random and oracle draws")
    p.add_argument("--args", type=json_arg, required=True, help="the fine-tune recipe (TrainConfig fields) as JSON")
    p.add_argument("--spec", type=json_arg, required=True, help="head/pooling spec (RegressorSpec fields) as JSON")
    p.add_argument("--ranking", help="the selector's ranking of the pool (selector arms)")
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    set_threads(args.threads)

    import pandas as pd

    from molinfluence.files import write_csv
    from molinfluence.runs import Splits, finetune_arm

    table = finetune_arm(args.arm, args.k, args.seeds, start=args.start, spec=args.spec, recipe=args.args,
                         splits=Splits.read(args.train, args.validation, args.test), pool=pd.read_csv(args.pool),
                         draw_seed=args.draw_seed, ranking=pd.read_csv(args.ranking) if args.ranking else None)
    write_csv(args.out, table)


if __name__ == "__main__":
    run(main)
