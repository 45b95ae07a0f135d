"""Tests for molinfluence.encoder: the starting encoder is reproducible, covers the data's vocabulary, follows the
config, and the saved directory is what later stages load."""

from __future__ import annotations

import pytest
import torch

from molinfluence.encoder import random_encoder, save_encoder, starting_encoder
from molinfluence.molformer import load_encoder
from molinfluence.tokenizer import encode_smiles, load_tokenizer, split_smiles

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


def test_vocabulary_is_exactly_the_data_tokens(smiles) -> None:
    _, tokenizer, description = random_encoder(smiles, seed=0, **SIZES)
    tokens = {t for s in smiles for t in split_smiles(s)}
    vocab = set(tokenizer.get_vocab())
    assert tokens <= vocab and len(vocab - tokens) == len(tokenizer.all_special_tokens)
    assert f"tokenizer of {len(tokenizer)} tokens from {len(smiles)} molecules" in description


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


def test_published_vocabulary_makes_the_base_encoder_independent_of_the_pool(molecules) -> None:
    train = molecules["smiles"].head(40).tolist()
    pool_a, pool_b = molecules["smiles"].iloc[40:80].tolist(), molecules["smiles"].iloc[80:200].tolist()
    a, tok_a, description = random_encoder(train + pool_a, seed=2, vocabulary="published", **SIZES)
    b, tok_b, _ = random_encoder(train + pool_b, seed=2, vocabulary="published", **SIZES)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert tok_a.get_vocab() == tok_b.get_vocab() and len(tok_a) == 2362
    assert "published vocabulary" in description
    # with the data vocabulary the two pools give different embedding tables: the dependence this option removes
    c, _, _ = random_encoder(train + pool_a, seed=2, **SIZES)
    d, _, _ = random_encoder(train + pool_b, seed=2, **SIZES)
    key = next(k for k in c.state_dict() if "embed" in k and "word" in k)
    assert c.state_dict()[key].shape != d.state_dict()[key].shape or not torch.equal(c.state_dict()[key],
                                                                                     d.state_dict()[key])
    with pytest.raises(ValueError, match="vocabulary"):
        random_encoder(train, seed=2, vocabulary="mine", **SIZES)
