"""Training runs from files to outputs: one run (base training), and every seed of a grid condition in one process.

A fine-tuning condition ``(init, strategy, k)`` trains all its seeds in one process, so imports, device start-up and
reading the splits are paid once per condition, not once per seed. Each seed still writes its own ``metrics.json``,
``predictions.csv``, ``train_log.csv`` (and ``model/`` with ``finetune.keep_models``) to its own run directory.

Reruns stay per seed. Snakemake deletes a job's declared outputs before the job runs, so each finished seed is also
kept in a cache entry outside the outputs, ``<results>/.cache/finetune/{init}/{strategy}/k{k}/seed{s}/``, with the key
of what produced it: the training code's hash (the rule's ``code`` param), the recipe with the seed, the head spec,
the init, and the content of the start weights, the train/validation/test splits and this seed's selection. When
the job reruns (a seed was added, a random selection redrawn, a job killed) a seed whose key still matches is restored
from its entry byte for byte (weights hard-linked where the file system allows) and only the other seeds train. A
killed seed resumes from its checkpoint under ``<results>/.resume/finetune/...``, as before. Delete ``<results>/.cache``
to force retraining.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pandas as pd

from .files import atomic_path, sha256_files, write_csv, write_json
from .grid import Condition
from .regressor import MolformerRegressor, RegressorSpec, initial_model, save_regressor
from .selection import training_rows
from .training import TrainConfig, evaluate, pick_device, train_regressor

RUN_FILES: tuple[str, ...] = ("train_log.csv", "predictions.csv", "metrics.json")  # metrics last: it marks "finished"
MODEL_DIR = "model"
KEY_FILE = "key"


@dataclass
class Splits:
    """The three splits of a run, each frame's ``attrs["source"]`` naming its file (for error messages)."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    @classmethod
    def read(cls, train: str | Path, validation: str | Path, test: str | Path) -> "Splits":
        frames = {}
        for name, path in (("train", train), ("validation", validation), ("test", test)):
            frame = pd.read_csv(path)
            frame.attrs["source"] = str(path)
            frames[name] = frame
        return cls(**frames)


@dataclass
class RunResult:
    model: MolformerRegressor
    tokenizer: Any
    metrics: dict[str, Any]
    predictions: pd.DataFrame
    history: pd.DataFrame


