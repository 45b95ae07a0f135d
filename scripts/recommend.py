"""The recommended molecules at each k: ``recommend.py --strategy S --k 20 40 --pool CSV --out recommended.csv``.

``--pool`` is what the strategy ranks (the influence scores table for most_negative, the selector's ranking for the
model-ranked selectors). Output columns: strategy, k, rank (1 = most recommended), ext_index, smiles, label, score.
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
    p.add_argument("--k", type=int, nargs="+", required=True)
    p.add_argument("--pool", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import pandas as pd

    from molinfluence.files import write_csv
    from molinfluence.selection import select_condition

    pool = pd.read_csv(args.pool)
    parts = []
    for k in sorted(set(args.k)):
        chosen = select_condition(pool, args.strategy, k, source=args.pool)
        parts.append(chosen.assign(strategy=args.strategy, k=k, rank=range(1, len(chosen) + 1)))
    table = pd.concat(parts, ignore_index=True)[["strategy", "k", "rank", "ext_index", "smiles", "label", "score"]]
    write_csv(args.out, table)
    print(f"{args.strategy}: the recommended molecules at k = {sorted(set(args.k))} -> {args.out}")


if __name__ == "__main__":
    run(main)
