"""The starting encoder of every fine-tuning run, and where it comes from.

Two sources (config ``model.source``): the published MoLFormer-XL with its tokenizer (``pretrained``: loaded once, so
that later jobs, possibly on cluster nodes without network, read only local files), or a small randomly initialised
MoLFormer whose SMILES tokenizer is built from the data itself (``random``: the offline demo and the tests). Either
way the result is saved as one local directory holding the encoder and its tokenizer (:func:`save_encoder`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from molinfluence.files import atomic_path
from molinfluence.molformer import MolformerConfig, MolformerModel, load_encoder
from molinfluence.tokenizer import (
    build_smiles_tokenizer,
    count_unknown,
    load_tokenizer,
    published_vocab_tokenizer,
    save_tokenizer,
)

__all__ = ["random_encoder", "starting_encoder", "save_encoder"]


def random_encoder(smiles: Iterable[str], *, seed: int, max_length: int | None = None, vocabulary: str = "data",
                   **sizes: Any):
    """(encoder, tokenizer, description): a MoLFormer with the given ``sizes`` (``hidden_size``,
    ``num_hidden_layers``, ...), weights drawn under ``torch.manual_seed(seed)``, and a tokenizer whose vocabulary is
    every SMILES token of ``smiles`` (``vocabulary="data"``) or MoLFormer's published 2,362-token vocabulary
    (``"published"``: the model then does not depend on ``smiles`` at all; their tokens outside it map to
    ``<unk>``, as with the real model). Same arguments, same weights. ``max_length`` bounds the position table (the
    model's token limit); None keeps the config default."""
    import torch

    smiles = list(smiles)
    if vocabulary == "published":
        tokenizer = published_vocab_tokenizer()
    elif vocabulary == "data":
        tokenizer = build_smiles_tokenizer(smiles)
        unknown = count_unknown(tokenizer, smiles)
        if unknown:  # the vocabulary is built from these very molecules: a tokenizer bug, not bad data
            raise RuntimeError(f"{unknown} molecules contain tokens missing from the vocabulary built from them")
    else:
        raise ValueError(f"random_encoder: vocabulary must be 'data' or 'published', not {vocabulary!r}")
    extra = {} if max_length is None else {"max_position_embeddings": int(max_length)}
    config = MolformerConfig(vocab_size=len(tokenizer), deterministic_eval=True, **extra, **sizes)
    torch.manual_seed(int(seed))
    encoder = MolformerModel(config)
    description = (
        f"random MoLFormer {sizes} (seed {seed}), tokenizer of {len(tokenizer)} tokens "
        + ("(MoLFormer's published vocabulary)" if vocabulary == "published" else f"from {len(smiles)} molecules")
    )
    return encoder, tokenizer, description


def starting_encoder(model: Mapping[str, Any], smiles: Iterable[str] = ()):
    """(encoder, tokenizer, description) for the config's ``model`` section (validated, defaults filled).

    ``source: pretrained`` loads ``model.name`` (hub id or local directory, at ``model.revision``); ``source: random``
    builds :func:`random_encoder` from ``model.random`` and the data's ``smiles`` (every split: a token seen only in
    the external pool must still have an embedding).
    """
    if model["source"] == "pretrained":
        name = model["name"]
        encoder = load_encoder(name, deterministic_eval=True, revision=model.get("revision"))
        return encoder, load_tokenizer(name), f"pretrained {name}"
    sizes = dict(model["random"])
    seed = sizes.pop("seed")
    return random_encoder(smiles, seed=seed, max_length=model["max_length"], **sizes)


def save_encoder(encoder, tokenizer, out: str | Path) -> Path:
    """Write the encoder (safetensors) and its tokenizer into the directory ``out``, atomically as a whole."""
    with atomic_path(out, directory=True) as tmp:
        encoder.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
    return Path(out)
