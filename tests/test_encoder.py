"""Tests for molinfluence.encoder: the starting encoder is reproducible, follows the
config (the published vocabulary, whatever the pool), and the saved directory is what later stages load."""

from __future__ import annotations

import pytest
import torch

from molinfluence.encoder import random_encoder, save_encoder, starting_encoder
from molinfluence.molformer import load_encoder
from molinfluence.tokenizer import (
    PUBLISHED_VOCAB,
    PUBLISHED_VOCAB_SIZE,
    encode_smiles,
    load_tokenizer,
    read_vocab,
    split_smiles,
)

SIZES = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_random_features=8)


@pytest.fixture(scope="module")
def smiles(molecules) -> list[str]:
    return molecules["smiles"].head(60).tolist()


def test_same_seed_same_weights_other_seed_other_weights(smiles) -> None:
    a, _, _ = random_encoder(smiles, seed=3, **SIZES)
    b, _, _ = random_encoder(smiles, seed=3, **SIZES)
    c, _, _ = random_encoder(smiles, seed=4, **SIZES)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


def test_random_model_uses_the_published_vocabulary(smiles) -> None:
    _, tokenizer, description = random_encoder(smiles, seed=0, **SIZES)
    assert tokenizer.get_vocab() == read_vocab(PUBLISHED_VOCAB) and len(tokenizer) == PUBLISHED_VOCAB_SIZE
    assert f"published vocabulary of {PUBLISHED_VOCAB_SIZE} tokens" in description


def test_base_model_is_the_same_whatever_the_external_pool(molecules) -> None:
    """Issue 16: the pretrained stage reads every split, the external pool included; two pools (other molecules,
    other chemistry) with the same data and seeds must give the same encoder weights and tokenizer."""
    model = {"source": "random", "max_length": 128, "random": {**SIZES, "seed": 0}}
    train = molecules["smiles"].head(200).tolist()
    pool_a = molecules["smiles"].iloc[200:300].tolist()
    pool_b = molecules["smiles"].iloc[300:642].tolist() + ["[Se]1C=CC=C1", "C[Si](C)(C)Cl"]
    assert {t for s in pool_b for t in split_smiles(s)} - {t for s in train + pool_a for t in split_smiles(s)}
    enc_a, tok_a, _ = starting_encoder(model, train + pool_a)
    enc_b, tok_b, _ = starting_encoder(model, train + pool_b)
    sa, sb = enc_a.state_dict(), enc_b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert tok_a.get_vocab() == tok_b.get_vocab()
    assert torch.equal(encode_smiles(tok_a, train).input_ids, encode_smiles(tok_b, train).input_ids)


def test_random_source_follows_the_model_section(smiles) -> None:
    model = {"source": "random", "max_length": 64, "random": {**SIZES, "seed": 1}}
    encoder, tokenizer, _ = starting_encoder(model, smiles)
    assert encoder.config.max_position_embeddings == 64 and encoder.config.hidden_size == 16
    assert encoder.config.vocab_size == len(tokenizer)
    reference, _, _ = random_encoder(smiles, seed=1, max_length=64, **SIZES)
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in reference.state_dict().items())


def test_saved_directory_loads_to_the_same_function(tmp_path, smiles) -> None:
    encoder, tokenizer, _ = random_encoder(smiles, seed=0, **SIZES)
    out = save_encoder(encoder, tokenizer, tmp_path / "pretrained")
    again, tok_again = load_encoder(str(out), local_files_only=True), load_tokenizer(str(out))
    batch = encode_smiles(tokenizer, smiles[:8])
    assert torch.equal(batch.input_ids, encode_smiles(tok_again, smiles[:8]).input_ids)
    encoder.eval()
    with torch.no_grad():
        want = encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        got = again(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    assert torch.equal(want, got)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pretrained"], "no temporary directory left behind"
