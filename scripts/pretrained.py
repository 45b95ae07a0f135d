"""Materialise the starting encoder and tokenizer as a local directory.

    pretrained.py --args MODEL_JSON --data DATA_DIR --out DIR

``source: pretrained`` loads ``model.name`` (a hub id or a local directory) with the native MoLFormer and the
published tokenizer, and saves both, so later jobs (possibly on cluster nodes without network) read only local files.
``source: random`` builds a small MoLFormer with the sizes in ``model.random``, seeded, on MoLFormer's published
vocabulary (the offline demo); the prepared data only feed the log line (how many tokens read as ``<unk>``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molinfluence.cli import json_arg, run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--args", type=json_arg, required=True, help="the config's model section as JSON")
    p.add_argument("--data", required=True, help="prepared data directory (source: random counts its tokens missing from the vocabulary)")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    from molinfluence.encoder import save_encoder, starting_encoder

    smiles = []
    if args.args["source"] == "random":
        import pandas as pd

        for split in ("train", "validation", "test", "external"):
            smiles.extend(pd.read_csv(Path(args.data) / f"{split}.csv")["smiles"].tolist())
    encoder, tokenizer, origin = starting_encoder(args.args, smiles)
    save_encoder(encoder, tokenizer, args.out)
    print(f"{origin}: {sum(p.numel() for p in encoder.parameters()):,} parameters -> {args.out}")


if __name__ == "__main__":
    run(main)
