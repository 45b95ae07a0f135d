"""Regressor: self-describing save/load, seeded heads, and where each fine-tuning init starts from."""

from __future__ import annotations

import json

import pytest
import torch

from molinfluence.molformer import ModelLoadError, load_encoder
from molinfluence.regressor import RegressorSpec, encode_frame, initial_model, load_regressor, new_regressor, save_regressor


def _predict(model, tokenizer, frame):
    ids, mask, _ = encode_frame(tokenizer, frame, 202)
    with torch.no_grad():
        return model.eval()(ids, mask)


def test_save_load_round_trip_gives_identical_predictions(tmp_path, tiny_encoder_dir, molecules):
    model, tok = new_regressor(tiny_encoder_dir, RegressorSpec(pooling="mean"), seed=3)
    with torch.no_grad():
        model.head.bias.fill_(1.25)
    save_regressor(model, tok, tmp_path / "reg")
    loaded, tok2 = load_regressor(tmp_path / "reg")
    frame = molecules.head(20)
    assert torch.equal(_predict(model, tok, frame), _predict(loaded, tok2, frame))
    assert loaded.spec.pooling == "mean"
    assert tok2.get_vocab() == tok.get_vocab()
    saved = json.loads((tmp_path / "reg" / "regressor.json").read_text())
    assert saved["pooling"] == "mean" and saved["format_version"] == 1
    assert sorted(p.name for p in (tmp_path / "reg").iterdir()) >= ["config.json", "model.safetensors", "regressor.json"]


def test_cls_and_mean_pooling_differ(tiny_encoder_dir, molecules):
    cls_model, tok = new_regressor(tiny_encoder_dir, RegressorSpec(pooling="cls"), seed=0)
    mean_model, _ = new_regressor(tiny_encoder_dir, RegressorSpec(pooling="mean"), seed=0)
    assert not torch.allclose(_predict(cls_model, tok, molecules.head(8)), _predict(mean_model, tok, molecules.head(8)))


def test_head_is_seeded_and_independent_of_global_rng(tiny_encoder_dir):
    torch.manual_seed(123)
    a, _ = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=5)
    torch.manual_seed(999)
    b, _ = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=5)
    c, _ = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=6)
    assert torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, c.head.weight)


def test_continue_starts_from_base_weights_and_fresh_does_not(tmp_path, tiny_encoder_dir):
    base, tok = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=0)
    with torch.no_grad():  # stand-in for training: move every weight away from the pretrained state
        for p in base.parameters():
            p.add_(0.01)
    save_regressor(base, tok, tmp_path / "base")

    cont, _ = initial_model("continue", tmp_path / "base", RegressorSpec(), seed=7)
    for (name, p), (_, q) in zip(base.state_dict().items(), cont.state_dict().items()):
        assert torch.equal(p, q), name

    fresh, _ = initial_model("fresh", tiny_encoder_dir, RegressorSpec(), seed=7)
    pretrained = load_encoder(str(tiny_encoder_dir))
    assert not torch.equal(fresh.head.weight, base.head.weight)
    for name, p in pretrained.state_dict().items():
        assert torch.equal(fresh.molformer.state_dict()[name], p), name
    with pytest.raises(ValueError, match="finetune.inits"):
        initial_model("warm", tiny_encoder_dir, RegressorSpec(), seed=0)


def test_load_errors_are_one_line_explanations(tmp_path, tiny_encoder_dir):
    with pytest.raises(ModelLoadError, match="no regressor.json"):
        load_regressor(tmp_path)
    model, tok = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=0)
    save_regressor(model, tok, tmp_path / "reg")
    cfg = json.loads((tmp_path / "reg" / "config.json").read_text())
    cfg["intermediate_size"] = 40  # weights no longer match the config
    (tmp_path / "reg" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="does not match its config.json"):
        load_regressor(tmp_path / "reg")


def test_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="model.pooling"):
        RegressorSpec(pooling="max")
    with pytest.raises(ValueError, match="model.max_length"):
        RegressorSpec(max_length=2)


def test_influence_rows_refuse_over_long_molecules_naming_file_and_rows(tmp_path, tiny_encoder_dir, molecules):
    """The influence and validation stages tokenise a split as training does: one function truncates or refuses."""
    from molinfluence.influence import Batch
    from molinfluence.tokenizer import load_tokenizer

    tok = load_tokenizer(str(tiny_encoder_dir))
    frame = molecules.head(6).reset_index(drop=True)
    long = max(range(len(frame)), key=lambda i: len(frame["smiles"][i]))
    path = tmp_path / "external.csv"
    frame.to_csv(path, index=False)
    limit = len(tok(frame["smiles"][long])["input_ids"]) - 1
    with pytest.raises(ValueError, match=rf"external\.csv: .*model\.max_length={limit} .*rows .*{long + 1}"):
        Batch.encode(tok, path, limit, truncation=False, name="external")
    rows = Batch.encode(tok, path, limit, truncation=True, name="external")
    assert rows.input_ids.shape == (6, limit) and rows.name == "external"
    assert torch.equal(rows.labels, torch.tensor(frame["label"].to_numpy(dtype="float32")))
