"""Training: validation-only early stopping with best weights restored, exact resume, determinism, clear failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from molinfluence.regressor import RegressorSpec, new_regressor
from molinfluence import training
from molinfluence.training import (
    FeatureDraws,
    TrainConfig,
    TrainingDivergence,
    split_mse,
    evaluate,
    length_batches,
    train_regressor,
)
from molinfluence.batch import Batch
from molinfluence.tokenizer import encode_smiles


@pytest.fixture(scope="module")
def splits(molecules):
    data = molecules.sample(n=120, random_state=0).reset_index(drop=True)
    return data.iloc[:80].reset_index(drop=True), data.iloc[80:100].reset_index(drop=True), data.iloc[100:].reset_index(drop=True)


def _train(encoder_dir, train, val, *, log=None, on_epoch=None, **overrides):
    cfg = TrainConfig(**{"lr": 3e-3, "epochs": 4, "batch_size": 16, "patience": 2, "seed": 1, **overrides})
    model, tok = new_regressor(encoder_dir, RegressorSpec(), seed=cfg.seed)
    kwargs = {"progress": False, "log": log or (lambda _: None), "on_epoch": on_epoch}
    result = train_regressor(model, tok, train, val, cfg, **{k: v for k, v in kwargs.items()})
    return model, tok, cfg, result


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_best_validation_weights_are_restored(tiny_encoder_dir, splits):
    train, val, _ = splits
    # A large learning rate makes the validation loss jump around, so the last epoch is rarely the best one.
    model, tok, cfg, result = _train(tiny_encoder_dir, train, val, lr=3e-2, epochs=6, patience=6)
    hist = result.history
    assert result.best_epoch == int(hist.loc[hist.val_loss.idxmin(), "epoch"])
    restored = split_mse(model, Batch.encode(tok, val, 202, name="validation"), 64)
    assert restored == pytest.approx(hist.val_loss.min(), rel=1e-6)
    assert hist.is_best.sum() >= 1 and hist.loc[hist.is_best, "epoch"].max() == result.best_epoch


def test_early_stopping_after_patience_epochs_without_improvement(tiny_encoder_dir, splits):
    train, val, _ = splits
    # With this lr the validation loss bottoms out early (epoch 2 of 10 for this seed), then rises.
    _, _, _, result = _train(tiny_encoder_dir, train, val, lr=3e-2, epochs=10, patience=2)
    hist = result.history
    assert result.stopped_early
    assert len(hist) == result.best_epoch + 2 < 10
    assert not hist.is_best.iloc[-2:].any()


def test_same_seed_gives_bit_identical_weights(tiny_encoder_dir, splits):
    train, val, _ = splits
    a, *_ = _train(tiny_encoder_dir, train, val, epochs=2)
    b, *_ = _train(tiny_encoder_dir, train, val, epochs=2)
    c, *_ = _train(tiny_encoder_dir, train, val, epochs=2, seed=2)
    for name, p in a.state_dict().items():
        assert torch.equal(p, b.state_dict()[name]), name
    assert any(not torch.equal(p, c.state_dict()[n]) for n, p in a.state_dict().items())


def test_epoch_callback_sees_the_trajectory_without_changing_it(tiny_encoder_dir, splits):
    """TracIn's checkpoints come from the run itself: on_epoch sees the weights at the start of every epoch (the first
    = the start weights, each later one = what the epoch before trained) and the run ends bit-identical to one without
    the callback."""
    train, val, _ = splits
    seen = []
    a, *_ = _train(tiny_encoder_dir, train, val, epochs=3, patience=3, lr=3e-2,
                   on_epoch=lambda epoch, model: seen.append((epoch, _state(model))))
    b, *_ = _train(tiny_encoder_dir, train, val, epochs=3, patience=3, lr=3e-2)
    assert [e for e, _ in seen] == [1, 2, 3]
    start, _ = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=1)
    assert all(torch.equal(p, seen[0][1][n]) for n, p in start.state_dict().items())
    assert any(not torch.equal(seen[0][1][n], seen[1][1][n]) for n in seen[0][1])  # an epoch trained in between
    assert all(torch.equal(p, b.state_dict()[n]) for n, p in a.state_dict().items())


def test_killed_run_resumes_to_the_same_weights(tmp_path, tiny_encoder_dir, splits):
    train, val, _ = splits
    cfg = TrainConfig(lr=3e-3, epochs=4, batch_size=16, patience=4, seed=1)
    model, tok = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=1)
    train_regressor(model, tok, train, val, cfg, progress=False, log=lambda _: None)
    reference = _state(model)

    class Killed(Exception):
        pass

    def die_in_epoch_3(msg):
        if msg.startswith("epoch 3:"):
            raise Killed  # after epoch 3's validation, before its checkpoint: the checkpoint holds epoch 2

    ckpt = tmp_path / "resume"
    model, tok = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=1)
    with pytest.raises(Killed):
        train_regressor(model, tok, train, val, cfg, checkpoint_dir=ckpt, progress=False, log=die_in_epoch_3)
    assert (ckpt / "last.pt").is_file()

    messages = []
    model, tok = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=1)
    train_regressor(model, tok, train, val, cfg, checkpoint_dir=ckpt, progress=False, log=messages.append)
    assert any("resuming" in m and "after epoch 2" in m for m in messages)
    for name, p in reference.items():
        assert torch.equal(p, model.state_dict()[name]), name


def test_checkpoint_of_another_run_is_ignored(tmp_path, tiny_encoder_dir, splits):
    train, val, _ = splits
    ckpt = tmp_path / "resume"
    model, tok = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=1)
    train_regressor(model, tok, train, val, TrainConfig(epochs=1, seed=1), checkpoint_dir=ckpt, progress=False, log=lambda _: None)
    messages = []
    model, tok = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=1)
    train_regressor(model, tok, train, val, TrainConfig(epochs=1, seed=1, lr=1e-4), checkpoint_dir=ckpt, progress=False, log=messages.append)
    assert any("belongs to a different run" in m for m in messages)


def test_unit_weights_equal_no_weights(tiny_encoder_dir, splits):
    train, val, _ = splits
    cfg = TrainConfig(lr=3e-3, epochs=1, seed=1)
    a, tok = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=1)
    train_regressor(a, tok, train, val, cfg, progress=False, log=lambda _: None)
    b, tok = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=1)
    train_regressor(b, tok, train, val, cfg, weights=np.ones(len(train)), progress=False, log=lambda _: None)
    for name, p in a.state_dict().items():
        assert torch.equal(p, b.state_dict()[name]), name
    with pytest.raises(ValueError, match="non-negative"):
        train_regressor(b, tok, train, val, cfg, weights=-np.ones(len(train)), progress=False)


def test_non_finite_loss_names_epoch_and_batch(tiny_encoder_dir, splits):
    train, val, _ = splits
    bad = train.copy()
    bad.loc[:, "label"] = 1e30  # squared error overflows float32
    model, tok = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=1)
    with pytest.raises(TrainingDivergence, match=r"epoch 1, batch 1"):
        train_regressor(model, tok, bad, val, TrainConfig(epochs=1), progress=False, log=lambda _: None)


def test_evaluate_matches_one_molecule_at_a_time_and_metrics(tiny_encoder_dir, splits):
    """evaluate's length-sorted, padded batches against the reference: each molecule alone, without padding."""
    _, _, test = splits
    model, tok = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=1)
    cfg = TrainConfig(eval_batch_size=7)
    metrics, preds = evaluate(model, tok, test, cfg, "cpu")
    enc = encode_smiles(tok, test["smiles"].tolist())
    model.eval()
    with torch.no_grad():
        direct = np.array([float(model(enc.input_ids[i : i + 1, :n], enc.attention_mask[i : i + 1, :n]))
                           for i, n in enumerate(enc.lengths)])
    np.testing.assert_allclose(preds["prediction"].to_numpy(), direct, rtol=1e-6)
    assert metrics["mse"] == pytest.approx(float(np.mean((direct - test["label"].to_numpy()) ** 2)), rel=1e-6)
    assert list(preds.columns) == ["smiles", "truth", "prediction"]


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="train.lr"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match=r"unknown key 'learning_rate' in `train`"):
        TrainConfig.from_dict({"learning_rate": 1e-3})


