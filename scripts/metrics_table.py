"""Collect every run's test metrics into the per-run table, the summary table and its Markdown rendering.

    metrics_table.py --results DIR --base BASE_METRICS.json RUN_METRICS.json... \
        --out-table CSV --out-markdown MD --out-per-run CSV

Run directories are ``<results>/finetune/{init}/{strategy}/k{k}/seed{seed}/metrics.json``; ``k`` is the number of
external samples selected (the whole pool for ``all`` and ``weighted``, 0 for the no-data control ``none``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True)
    p.add_argument("--base", required=True)
    p.add_argument("runs", nargs="*")
    p.add_argument("--out-table", required=True)
    p.add_argument("--out-markdown", required=True)
    p.add_argument("--out-per-run", required=True)
    args = p.parse_args()

    import pandas as pd

    from molinfluence.files import atomic_path, read_json, write_csv
    from molinfluence.metrics import markdown_table, summarize_runs

    keep = ("mse", "rmse", "mae", "r2", "n_added", "best_epoch", "epochs_run")
    base = read_json(args.base)
    rows = [{"init": "base", "strategy": "none", "k": 0, "seed": base["seed"], **{c: base.get(c, 0) for c in keep}}]
    root = Path(args.results) / "finetune"
    for path in args.runs:
        init, strategy, k_dir, seed_dir = Path(path).parent.relative_to(root).parts
        m = read_json(path)
        k = int(m["n_selected"]) if k_dir == "kall" else int(k_dir[1:])
        rows.append({"init": init, "strategy": strategy, "k": k, "seed": int(seed_dir[4:]), **{c: m[c] for c in keep}})
    per_run = pd.DataFrame(rows).sort_values(["init", "strategy", "k", "seed"], kind="stable", ignore_index=True)
    summary = summarize_runs(per_run)
    write_csv(args.out_per_run, per_run)
    write_csv(args.out_table, summary)
    with atomic_path(args.out_markdown) as tmp:
        tmp.write_text(markdown_table(summary))
    print(markdown_table(summary))


if __name__ == "__main__":
    run(main)
