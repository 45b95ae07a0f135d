"""Choose the external samples whose effect the validation stage measures: m rows spread over the score range.

    validate_choose.py --scores scores.csv --m 20 --seed 0 --out chosen.csv

The rows sit at the quantile levels j/(m - 1) of the scores (the most negative and the most positive included); ties
are broken by a permutation seeded by --seed. The output has the columns of scores.csv plus rank and quantile.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scores", required=True, help="the influence stage's scores.csv (ext_index, smiles, label, score)")
    p.add_argument("--m", type=int, required=True, help="number of samples (validation.m)")
    p.add_argument("--seed", type=int, default=0, help="tie-breaking seed (validation.seed)")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import pandas as pd

    from molinfluence.files import write_csv
    from molinfluence.validation import choose_samples

    chosen = choose_samples(pd.read_csv(args.scores), args.m, args.seed, source=args.scores)
    write_csv(args.out, chosen)
    print(chosen[["ext_index", "rank", "quantile", "score"]].to_string(index=False))


if __name__ == "__main__":
    run(main)