def test_length_batches_cover_every_row_once_are_seeded_and_pad_little(molecules):
    lengths = [len(s) for s in molecules["smiles"]]  # any positive lengths
    gen = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    batches = length_batches(lengths, 16, gen(3), chunk_batches=5)
    rows = torch.cat(batches).tolist()
    assert sorted(rows) == list(range(len(lengths)))
    assert sum(b.numel() != 16 for b in batches) <= 1
    assert all(torch.equal(a, b) for a, b in zip(batches, length_batches(lengths, 16, gen(3), chunk_batches=5)))
    other = length_batches(lengths, 16, gen(4), chunk_batches=5)
    assert any(not torch.equal(a, b) for a, b in zip(batches, other))
    # Padding to each batch's longest wastes far less than padding to the split's longest.
    padded = sum(max(lengths[i] for i in b.tolist()) * b.numel() for b in batches)
    assert padded - sum(lengths) < 0.25 * (max(lengths) * len(lengths) - sum(lengths))


def test_padding_to_the_batch_longest_does_not_change_predictions(tiny_encoder_dir, splits):
    """The training loop pads each batch to its own longest molecule; in eval mode a molecule's prediction must be
    the same as in a batch padded to the split's longest (the old behaviour) or alone."""
    train, _, _ = splits
    model, tok = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=1)
    model.eval()
    split = Batch.encode(tok, train, 202, name="train")
    lengths = split.token_counts()
    idx = torch.tensor([int(np.argmin(lengths)), 3, 5])
    own = max(lengths[i] for i in idx.tolist())
    with torch.no_grad():
        tight = model(*split.gather(idx, own))
        wide = model(*split.gather(idx, split.input_ids.shape[1]))
        alone = torch.stack([model(*split.gather(idx[j : j + 1], lengths[int(idx[j])])) for j in range(3)]).squeeze(1)
    assert own < split.input_ids.shape[1]
    torch.testing.assert_close(tight, wide, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tight, alone, atol=1e-5, rtol=1e-5)


