"""A grid condition's seeds in one process: each seed's outputs as a single run would write them, and reruns that
train only the seeds whose inputs changed (the others restored byte for byte from the per-seed cache)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from molinfluence.files import write_csv
from molinfluence.grid import Condition
from molinfluence.runs import Splits, finetune_condition, train_run, write_run
from molinfluence.selection import select
from molinfluence.training import TrainConfig

RECIPE = {"lr": 3e-3, "epochs": 2, "batch_size": 16, "patience": 2, "max_length": 64}
SPEC = {"pooling": "cls", "head_dropout": 0.0, "max_length": 64}
FILES = ("metrics.json", "predictions.csv", "train_log.csv")


@pytest.fixture(scope="module")
def layout(tmp_path_factory, molecules):
    """A results folder with splits, a random pool and its selections for seeds 0..2, as the workflow lays them out."""
    root = tmp_path_factory.mktemp("runs")
    data = molecules.sample(n=130, random_state=1).reset_index(drop=True)
    splits = {}
    for name, part in (("train", data.iloc[:60]), ("validation", data.iloc[60:80]), ("test", data.iloc[80:100])):
        splits[name] = root / "results" / "data" / f"{name}.csv"
        write_csv(splits[name], part[["smiles", "label"]])
    pool = data.iloc[100:].reset_index(drop=True).assign(ext_index=lambda f: range(len(f)))[["ext_index", "smiles", "label"]]
    for seed in range(3):
        run = Condition("fresh", "random", 10, seed)
        write_csv(run.selection_path(str(root / "results")), select(pool, "random", 10, seed=seed))
    return root, splits


def _grid(layout, encoder, seeds, *, code="c1", keep_models=False, log=None):
    root, splits = layout
    messages = []
    done = finetune_condition(Condition("fresh", "random", 10), seeds, results=root / "results", start=encoder,
                              spec=SPEC, recipe=RECIPE, splits=splits, code=code, keep_models=keep_models,
                              log=log or messages.append, progress=False)
    return done, messages


def _bytes(root: Path, seed: int) -> dict[str, bytes]:
    run = Path(Condition("fresh", "random", 10, seed).path(str(root / "results")))
    return {name: (run / name).read_bytes() for name in FILES}


def test_each_seed_writes_what_a_single_run_writes(layout, tiny_encoder_dir, tmp_path):
    root, splits = layout
    done, _ = _grid(layout, tiny_encoder_dir, [0, 1])
    assert done == {0: "trained", 1: "trained"}
    # seed 1 trained on its own, as one run, with its own selection
    run = Condition("fresh", "random", 10, 1)
    selection_file = run.selection_path(str(root / "results"))
    alone = train_run("fresh", tiny_encoder_dir, SPEC, TrainConfig.from_dict({**RECIPE, "seed": 1}),
                      Splits.read(splits["train"], splits["validation"], splits["test"]),
                      selection=pd.read_csv(selection_file), selection_source=selection_file, log=lambda _: None,
                      progress=False)
    write_run(alone, metrics=tmp_path / "metrics.json", predictions=tmp_path / "predictions.csv",
              log=tmp_path / "train_log.csv")
    grid_run = Path(run.path(str(root / "results")))
    assert (grid_run / "predictions.csv").read_bytes() == (tmp_path / "predictions.csv").read_bytes()
    ours, reference = json.loads((grid_run / "metrics.json").read_text()), json.loads((tmp_path / "metrics.json").read_text())
    assert ours == {**reference, **run.record()}  # the same numbers, plus the condition the run belongs to
    assert ours["n_added"] == 10 and ours["n_train"] == 70
    assert Condition.from_record(ours) == run
    assert not list((root / "results").rglob("last.pt"))  # resume checkpoints are removed once a seed has finished


def test_adding_a_seed_trains_only_that_seed_and_restores_the_others_byte_for_byte(layout, tiny_encoder_dir):
    root, _ = layout
    _grid(layout, tiny_encoder_dir, [0, 1])
    before = {seed: _bytes(root, seed) for seed in (0, 1)}
    # Snakemake deletes a job's outputs before it runs it: the restored seeds must come from the cache
    for seed in (0, 1):
        for name in FILES:
            (Path(Condition("fresh", "random", 10, seed).path(str(root / "results"))) / name).unlink()
    done, messages = _grid(layout, tiny_encoder_dir, [0, 1, 2])
    assert done == {0: "restored", 1: "restored", 2: "trained"}
    assert sum("restored the finished run" in m for m in messages) == 2
    for seed in (0, 1):
        assert _bytes(root, seed) == before[seed], seed
    assert json.loads(_bytes(root, 2)["metrics.json"])["seed"] == 2


def test_a_changed_input_or_code_retrains_exactly_the_affected_seeds(layout, tiny_encoder_dir):
    root, _ = layout
    _grid(layout, tiny_encoder_dir, [0, 1])
    # a redrawn selection for seed 1 only
    path = Path(Condition("fresh", "random", 10, 1).selection_path(str(root / "results")))
    original = path.read_bytes()
    try:
        frame = pd.read_csv(path)
        write_csv(path, frame.iloc[::-1])
        done, _ = _grid(layout, tiny_encoder_dir, [0, 1])
        assert done == {0: "restored", 1: "trained"}
    finally:
        path.write_bytes(original)
    done, _ = _grid(layout, tiny_encoder_dir, [0, 1])
    assert done == {0: "restored", 1: "trained"}  # back to the original selection: its entry was replaced, retrain
    done, _ = _grid(layout, tiny_encoder_dir, [0], code="c2")  # the training code changed
    assert done == {0: "trained"}


def test_kept_models_are_restored_too_and_a_cache_entry_without_weights_is_retrained(layout, tiny_encoder_dir):
    root, _ = layout
    model = Path(Condition("fresh", "random", 10, 0).path(str(root / "results"))) / "model"
    _grid(layout, tiny_encoder_dir, [0], code="models")
    assert not model.exists()
    assert _grid(layout, tiny_encoder_dir, [0], code="models", keep_models=True)[0] == {0: "trained"}
    weights = {p.name: p.read_bytes() for p in model.iterdir()}
    assert "model.safetensors" in weights
    shutil.rmtree(model)
    assert _grid(layout, tiny_encoder_dir, [0], code="models", keep_models=True)[0] == {0: "restored"}
    assert {p.name: p.read_bytes() for p in model.iterdir()} == weights


class Killed(BaseException):
    """Stands in for SIGKILL: nothing of the job's own clean-up runs."""


