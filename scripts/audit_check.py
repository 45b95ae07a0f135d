"""Check audit.k against the planted-label audit's pool before anything is fine-tuned (molinfluence.audit.check_k).

    audit_check.py --pool CSV --k K... --out JSON

Fails naming ``audit.k`` when a k exceeds the pool's clean rows (the oracle adds k clean rows); writes the pool's
clean and corrupted counts with the k checked.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", required=True)
    p.add_argument("--k", type=int, nargs="+", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import pandas as pd

    from molinfluence.audit import check_k
    from molinfluence.files import write_json

    pool = pd.read_csv(args.pool)
    clean = check_k(pool, args.k, args.pool)
    write_json(args.out, {"k": sorted(args.k), "pool": len(pool), "clean": clean, "corrupted": len(pool) - clean})
    print(f"audit.k {sorted(args.k)}: each at most the {clean} clean rows of {args.pool}")


if __name__ == "__main__":
    run(main)