def test_feature_draws_are_fresh_per_step_and_reproducible(tiny_encoder_dir):
    model, _ = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=1)
    draws = FeatureDraws(model, seed=1, epoch=2, device=torch.device("cpu"))
    first, second = draws.next(), draws.next()
    assert first.shape == (2, 8, 8) and not torch.allclose(first, second)
    again = FeatureDraws(model, seed=1, epoch=2, device=torch.device("cpu"))
    assert torch.equal(again.next(), first) and torch.equal(again.next(), second)
    assert not torch.equal(FeatureDraws(model, seed=1, epoch=3, device=torch.device("cpu")).next(), first)


def test_bf16_trains_to_finite_metrics_close_to_fp32(tiny_encoder_dir, splits):
    train, val, test = splits
    results = {}
    for precision in ("fp32", "bf16"):
        model, tok, cfg, result = _train(tiny_encoder_dir, train, val, epochs=3, precision=precision)
        metrics, _ = evaluate(model, tok, test, cfg, "cpu")
        assert np.isfinite(result.history.train_loss).all() and np.isfinite(metrics["rmse"])
        results[precision] = (result.history, metrics)
    (h32, m32), (h16, m16) = results["fp32"], results["bf16"]
    np.testing.assert_allclose(h16.train_loss, h32.train_loss, rtol=0.05)
    assert m16["rmse"] == pytest.approx(m32["rmse"], rel=0.05)
    with pytest.raises(ValueError, match="train.precision"):
        TrainConfig(precision="fp16")


def test_eval_batch_size_auto_depends_on_the_device():
    assert TrainConfig().eval_batch_size_for("cpu") == 64
    assert TrainConfig().eval_batch_size_for("cuda") == 256
    assert TrainConfig(eval_batch_size=7).eval_batch_size_for("cuda") == 7
    with pytest.raises(ValueError, match="train.eval_batch_size"):
        TrainConfig(eval_batch_size=0)


