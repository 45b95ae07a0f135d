"""The planted-label audit's verdict: table, report and figure (molinfluence.audit.summarise / markdown).

    audit_summary.py --pool CSV --train CSV --base-metrics JSON --rankings NAME=CSV... --runs CSV...
                     --k K... --seeds S... --alpha A --mode M --out-table CSV --out-markdown MD --out-figure PNG
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
    p.add_argument("--train", required=True, help="the audit's training split (its row count is reported)")
    p.add_argument("--base-metrics", required=True)
    p.add_argument("--rankings", nargs="+", required=True, help="NAME=CSV, in report order")
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--k", type=int, nargs="+", required=True)
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--alpha", type=float, required=True)
    p.add_argument("--mode", required=True, help="audit.mode: how the pool was corrupted")
    p.add_argument("--out-table", required=True)
    p.add_argument("--out-markdown", required=True)
    p.add_argument("--out-figure", required=True)
    args = p.parse_args()

    import pandas as pd

    from molinfluence.audit import markdown, summarise
    from molinfluence.files import atomic_path, read_json, write_csv
    from molinfluence.plots import plot_audit

    pool = pd.read_csv(args.pool)
    rankings = {}
    for item in args.rankings:
        name, _, path = item.partition("=")
        rankings[name] = pd.read_csv(path)
    runs = pd.concat([pd.read_csv(path) for path in args.runs], ignore_index=True)
    ks = sorted(args.k)
    table = summarise(pool, rankings, runs, ks, args.alpha, mode=args.mode)
    write_csv(args.out_table, table)
    text = markdown(table, base=read_json(args.base_metrics), pool=pool, n_train=len(pd.read_csv(args.train)),
                    seeds=args.seeds, alpha=args.alpha)
    with atomic_path(args.out_markdown) as tmp:
        tmp.write_text(text, encoding="utf-8")
    plot_audit(table, args.out_figure, f"planted-label audit: {len(pool)}-row pool, {table['mode'].iloc[0]}")
    print(text)


if __name__ == "__main__":
    run(main)