def train_run(
    init: str,
    start: str | Path,
    spec: Mapping[str, Any],
    cfg: TrainConfig,
    splits: Splits,
    *,
    selection: pd.DataFrame | None = None,
    selection_source: str = "the selection",
    resume_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> RunResult:
    """Train one run (start weights per ``init``, the training split plus ``selection``) and evaluate it on test."""
    rows = training_rows(splits.train, selection, train_source=splits.train.attrs.get("source", "the training split"),
                         selection_source=selection_source)
    model, tokenizer = initial_model(init, start, RegressorSpec(**spec), seed=cfg.seed)
    log(f"init={init} from {start}; {len(rows.frame)} training molecules ({rows.n_added} external added)")
    result = train_regressor(model, tokenizer, rows.frame, splits.validation, cfg, weights=rows.weights,
                             checkpoint_dir=resume_dir, log=log, progress=progress)
    device = pick_device(cfg.device)
    metrics, predictions = evaluate(model, tokenizer, splits.test, cfg, device)
    metrics.update(
        init=init,
        seed=cfg.seed,
        n_train=len(rows.frame),
        n_selected=rows.n_selected,
        n_added=rows.n_added,
        n_test=len(splits.test),
        best_epoch=result.best_epoch,
        best_val_loss=result.best_val_loss,
        epochs_run=len(result.history),
        stopped_early=result.stopped_early,
        device=str(device),
    )
    log("test metrics: " + ", ".join(f"{k}={metrics[k]:.4f}" for k in ("mse", "rmse", "mae", "r2")))
    return RunResult(model, tokenizer, metrics, predictions, result.history)


def write_run(result: RunResult, *, metrics: str | Path, predictions: str | Path, log: str | Path,
              model: str | Path | None = None) -> None:
    """Write a run's outputs atomically; metrics last (its presence means the run finished)."""
    if model is not None:
        with atomic_path(model, directory=True) as tmp:
            save_regressor(result.model.cpu(), result.tokenizer, tmp)
    write_csv(log, result.history)
    write_csv(predictions, result.predictions)
    write_json(metrics, result.metrics)


def content_hash(path: str | Path) -> str:
    """SHA-256 of a file, or of a directory's files (names and bytes; hidden files such as Snakemake's flags skipped)."""
    p = Path(path)
    if p.is_file():
        return sha256_files([p], root=p.parent)
    files = [f for f in sorted(p.rglob("*")) if f.is_file() and not any(s.startswith(".") for s in f.relative_to(p).parts)]
    if not files:
        raise FileNotFoundError(f"{path}: no files to fingerprint (a start model directory is expected)")
    return sha256_files(files, root=p)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or no hard links: a copy is byte-identical too
        shutil.copyfile(src, dst)


def restore(entry: Path, key: str, out: Path, *, model: bool) -> bool:
    """Copy a cached run into ``out`` if ``entry`` holds a finished run with this key (and weights when ``model``)."""
    key_file = entry / KEY_FILE
    if not key_file.is_file() or key_file.read_text() != key:
        return False
    if not all((entry / name).is_file() for name in RUN_FILES) or (model and not (entry / MODEL_DIR).is_dir()):
        return False
    if model:
        with atomic_path(out / MODEL_DIR, directory=True) as tmp:
            for src in sorted((entry / MODEL_DIR).rglob("*")):
                dst = tmp / src.relative_to(entry / MODEL_DIR)
                if src.is_dir():
                    dst.mkdir(parents=True, exist_ok=True)
                else:
                    _link_or_copy(src, dst)
    for name in RUN_FILES:  # small files are copied: Snakemake touches outputs, the entry keeps its own times
        with atomic_path(out / name) as tmp:
            shutil.copyfile(entry / name, tmp)
    return True


def run_key(code: str, cfg: TrainConfig, spec: Mapping[str, Any], run: Condition, inputs: Mapping[str, str]) -> str:
    """What a finished run depends on: code, recipe (with its seed), head spec, condition, and input contents."""
    text = json.dumps({"code": code, "recipe": cfg.to_dict(), "spec": dict(spec), "run": run.record(),
                       "inputs": dict(inputs)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def finetune_condition(
    condition: Condition,
    seeds: Iterable[int],
    *,
    results: str | Path,
    start: str | Path,
    spec: Mapping[str, Any],
    recipe: Mapping[str, Any],
    splits: Mapping[str, str | Path],
    code: str,
    keep_models: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[int, str]:
    """Train (or restore) every seed of ``condition``; returns seed -> ``"trained"`` or ``"restored"``.

    ``recipe`` is the training recipe without its seed (each run's seed is one of ``seeds``); ``splits`` maps train,
    validation and test to their files; ``code`` is the hash of the training code (part of every run's cache key).
    Outputs go to ``condition.with_seed(s).path(results)``, selections are read from ``.selection_path(results)``.
    """
    results = str(results)
    t0 = time.perf_counter()
    data = Splits.read(splits["train"], splits["validation"], splits["test"])
    shared = {"start": content_hash(start), **{name: content_hash(path) for name, path in splits.items()}}
    log(f"{condition}: inputs read and fingerprinted in {time.perf_counter() - t0:.2f} s")
    done: dict[int, str] = {}
    for run in condition.runs(seeds):
        t0 = time.perf_counter()
        cfg = TrainConfig.from_dict({**recipe, "seed": run.seed})
        selection_file = run.selection_path(results)
        key = run_key(code, cfg, spec, run, {**shared, "selection": content_hash(selection_file)})
        entry, out = Path(run.path(f"{results}/.cache")), Path(run.path(results))
        if restore(entry, key, out, model=keep_models):
            log(f"seed {run.seed}: restored the finished run from {entry} (same code, recipe and inputs)")
            done[run.seed] = "restored"
            continue
        log(f"seed {run.seed}: training {run}")
        resume = Path(run.path(f"{results}/.resume"))
        selection = pd.read_csv(selection_file)
        result = train_run(condition.init, start, spec, cfg, data, selection=selection, selection_source=selection_file,
                           resume_dir=resume, log=log, progress=progress)
        result.metrics.update(run.record())
        with atomic_path(entry, directory=True) as tmp:
            write_run(result, metrics=tmp / "metrics.json", predictions=tmp / "predictions.csv",
                      log=tmp / "train_log.csv", model=tmp / MODEL_DIR if keep_models else None)
            (tmp / KEY_FILE).write_text(key)
        if not restore(entry, key, out, model=keep_models):
            raise RuntimeError(f"{entry}: the run just written could not be restored")
        shutil.rmtree(resume, ignore_errors=True)
        done[run.seed] = "trained"
        log(f"seed {run.seed}: trained in {time.perf_counter() - t0:.2f} s")
    return done