def test_progress_in_a_log_file_is_lines_not_bar_redraws(tiny_encoder_dir, splits, monkeypatch, capsys):
    """Under pytest stderr is not a terminal, like a rule's log: no tqdm bar, a line every CHECK_EVERY_STEPS steps
    and one per epoch."""
    train, val, _ = splits
    monkeypatch.setattr(training, "CHECK_EVERY_STEPS", 2)
    messages = []
    cfg = TrainConfig(lr=3e-3, epochs=1, batch_size=16, seed=1)  # 5 steps
    model, tok = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=1)
    capsys.readouterr()  # loading the model has its own bar
    train_regressor(model, tok, train, val, cfg, log=messages.append, progress=True)
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "epoch 1/1" not in captured.err
    assert [m.split(":")[0] for m in messages] == ["epoch 1 step 2/5", "epoch 1 step 4/5", "epoch 1"]


def test_divergence_found_mid_epoch_names_the_batch(tiny_encoder_dir, splits, monkeypatch):
    """The loss is read every CHECK_EVERY_STEPS steps: a non-finite loss in a later batch is named by its number."""
    train, val, _ = splits
    monkeypatch.setattr(training, "CHECK_EVERY_STEPS", 2)
    cfg = TrainConfig(epochs=1, batch_size=16, seed=1)
    batches = length_batches(
        Batch.encode(_tok(tiny_encoder_dir), train, 202, name="train").token_counts(),
        16,
        torch.Generator().manual_seed(cfg.seed * 100_003 + 1),
    )
    bad = train.copy()
    bad.loc[batches[2].tolist(), "label"] = 1e30  # the third batch of epoch 1 overflows
    model, tok = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=1)
    with pytest.raises(TrainingDivergence, match=r"epoch 1, batch 3"):
        train_regressor(model, tok, bad, val, cfg, progress=False, log=lambda _: None)


def _tok(encoder_dir):
    return new_regressor(encoder_dir, RegressorSpec(), seed=0)[1]


def test_a_checkpoint_written_by_other_code_is_not_resumed(tmp_path, tiny_encoder_dir, splits):
    """The run identity holds the code hash: a run killed and resumed after a code edit starts over instead of mixing
    code versions (the grid's cache key is the same function, runs.run_key)."""
    train, val, _ = splits
    ckpt = tmp_path / "resume"
    cfg = TrainConfig(epochs=1, seed=1)
    model, tok = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=1)
    train_regressor(model, tok, train, val, cfg, checkpoint_dir=ckpt, code="before", progress=False, log=lambda _: None)
    same, edited = [], []
    model, tok = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=1)
    train_regressor(model, tok, train, val, cfg, checkpoint_dir=ckpt, code="before", progress=False, log=same.append)
    model, tok = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=1)
    train_regressor(model, tok, train, val, cfg, checkpoint_dir=ckpt, code="after", progress=False, log=edited.append)
    assert any(m.startswith("resuming from") for m in same)
    assert any("belongs to a different run" in m for m in edited) and not any(m.startswith("resuming") for m in edited)


def test_fixed_steps_and_epochs_are_one_loop(tiny_encoder_dir, splits):
    """Validation's retraining (a fixed number of steps) runs the loop of base training and the grid: as many steps
    as one epoch has batches give the weights of a one-epoch run, bit for bit."""
    train, val, _ = splits
    cfg = TrainConfig(lr=3e-3, epochs=1, batch_size=16, seed=1)
    a, tok = new_regressor(tiny_encoder_dir, RegressorSpec(head_dropout=0.1), seed=1)
    train_regressor(a, tok, train, val, cfg, progress=False, log=lambda _: None)
    data, _ = training.encode_splits(tok, train, val, cfg, log=lambda _: None)
    b, _ = new_regressor(tiny_encoder_dir, RegressorSpec(head_dropout=0.1), seed=1)
    steps = len(training.epoch_batches(data, cfg.batch_size, cfg.seed, 1))
    result = training.fit(b, data, cfg, steps=steps, progress=False, log=lambda _: None)
    assert len(result.history) == 1
    for name, p in a.state_dict().items():
        assert torch.equal(p, b.state_dict()[name]), name
    c, _ = new_regressor(tiny_encoder_dir, RegressorSpec(head_dropout=0.1), seed=1)
    training.fit(c, data, cfg, steps=steps + 1, progress=False, log=lambda _: None)  # into a second pass
    assert any(not torch.equal(p, c.state_dict()[n]) for n, p in a.state_dict().items())
