"""Training runs from files to outputs: one run (base training), every seed of a grid condition in one process, and
the planted-label audit's arms (:func:`finetune_arm`).

A fine-tuning condition ``(init, strategy, k)`` trains all its seeds in one process, so imports, device start-up and
reading the splits are paid once per condition, not once per seed. Each seed still writes its own ``metrics.json``,
``predictions.csv``, ``train_log.csv`` (and ``model/`` with ``finetune.keep_models``) to its own run directory.
With ``finetune.concurrent_seeds`` > 1 the job trains several seeds at once in worker processes that share the
device (a GPU is idle most of a small training step; other processes' kernels fill that time), each seed's numbers
unchanged.

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

import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pandas as pd
import torch

from .files import atomic_path, sha256_files, write_csv, write_json
from .grid import Condition
from .regressor import MolformerRegressor, RegressorSpec, initial_model, save_regressor
from .selection import training_rows
from .training import TrainConfig, evaluate, pick_device, run_identity, train_regressor

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
    code: str | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> RunResult:
    """Train one run (start weights per ``init``, the training split plus ``selection``) and evaluate it on test.
    ``code`` is the hash of the running code (part of the resume checkpoint's run identity)."""
    rows = training_rows(splits.train, selection, train_source=splits.train.attrs.get("source", "the training split"),
                         selection_source=selection_source)
    model, tokenizer = initial_model(init, start, RegressorSpec(**spec), seed=cfg.seed)
    log(f"init={init} from {start}; {len(rows.frame)} training molecules ({rows.n_added} external added)")
    result = train_regressor(model, tokenizer, rows.frame, splits.validation, cfg, weights=rows.weights,
                             checkpoint_dir=resume_dir, code=code, log=log, progress=progress)
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
    """What a finished run depends on: code, recipe (with its seed), head spec, condition, and input contents
    (:func:`molinfluence.training.run_identity`, the same identity its resume checkpoint is keyed by)."""
    return run_identity(code, cfg.to_dict(), spec=dict(spec), run=run.record(), inputs=dict(inputs))


@dataclass(frozen=True)
class SeedJob:
    """One seed of a condition to train: everything a worker process needs (picklable)."""

    run: Condition
    key: str
    code: str
    recipe: Mapping[str, Any]
    start: str
    spec: Mapping[str, Any]
    splits: Mapping[str, str]
    results: str
    keep_models: bool


def train_seed(job: SeedJob, data: Splits, *, log: Callable[[str], None] = print, progress: bool = True) -> float:
    """Train one seed, write it to its cache entry, restore it into its run directory; returns seconds."""
    t0 = time.perf_counter()
    run, results = job.run, job.results
    cfg = TrainConfig.from_dict({**job.recipe, "seed": run.seed})
    selection_file = run.selection_path(results)
    entry, out = Path(run.path(f"{results}/.cache")), Path(run.path(results))
    resume = Path(run.path(f"{results}/.resume"))
    result = train_run(run.init, job.start, job.spec, cfg, data, selection=pd.read_csv(selection_file),
                       selection_source=selection_file, resume_dir=resume, code=job.code, log=log,
                       progress=progress)
    result.metrics.update(run.record())
    with atomic_path(entry, directory=True) as tmp:
        write_run(result, metrics=tmp / "metrics.json", predictions=tmp / "predictions.csv",
                  log=tmp / "train_log.csv", model=tmp / MODEL_DIR if job.keep_models else None)
        (tmp / KEY_FILE).write_text(job.key)
    if not restore(entry, job.key, out, model=job.keep_models):
        raise RuntimeError(f"{entry}: the run just written could not be restored")
    shutil.rmtree(resume, ignore_errors=True)
    return time.perf_counter() - t0


def _train_seed_in_worker(job: SeedJob, threads: int) -> float:
    """A worker process's whole task: the same ``train_seed`` as the sequential path, with the parent's thread count,
    logging to the inherited stdout (the rule's log) with the seed in front of every line."""
    torch.set_num_threads(threads)
    splits = job.splits
    data = Splits.read(splits["train"], splits["validation"], splits["test"])
    return train_seed(job, data, log=lambda m: print(f"[seed {job.run.seed}] {m}", flush=True), progress=False)


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
    concurrent: int = 1,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[int, str]:
    """Train (or restore) every seed of ``condition``; returns seed -> ``"trained"`` or ``"restored"``.

    ``recipe`` is the training recipe without its seed (each run's seed is one of ``seeds``); ``splits`` maps train,
    validation and test to their files; ``code`` is the hash of the training code (part of every run's cache key).
    Outputs go to ``condition.with_seed(s).path(results)``, selections are read from ``.selection_path(results)``.

    ``concurrent`` > 1 trains up to that many seeds at once, each in its own (spawned) worker process running the same
    ``train_seed`` with this process's torch thread count, all on the recipe's device: on a GPU, where a small step
    leaves the device idle while Python dispatches kernels, several processes fill that idle time. Each seed's
    metrics and predictions are those of the sequential path (tested byte for byte on CPU). Workers log to stdout, not to ``log``. A
    seed that fails does not stop the others; the first failure is raised once all have finished.
    """
    if int(concurrent) < 1:
        raise ValueError(f"finetune.concurrent_seeds must be at least 1, got {concurrent}")
    results = str(results)
    t0 = time.perf_counter()
    data = Splits.read(splits["train"], splits["validation"], splits["test"])
    paths = {name: str(path) for name, path in splits.items()}
    shared = {"start": content_hash(start), **{name: content_hash(path) for name, path in splits.items()}}
    log(f"{condition}: inputs read and fingerprinted in {time.perf_counter() - t0:.2f} s")
    done: dict[int, str] = {}
    pending: list[SeedJob] = []
    for run in condition.runs(seeds):
        cfg = TrainConfig.from_dict({**recipe, "seed": run.seed})
        key = run_key(code, cfg, spec, run, {**shared, "selection": content_hash(run.selection_path(results))})
        entry, out = Path(run.path(f"{results}/.cache")), Path(run.path(results))
        if restore(entry, key, out, model=keep_models):
            log(f"seed {run.seed}: restored the finished run from {entry} (same code, recipe and inputs)")
            done[run.seed] = "restored"
        else:
            pending.append(SeedJob(run, key, code, dict(recipe), str(start), dict(spec), paths, results, keep_models))
    workers = min(int(concurrent), len(pending))
    if workers <= 1:
        for job in pending:
            log(f"seed {job.run.seed}: training {job.run}")
            seconds = train_seed(job, data, log=log, progress=progress)
            done[job.run.seed] = "trained"
            log(f"seed {job.run.seed}: trained in {seconds:.2f} s")
    else:
        log(f"training seeds {[job.run.seed for job in pending]}, {workers} at a time in worker processes")
        failures: list[tuple[SeedJob, BaseException]] = []
        context = multiprocessing.get_context("spawn")  # fork is unsafe once torch (or CUDA) has started threads
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(_train_seed_in_worker, job, torch.get_num_threads()): job for job in pending}
            for future in as_completed(futures):
                job = futures[future]
                try:
                    seconds = future.result()
                except BaseException as error:  # noqa: BLE001 - reported below, after the other seeds finish
                    failures.append((job, error))
                    log(f"seed {job.run.seed}: failed: {error}")
                else:
                    done[job.run.seed] = "trained"
                    log(f"seed {job.run.seed}: trained in {seconds:.2f} s (worker process)")
        if failures:
            raise failures[0][1]
    return {seed: done[seed] for seed in sorted(done)}


