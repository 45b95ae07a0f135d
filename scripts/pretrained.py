"""Materialise the starting encoder and tokenizer as a local directory.

    pretrained.py --args MODEL_JSON --data DATA_DIR --out DIR

``source: pretrained`` loads ``model.name`` (a hub id or a local directory) with the native MoLFormer and the
published tokenizer, and saves both, so later jobs (possibly on cluster nodes without network) read only local files.
``source: random`` builds a SMILES tokenizer from every molecule in the prepared data and a small MoLFormer with the
sizes in ``model.random``, seeded (the offline demo).
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
    p.add_argument("--data", required=True, help="prepared data directory (tokenizer vocabulary for source: random)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    model_cfg = args.args

    import pandas as pd
    import torch

    from molinfluence.files import atomic_path
    from molinfluence.molformer import MolformerConfig, MolformerModel, load_encoder
    from molinfluence.tokenizer import build_smiles_tokenizer, count_unknown, load_tokenizer, save_tokenizer

    if model_cfg["source"] == "pretrained":
        name = model_cfg["name"]
        encoder = load_encoder(name, deterministic_eval=True, revision=model_cfg.get("revision"))
        tokenizer = load_tokenizer(name)
        origin = f"pretrained {name}"
    else:
        sizes = dict(model_cfg["random"])
        seed = int(sizes.pop("seed"))
        smiles = []
        for split in ("train", "validation", "test", "external"):
            smiles.extend(pd.read_csv(Path(args.data) / f"{split}.csv")["smiles"].tolist())
        tokenizer = build_smiles_tokenizer(smiles)
        config = MolformerConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=model_cfg["max_length"],
            deterministic_eval=True,
            **sizes,
        )
        torch.manual_seed(seed)
        encoder = MolformerModel(config)
        origin = f"random MoLFormer {sizes} (seed {seed}), tokenizer of {len(tokenizer)} tokens from {len(smiles)} molecules"
        unknown = count_unknown(tokenizer, smiles)
        if unknown:
            raise RuntimeError(f"{unknown} data molecules contain tokens missing from the vocabulary built from them")
    n_params = sum(p.numel() for p in encoder.parameters())
    with atomic_path(args.out, directory=True) as tmp:
        encoder.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
    print(f"{origin}: {n_params:,} parameters -> {args.out}")


if __name__ == "__main__":
    run(main)
