"""Data stage: ``prepare_data.py --args DATA_JSON --outdir DIR``.

Loads the dataset (hub id, local file or ``pkg:`` resource) and the external pool, validates and canonicalises every
SMILES, splits train/validation/test (seeded), reports overlaps between the external pool and each split and drops the
leaking ones, then writes train/validation/test/external.csv and data_report.json (each atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import json_arg, run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--args", type=json_arg, required=True, help="the config's data section as JSON")
    p.add_argument("--outdir", required=True)
    args = p.parse_args()

    from molinfluence.data import DataConfig, prepare_data, write_prepared

    prepared = prepare_data(DataConfig.from_section(args.args))
    write_prepared(prepared, args.outdir)
    print(json.dumps({"sizes": prepared.report["sizes"], "overlap": prepared.report["overlap"]}, indent=2, default=str))


if __name__ == "__main__":
    run(main)