def continue_run(start: str | Path, spec: Mapping[str, Any], recipe: Mapping[str, Any], splits: Splits,
                 added: pd.DataFrame | None, seed: int, *, source: str = "the added rows",
                 log: Callable[[str], None] = print, progress: bool = False) -> RunResult:
    """The grid's ``continue`` run at one seed: from the trained base model ``start``, the fine-tune ``recipe`` (without
    its seed) with ``seed``, on ``splits``' training split plus ``added`` (columns smiles, label, weight; None: nothing
    added). What the group validation and the planted-label audit fine-tune with."""
    cfg = TrainConfig.from_dict({**recipe, "seed": int(seed)})
    return train_run("continue", start, spec, cfg, splits, selection=added, selection_source=source, log=log,
                     progress=progress)


def finetune_arm(arm: str, k: int, seeds: Iterable[int], *, start: str, spec: Mapping[str, Any],
                 recipe: Mapping[str, Any], splits: Splits, pool: pd.DataFrame, draw_seed: int,
                 ranking: pd.DataFrame | None = None, log: Callable[[str], None] = print,
                 progress: bool = False) -> pd.DataFrame:
    """The planted-label audit's fine-tunes of one arm at ``k`` (:mod:`molinfluence.audit`): every seed continues from
    the audit base ``start`` (``recipe`` without its seed) on the audit's ``splits`` plus the arm's k pool rows
    (:func:`molinfluence.audit.picks`, planted labels) through :func:`train_run`; one row per seed with its test
    metrics and how many of the added rows were clean (:data:`molinfluence.audit.ARM_COLUMNS`)."""
    from .audit import ARM_COLUMNS, clean_mask, picks, selection_frame

    clean = clean_mask(pool)
    rows = []
    for seed in seeds:
        chosen = picks(pool, arm, k, seed, draw_seed, ranking)
        result = continue_run(start, spec, recipe, splits, selection_frame(pool, chosen), seed,
                              source=f"audit arm {arm} k={k}", log=log, progress=progress)
        m = result.metrics
        rows.append(dict(arm=arm, k=int(k), seed=int(seed), mse=m["mse"], rmse=m["rmse"], mae=m["mae"], r2=m["r2"],
                         n_added=m["n_added"], clean_added=int(clean[chosen].sum())))
        log(f"{arm} k={k} seed {seed}: test MSE {m['mse']:.4f} ({rows[-1]['clean_added']} of {k} added rows clean)")
    return pd.DataFrame(rows, columns=list(ARM_COLUMNS))
