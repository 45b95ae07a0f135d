"""Hold out the planted-label audit's pool from the prepared training split (molinfluence.audit.split_pool).

    audit_split.py --train CSV --args AUDIT_JSON --out-train CSV --out-pool CSV

``--args`` holds the config's ``audit`` keys that shape the pool (pool_fraction, pool_size, corrupted, mode,
offset_sd, noise_sd, seed). Writes the audit's training split (the training split without the pool) and the pool with its planted ``label``,
``true_label`` and ``corrupted`` columns.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import json_arg, run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True)
    p.add_argument("--args", type=json_arg, required=True, help="the config's audit section as JSON")
    p.add_argument("--out-train", required=True)
    p.add_argument("--out-pool", required=True)
    args = p.parse_args()

    import pandas as pd

    from molinfluence.audit import split_pool
    from molinfluence.files import write_csv

    a = args.args
    rest, pool = split_pool(pd.read_csv(args.train), pool_fraction=a.get("pool_fraction"),
                            pool_size=a.get("pool_size"), corrupted=a["corrupted"], mode=a["mode"], seed=a["seed"],
                            offset_sd=a["offset_sd"], noise_sd=a["noise_sd"], source=args.train)
    write_csv(args.out_train, rest)
    write_csv(args.out_pool, pool)
    print(f"audit pool: {len(pool)} of {len(rest) + len(pool)} training rows, {int(pool['corrupted'].sum())} corrupted "
          f"by {a['mode']} -> {args.out_pool}; {len(rest)} rows left to train on -> {args.out_train}")


if __name__ == "__main__":
    run(main)
