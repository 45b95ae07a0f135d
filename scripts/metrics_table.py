"""Collect every run's test metrics into the per-run table, the summary table and its Markdown rendering.

    metrics_table.py --base BASE_METRICS.json RUN_METRICS.json... --out-table CSV --out-markdown MD --out-per-run CSV

Each run's metrics.json records its condition (init, strategy, k, seed; see molinfluence.grid.Condition); ``k`` in
the tables is the number of external samples selected (the whole pool for ``all`` and ``weighted``, 0 for the
no-data control ``none``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True)
    p.add_argument("runs", nargs="*")
    p.add_argument("--out-table", required=True)
    p.add_argument("--out-markdown", required=True)
    p.add_argument("--out-per-run", required=True)
    args = p.parse_args()

    from molinfluence.files import atomic_path, read_json, write_csv
    from molinfluence.metrics import markdown_table, per_run_table, summarize_runs

    per_run = per_run_table(read_json(args.base), {path: read_json(path) for path in args.runs})
    summary = summarize_runs(per_run)
    write_csv(args.out_per_run, per_run)
    write_csv(args.out_table, summary)
    with atomic_path(args.out_markdown) as tmp:
        tmp.write_text(markdown_table(summary))
    print(markdown_table(summary))


if __name__ == "__main__":
    run(main)
