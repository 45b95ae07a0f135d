"""Draw the group validation's random subsets of the external pool:
``group_subsets.py --external CSV --k K [K ...] --subsets N --seed S --out CSV``.

Output: one row per member, columns subset, k, ext_index (molinfluence.validation.groups.draw_subsets).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--external", required=True)
    p.add_argument("--k", type=int, nargs="+", required=True)
    p.add_argument("--subsets", type=int, required=True, help="subsets per k")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import pandas as pd

    from molinfluence.files import write_csv
    from molinfluence.validation.groups import draw_subsets

    pool = pd.read_csv(args.external)
    if "ext_index" not in pool.columns:
        raise ValueError(f"{args.external}: lacks column 'ext_index'; has {list(pool.columns)}")
    subsets = draw_subsets(pool["ext_index"], args.k, args.subsets, args.seed)
    write_csv(args.out, subsets)
    print(f"{subsets['subset'].nunique()} subsets of {len(pool)} external molecules at k = {sorted(set(args.k))} -> {args.out}")


if __name__ == "__main__":
    run(main)