def test_a_seed_killed_mid_training_resumes_from_its_checkpoint_to_the_uninterrupted_result(layout, tiny_encoder_dir):
    root, _ = layout
    _grid(layout, tiny_encoder_dir, [0, 1])
    reference = _bytes(root, 1)
    checkpoint = Path(Condition("fresh", "random", 10, 1).path(str(root / "results" / ".resume"))) / "last.pt"

    def kill_after_first_checkpoint(message: str) -> None:
        if checkpoint.exists():  # seed 1 finished an epoch and saved it: die inside its next one
            raise Killed

    with pytest.raises(Killed):
        _grid(layout, tiny_encoder_dir, [0, 1], code="kill", log=kill_after_first_checkpoint)
    assert checkpoint.exists()
    done, messages = _grid(layout, tiny_encoder_dir, [0, 1], code="kill")
    assert done == {0: "restored", 1: "trained"} and any(m.startswith("resuming from") for m in messages)
    resumed = _bytes(root, 1)
    assert resumed["predictions.csv"] == reference["predictions.csv"]
    assert resumed["metrics.json"] == reference["metrics.json"]
    assert not checkpoint.exists()


def _fresh_results(layout, folder: Path) -> Path:
    """A results folder with the layout's selections and nothing trained or cached (the splits stay where they are)."""
    root, _ = layout
    shutil.copytree(root / "results" / "selection", folder / "selection")
    return folder


def test_concurrent_seeds_write_the_same_numbers_as_sequential_seeds(layout, tiny_encoder_dir, tmp_path):
    root, splits = layout
    _grid(layout, tiny_encoder_dir, [0, 1, 2])
    sequential = {seed: _bytes(root, seed) for seed in (0, 1, 2)}
    results = _fresh_results(layout, tmp_path / "results")
    messages = []
    done = finetune_condition(Condition("fresh", "random", 10), [0, 1, 2], results=results, start=tiny_encoder_dir,
                              spec=SPEC, recipe=RECIPE, splits=splits, code="c1", concurrent=2,
                              log=messages.append, progress=False)
    assert done == {0: "trained", 1: "trained", 2: "trained"}
    assert any("2 at a time in worker processes" in m for m in messages)
    for seed in (0, 1, 2):
        ours = _bytes(tmp_path, seed)
        for name in ("metrics.json", "predictions.csv"):
            assert ours[name] == sequential[seed][name], (seed, name)
        timed = [pd.read_csv(io.BytesIO(files["train_log.csv"])) for files in (ours, sequential[seed])]
        pd.testing.assert_frame_equal(*(log.drop(columns="seconds") for log in timed), check_exact=True)
    # and a rerun restores them from the workers' cache entries, as after a sequential run
    done = finetune_condition(Condition("fresh", "random", 10), [0, 1, 2], results=results, start=tiny_encoder_dir,
                              spec=SPEC, recipe=RECIPE, splits=splits, code="c1", concurrent=2,
                              log=messages.append, progress=False)
    assert done == {0: "restored", 1: "restored", 2: "restored"}


def test_a_failing_concurrent_seed_is_raised_after_the_other_seeds_have_finished(layout, tiny_encoder_dir, tmp_path):
    _, splits = layout
    results = _fresh_results(layout, tmp_path / "results")
    broken = Path(Condition("fresh", "random", 10, 1).selection_path(str(results)))
    broken.write_text("foo\n1\n")  # fails inside its worker, after the parent has fingerprinted it
    with pytest.raises(ValueError, match="random_k10_seed1.*lacks column"):
        finetune_condition(Condition("fresh", "random", 10), [0, 1], results=results, start=tiny_encoder_dir,
                           spec=SPEC, recipe=RECIPE, splits=splits, code="c1", concurrent=2, log=lambda _: None,
                           progress=False)
    finished = Path(Condition("fresh", "random", 10, 0).path(str(results)))
    assert (finished / "metrics.json").is_file()  # seed 0's work is kept: a rerun restores it instead of retraining
