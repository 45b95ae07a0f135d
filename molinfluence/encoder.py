"""The starting encoder of every fine-tuning run, and where it comes from.

Two sources (config ``model.source``): the published MoLFormer-XL with its tokenizer (``pretrained``: loaded once, so
that later jobs, possibly on cluster nodes without network, read only local files), or a small randomly initialised
MoLFormer whose tokenizer has MoLFormer's published 2,362-token vocabulary, shipped with the package (``random``: the
offline demo and the tests; the same model whatever the data and the external pool). Either
way the result is saved as one local directory holding the encoder and its tokenizer (:func:`save_encoder`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from molinfluence.files import atomic_path
from molinfluence.molformer import MolformerConfig, MolformerModel, load_encoder
from molinfluence.tokenizer import count_unknown, load_tokenizer, published_vocab_tokenizer, save_tokenizer

__all__ = ["random_encoder", "starting_encoder", "save_encoder"]


def random_encoder(smiles: Iterable[str] = (), *, seed: int, max_length: int | None = None, **sizes: Any):
    """(encoder, tokenizer, description): a MoLFormer with the given ``sizes`` (``hidden_size``,
    ``num_hidden_layers``, ...), weights drawn under ``torch.manual_seed(seed)``, and the published MoLFormer vocabulary
    (:func:`~molinfluence.tokenizer.published_vocab_tokenizer`, 2,362 tokens, the real model's embedding size).
    Same arguments, same weights and tokenizer: ``smiles`` only feeds the description (how many of their tokens the
    vocabulary lacks; those read as ``<unk>``). ``max_length`` bounds the position table; None keeps the default."""
    import torch

    smiles = list(smiles)
    tokenizer = published_vocab_tokenizer()
    unknown = count_unknown(tokenizer, smiles)
    extra = {} if max_length is None else {"max_position_embeddings": int(max_length)}
    config = MolformerConfig(vocab_size=len(tokenizer), deterministic_eval=True, **extra, **sizes)
    torch.manual_seed(int(seed))
    encoder = MolformerModel(config)
    description = f"random MoLFormer {sizes} (seed {seed}), published vocabulary of {len(tokenizer)} tokens"
    if smiles:
        description += f" ({unknown} tokens of the {len(smiles)} molecules read as <unk>)"
    return encoder, tokenizer, description


def starting_encoder(model: Mapping[str, Any], smiles: Iterable[str] = ()):
    """(encoder, tokenizer, description) for the config's ``model`` section (validated, defaults filled).

    ``source: pretrained`` loads ``model.name`` (hub id or local directory, at ``model.revision``); ``source: random``
    builds :func:`random_encoder` from ``model.random`` (``smiles`` only feed its description: the model and
    tokenizer do not depend on them).
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
