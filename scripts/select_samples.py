"""Write one selection of external samples: ``select_samples.py --strategy S --k K --pool CSV --out CSV [--seed N]``.

The pool is the external split (score-free strategies) or the influence scores table (``scores.csv``: ext_index,
smiles, label, score). ``--k all`` takes the whole pool; strategy ``none`` (k = 0) writes the empty selection that is
the control for extra training. Output columns: ext_index, smiles, label, score, weight.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategy", required=True)
    p.add_argument("--k", required=True, help="number of samples, or 'all'")
    p.add_argument("--pool", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import pandas as pd

    from molinfluence.files import write_csv
    from molinfluence.selection import select_condition

    pool = pd.read_csv(args.pool)
    chosen = select_condition(pool, args.strategy, args.k, seed=args.seed, source=args.pool)
    write_csv(args.out, chosen)
    print(f"{args.strategy} k={args.k}: {len(chosen)} of {len(pool)} external samples selected -> {args.out}")


if __name__ == "__main__":
    run(main)
