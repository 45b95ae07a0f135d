"""The test bed where the choice of data can be judged (issue 16): computed labels, planted pools, real fine-tunes.

- Molecules: ``molinfluence/datasets/zinc_bed.csv`` (2,000 ZINC SMILES from the MOSES training set, seeded sample;
  provenance in the datasets README), labelled by RDKit's Crippen logP (computed, deterministic, no measurement noise),
  a task the demo-size random MoLFormer learns (test R² ≈ 0.7).
- Splits: a seeded permutation of the molecules into train / validation / test / pool (:func:`split_bed`). The
  tokenizer's vocabulary is built from every shipped molecule, so the base model does not depend on the pool or on the
  corruption mode: one base model per (data seed, model seed) serves every mode.
- Planted pools (:func:`plant`): a seeded share of the pool is corrupted — ``swap`` (labels permuted among the
  corrupted rows: ranks rotated by half, so every corrupted row gets the label of a row half the distribution away),
  ``offset`` (+ ``offset_sd`` train label SDs, one sign for all: a systematic error; with random signs it averages
  out and adding those rows did not hurt) or ``noise`` (+ N(0, (``noise_sd`` SD)²)). Clean rows are untouched.
- Effects: each arm adds k pool rows to the training split and fine-tunes (continue from the base model) through the
  project's training function (:func:`fit`, the one wrapper); test MSE is paired over fine-tune seeds with ``random``
  (k random pool rows, same seed) by a paired t-test (:func:`paired`). The ``oracle`` arm adds k clean rows: its
  margin over random is the precondition for judging any selector — where its p ≥ ``alpha`` the bed says it cannot
  judge that mode at that k.
- Per selector (:data:`molinfluence.selectors.SELECTORS`): AUROC of its ranking (clean ranked before corrupted),
  clean share of its top k and ΔMSE vs random at each k.
- Group validation (``groups`` > 0): ``groups`` seeded random subsets of the planted pool at each size of
  ``group_ks`` (default ``ks``) are each added and fine-tuned at every seed, with a baseline fine-tune without
  additions per seed; every selector's score summed over a subset is correlated with the measured Δ test MSE
  (:func:`molinfluence.validation.groups.group_table`: Spearman = LDS, Pearson, bootstrap intervals, the seeds' noise
  ceiling). adaptive_greedy has no score for every row and is left out.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

from .audit import MODES, auroc, control_picks, judge, paired, plant  # noqa: F401 (the bed's names too)

BED_SOURCE = "pkg:molinfluence/datasets/zinc_bed.csv"
EXPENSIVE = ("adaptive_greedy", "tracin")
"""Selectors the bed skips unless asked (minutes each on the bed's model)."""
DEMO_SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  num_random_features=16)


@dataclass
class BedConfig:
    """The bed's sizes, seeds, modes and recipes (``examples/bed.yaml``)."""

    n_train: int = 1000
    n_validation: int = 150
    n_test: int = 250
    pool: int = 400
    corrupted: float = 0.5
    modes: Sequence[str] = MODES
    ks: Sequence[int] = (200,)
    seeds: int = 5
    data_seed: int = 0
    model_seed: int = 0
    offset_sd: float = 2.0
    noise_sd: float = 2.0
    alpha: float = 0.05
    model: dict = field(default_factory=lambda: dict(DEMO_SIZES))
    max_length: int = 202
    base: dict = field(default_factory=lambda: dict(lr=1e-3, epochs=80, batch_size=32, patience=10))
    finetune: dict = field(default_factory=lambda: dict(lr=2e-4, epochs=5, batch_size=32, patience=5))
    influence: dict = field(default_factory=lambda: dict(method="cg", damping=0.01))
    selectors: Sequence[str] | None = None  # None: every selector except EXPENSIVE
    groups: int = 0  # random pool subsets per size for group validation (0: none)
    group_ks: Sequence[int] | None = None  # their sizes (None: ks)
    threads: int = 1  # per process: on a shared 2-core machine two threads ran an epoch 5–60× slower than one
    workers: int = 2  # fine-tune processes (spawned); 1 = in this process

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"bed.modes: unknown mode(s) {bad}; choose from {list(MODES)}")
        if not 0.0 < self.corrupted < 1.0:
            raise ValueError(f"bed.corrupted = {self.corrupted!r} must be in (0, 1)")
        n_bad = round(self.corrupted * self.pool)
        for k in self.ks:
            if not 0 < int(k) <= self.pool - n_bad:
                raise ValueError(f"bed.ks: k = {k} must be in [1, {self.pool - n_bad}] (the pool's clean rows)")
        if self.seeds < 2:
            raise ValueError(f"bed.seeds = {self.seeds} must be ≥ 2 for a paired test")
        if self.groups < 0 or (self.groups and self.groups < 3):
            raise ValueError(f"bed.groups = {self.groups} must be 0 (off) or ≥ 3 subsets per size")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BedConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"bed config: unknown key(s) {unknown}; known: {sorted(known)}")
        d = dict(d)
        for key in ("model", "base", "finetune", "influence"):
            if key in d:
                d[key] = {**getattr(cls(), key), **d[key]}
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- molecules and labels ----------------------------------------------------------------------------------------------


def crippen_logp(smiles: Sequence[str]) -> np.ndarray:
    """RDKit's Crippen logP of each SMILES (a clear error naming the row if one does not parse)."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import Crippen

    RDLogger.DisableLog("rdApp.*")
    out = np.empty(len(smiles), dtype=np.float64)
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s)
        if mol is None:
            raise ValueError(f"bed molecules: row {i} SMILES {s!r} does not parse")
        out[i] = Crippen.MolLogP(mol)
    return out


def bed_molecules(source: str = BED_SOURCE) -> pd.DataFrame:
    """The bed's molecules (column ``smiles``) with ``label`` = Crippen logP (a fresh frame each call)."""
    smiles, labels = _labelled(source)
    return pd.DataFrame({"smiles": list(smiles), "label": np.array(labels)})


@functools.lru_cache(maxsize=4)
def _labelled(source: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    from .data import resolve_source

    frame = pd.read_csv(resolve_source(source))
    if "smiles" not in frame.columns:
        raise ValueError(f"{source}: lacks a 'smiles' column; has {list(frame.columns)}")
    smiles = frame["smiles"].astype(str).tolist()
    return tuple(smiles), tuple(crippen_logp(smiles).tolist())


def split_bed(frame: pd.DataFrame, cfg: BedConfig) -> dict[str, pd.DataFrame]:
    """Seeded (``data_seed``) disjoint train / validation / test / pool tables (index reset)."""
    sizes = {"pool": cfg.pool, "validation": cfg.n_validation, "test": cfg.n_test, "train": cfg.n_train}
    if sum(sizes.values()) > len(frame):
        raise ValueError(f"bed sizes {sizes} need {sum(sizes.values())} molecules; the source has {len(frame)}")
    order = np.random.default_rng(cfg.data_seed).permutation(len(frame))
    out, start = {}, 0
    for name, n in sizes.items():
        out[name] = frame.iloc[order[start: start + n]].reset_index(drop=True)
        start += n
    return out


# -- training ----------------------------------------------------------------------------------------------------------


def train_config(recipe: dict, seed: int, max_length: int):
    from .training import TrainConfig

    return TrainConfig(**{**recipe, "seed": int(seed), "device": "cpu", "max_length": max_length})


def fit(model, tokenizer, train: pd.DataFrame, validation: pd.DataFrame, cfg) -> None:
    """Train ``model`` in place through the project's training function (the bed's one call into it)."""
    from .training import train_regressor

    train_regressor(model, tokenizer, train, validation, cfg, log=lambda _m: None, progress=False)


def held_out_metrics(model, tokenizer, test: pd.DataFrame, cfg) -> dict[str, float]:
    from .training import evaluate

    return evaluate(model, tokenizer, test, cfg, "cpu")[0]


def base_key(cfg: BedConfig) -> str:
    """What the base model depends on (not the modes, ks, fine-tune seeds or selectors), as a short hash."""
    import hashlib
    import json

    from pathlib import Path

    from .files import code_hash

    keys = ("n_train", "n_validation", "n_test", "pool", "data_seed", "model_seed", "model", "max_length", "base")
    # and the code that builds and trains it (tokenizer/vocabulary, model, training loop): an edit retrains the base
    identity = {k: getattr(cfg, k) for k in keys} | {"code": code_hash(__file__, root=Path(__file__).parents[1], module="molinfluence.bed")}
    text = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def untrained_model(cfg: BedConfig, molecules: pd.DataFrame):
    """(random MoLFormer regressor, tokenizer) before training: same ``cfg``, same weights."""
    from .encoder import random_encoder
    from .regressor import MolformerRegressor

    encoder, tokenizer, _ = random_encoder(molecules["smiles"], seed=cfg.model_seed, max_length=cfg.max_length,
                                           **cfg.model)
    return MolformerRegressor(encoder), tokenizer


def base_model(cfg: BedConfig, molecules: pd.DataFrame, splits: dict[str, pd.DataFrame], cache_dir=None):
    """(trained base model, tokenizer): a random MoLFormer (``model``, weights seed ``model_seed``) on MoLFormer's
    published vocabulary (independent of the pool), trained on the train split with the ``base`` recipe. With
    ``cache_dir`` the trained weights are kept there (``base-<base_key>.pt``, loaded with ``weights_only=True``) and
    reused by later runs with the same base settings; every mode shares the one base model."""
    from pathlib import Path

    import torch

    from .files import atomic_path

    model, tokenizer = untrained_model(cfg, molecules)
    cached = Path(cache_dir) / f"base-{base_key(cfg)}.pt" if cache_dir else None
    if cached is not None and cached.exists():
        model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
        return model, tokenizer
    fit(model, tokenizer, splits["train"], splits["validation"], train_config(cfg.base, cfg.model_seed, cfg.max_length))
    if cached is not None:
        with atomic_path(cached) as tmp:
            torch.save(model.state_dict(), tmp)
    return model, tokenizer


# -- the bed -----------------------------------------------------------------------------------------------------------

_STATE: dict[str, Any] = {}
"""What a fine-tune worker holds: cfg, splits, train label SD, base model, tokenizer (set by :func:`_start`)."""


def _start(cfg_dict: dict[str, Any], state_dict: dict | None = None, model=None, tokenizer=None) -> None:
    """Prepare this process for :func:`_finetune_task` (a worker rebuilds the base model from its weights)."""
    import torch

    cfg = BedConfig.from_dict(cfg_dict)
    torch.set_num_threads(int(cfg.threads))
    molecules = bed_molecules()
    splits = split_bed(molecules, cfg)
    if model is None:
        model, tokenizer = untrained_model(cfg, molecules)
        model.load_state_dict(state_dict)
    _STATE.update(cfg=cfg, splits=splits, sd=float(splits["train"]["label"].std()), model=model, tokenizer=tokenizer)


def _finetune_task(mode: str, seed: int, picks: dict[tuple[str, int], np.ndarray]) -> dict[tuple[str, int], float]:
    """Test MSE after fine-tuning (continue from the base model, fine-tune seed ``seed``) on train + each pick."""
    cfg, splits, model, tokenizer = (_STATE[k] for k in ("cfg", "splits", "model", "tokenizer"))
    pool, _ = plant(splits["pool"], mode, cfg.corrupted, cfg.data_seed, _STATE["sd"], offset_sd=cfg.offset_sd,
                    noise_sd=cfg.noise_sd)
    ft = train_config(cfg.finetune, seed, cfg.max_length)
    out = {}
    for key, chosen in picks.items():
        tuned = copy.deepcopy(model)
        added = pool.iloc[np.asarray(chosen)][["smiles", "label"]]
        fit(tuned, tokenizer, pd.concat([splits["train"], added], ignore_index=True), splits["validation"], ft)
        out[key] = held_out_metrics(tuned, tokenizer, splits["test"], ft)["mse"]
    return out



def selector_names(cfg: BedConfig, expensive: bool = False) -> list[str]:
    from .selectors import SELECTORS

    if cfg.selectors is not None:
        unknown = [s for s in cfg.selectors if s not in SELECTORS]
        if unknown:
            raise ValueError(f"bed.selectors: unknown {unknown}; choose from {sorted(SELECTORS)}")
        return list(cfg.selectors)
    return [s for s in SELECTORS if expensive or s not in EXPENSIVE]


def run_bed(cfg: BedConfig, *, expensive: bool = False, cache_dir=None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the bed; returns ``{"r2", "base_mse", "rows": DataFrame}`` with one row per (mode, k, arm): columns
    mode, k, arm, auroc, clean_share (of the first k), clean_quarter (of the pool's top quarter), mse (mean over
    seeds), delta (vs random), p, judged. ``log`` gets progress and the finished tables."""
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(int(cfg.threads))
    try:
        return _run_bed(cfg, expensive, cache_dir, log)
    finally:
        torch.set_num_threads(threads_before)


def _run_bed(cfg: BedConfig, expensive: bool, cache_dir, log: Callable[[str], None]) -> dict[str, Any]:
    from .influence import InfluenceArgs
    from .selectors import SELECTORS, PoolContext

    t_start = time.perf_counter()
    molecules = bed_molecules()
    splits = split_bed(molecules, cfg)
    model, tokenizer = base_model(cfg, molecules, splits, cache_dir)
    eval_cfg = train_config(cfg.base, cfg.model_seed, cfg.max_length)
    base = held_out_metrics(model, tokenizer, splits["test"], eval_cfg)
    sd = float(splits["train"]["label"].std())
    log(f"bed: {len(molecules)} ZINC molecules, Crippen logP labels (train SD {sd:.2f}); train {cfg.n_train}, "
        f"validation {cfg.n_validation}, test {cfg.n_test}, pool {cfg.pool} ({cfg.corrupted:.0%} corrupted)")
    log(f"base model: test R² {base['r2']:.3f}, MSE {base['mse']:.4f} ({time.perf_counter() - t_start:.0f} s)")
    names = selector_names(cfg, expensive)
    kmax = max(int(k) for k in cfg.ks)
    planted, orders, tasks, group_scores = {}, {}, [], {}
    subsets = group_subsets(cfg)
    shared_ihvp = None
    for mode in cfg.modes:
        pool, bad = plant(splits["pool"], mode, cfg.corrupted, cfg.data_seed, sd, offset_sd=cfg.offset_sd,
                          noise_sd=cfg.noise_sd)
        planted[mode] = (pool, ~bad)
        ctx = PoolContext(model, tokenizer, splits["train"], splits["validation"], pool,
                          InfluenceArgs.from_dict(cfg.influence),
                          finetune=train_config(cfg.finetune, cfg.model_seed, cfg.max_length), seed=cfg.data_seed,
                          ihvp=shared_ihvp)
        for name in names:
            t0 = time.perf_counter()
            k_rank = kmax if name == "adaptive_greedy" else len(pool)
            orders[mode, name] = np.asarray(SELECTORS[name](ctx, k_rank))
            if cfg.groups and hasattr(SELECTORS[name], "score"):
                group_scores[mode, name] = np.asarray(SELECTORS[name].score(ctx), dtype=np.float64)
            log(f"  [{mode}] ranked by {name} ({time.perf_counter() - t0:.1f} s)")
        shared_ihvp = ctx.ihvp  # the base IHVP depends on train and validation only: every mode reuses it
        for seed in range(cfg.seeds):
            picks = {}
            for k in map(int, cfg.ks):
                controls = control_picks(len(pool), ~bad, k, [cfg.data_seed, seed, k])
                picks.update({(arm, k): rows for arm, rows in controls.items()})
                picks.update({(name, k): orders[mode, name][:k] for name in names})
            if subsets is not None:
                picks[GROUP_BASELINE, 0] = np.array([], dtype=np.int64)
                for subset, members in subsets.groupby("subset")["ext_index"]:
                    picks[f"{GROUP}{subset}", len(members)] = members.to_numpy()
            tasks.append((mode, seed, picks))
    t_ft = time.perf_counter()
    n_ft = sum(len(t[2]) for t in tasks)
    log(f"fine-tunes: {n_ft} ({len(tasks)} tasks of (mode, seed)) on {cfg.workers} worker(s)")
    mse: dict[tuple[str, str, int], list[float]] = {}
    if cfg.workers <= 1:
        _start(cfg.to_dict(), model=model, tokenizer=tokenizer)
        results = (_finetune_task(*t) for t in tasks)
        for (mode, seed, _), res in zip(tasks, results):
            for (arm, k), v in res.items():
                mse.setdefault((mode, arm, k), []).append(v)
            log(f"  [{mode}] fine-tune seed {seed} done ({time.perf_counter() - t_ft:.0f} s)")
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        with ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
                                 initargs=(cfg.to_dict(), state)) as pool_ex:
            futures = [pool_ex.submit(_finetune_task, *t) for t in tasks]
            for (mode, seed, _), fut in zip(tasks, futures):  # in task order: seeds stay paired and ordered
                for (arm, k), v in fut.result().items():
                    mse.setdefault((mode, arm, k), []).append(v)
                log(f"  [{mode}] fine-tune seed {seed} done ({time.perf_counter() - t_ft:.0f} s)")
    log(f"fine-tunes took {time.perf_counter() - t_ft:.0f} s ({(time.perf_counter() - t_ft) / n_ft:.1f} s each, "
        f"{cfg.workers} worker(s))")
    rows = []
    for mode in cfg.modes:
        pool, clean = planted[mode]
        shift = np.abs(pool["label"].to_numpy() - splits["pool"]["label"].to_numpy())[~clean].mean()
        rows += judge({name: orders[mode, name] for name in names}, clean,
                      {(arm, k): v for (m, arm, k), v in mse.items() if m == mode}, cfg.ks, cfg.alpha, mode=mode,
                      mean_shift=float(shift))
    table = pd.DataFrame(rows)
    groups = None
    if subsets is not None:
        groups = pd.concat([group_summary(subsets, mse, mode, {n: v for (m, n), v in group_scores.items() if m == mode})
                            .assign(mode=mode) for mode in cfg.modes], ignore_index=True)
    return {"r2": float(base["r2"]), "base_mse": float(base["mse"]), "rows": table, "groups": groups,
            "seconds": time.perf_counter() - t_start}


GROUP = "group:"
GROUP_BASELINE = "group:baseline"


def group_subsets(cfg: BedConfig) -> pd.DataFrame | None:
    """The group validation's random subsets of the pool (``ext_index`` = pool position), or None when off."""
    if not cfg.groups:
        return None
    from .validation.groups import draw_subsets

    return draw_subsets(np.arange(cfg.pool), cfg.group_ks or cfg.ks, cfg.groups, cfg.data_seed)


def group_summary(subsets: pd.DataFrame, mse: dict, mode: str, scores: dict[str, np.ndarray]) -> pd.DataFrame:
    """One mode's group validation: each selector's summed score vs the measured Δ test MSE over the subsets."""
    from .validation.groups import BASELINE, group_table, predicted_effects

    runs = []
    for (m, arm, k), values in mse.items():
        if m != mode or not arm.startswith(GROUP):
            continue
        subset = BASELINE if arm == GROUP_BASELINE else int(arm.removeprefix(GROUP))
        runs += [{"subset": subset, "k": k, "seed": seed, "target_loss": v} for seed, v in enumerate(values)]
    predicted = predicted_effects(subsets, {name: pd.Series(v) for name, v in scores.items()})
    return group_table(predicted, pd.DataFrame(runs))[0]


def report(result: dict[str, Any], cfg: BedConfig) -> str:
    """The bed's printed tables: per mode the oracle margin at each k (or "cannot judge"), then per selector."""
    lines = [f"bed base model: test R² {result['r2']:.3f} (MSE {result['base_mse']:.4f}); fine-tunes continue from it, "
             f"{cfg.seeds} seeds, paired with random picks at the same k and seed (two-sided paired t-test)"]
    table = result["rows"]
    for mode, part in table.groupby("mode", sort=False):
        lines.append("")
        lines.append(f"mode {mode} (mean |label shift| of a corrupted row {part['mean_shift'].iloc[0]:.2f})")
        for k, pk in part.groupby("k", sort=True):
            o = pk[pk.arm == "oracle"].iloc[0]
            r = pk[pk.arm == "random"].iloc[0]
            verdict = "judges" if o.judged else "CANNOT JUDGE (oracle margin not significant)"
            lines.append(f"  k={k}: random MSE {r.mse:.4f} ± {r.sd:.4f}; oracle ΔMSE {o.delta:+.4f} (p {o.p:.3f}) "
                         f"-> the bed {verdict} at this k")
        lines.append(f"  {'selector':20s} {'AUROC':>6s} {'clean@¼':>8s} " + " ".join(
            f"{'clean@' + str(k):>9s} {'ΔMSE@' + str(k):>9s} {'p':>6s}" for k in sorted(part.k.unique())))
        for arm in [a for a in part.arm.unique() if a not in ("random", "oracle")]:
            cells = []
            for k in sorted(part.k.unique()):
                row = part[(part.arm == arm) & (part.k == k)].iloc[0]
                cells.append(f"{row.clean_share:9.2f} {row.delta:+9.4f} {row.p:6.3f}")
            au, quarter = part[part.arm == arm][["auroc", "clean_quarter"]].iloc[0]
            lines.append(f"  {arm:20s} {au:6.3f} {quarter:8.2f} " + " ".join(cells))
        groups = result.get("groups")
        if groups is not None:
            g = groups[groups["mode"] == mode]
            lines.append(f"  group validation (Δ test MSE of {int(g.subsets.max())} random subsets vs each selector's "
                         f"summed score; Spearman [95 % CI]; positive = agreement; noise ceiling "
                         f"{g.ceiling.iloc[-1]:.2f}):")
            for sel, gs in g.groupby("selector", sort=False):
                cells = [f"k={r.k}: {r.spearman:+.2f} [{r.spearman_lo:+.2f}, {r.spearman_hi:+.2f}]"
                         for r in gs.itertuples()]
                lines.append(f"    {sel:20s} " + "   ".join(cells))
    return "\n".join(lines)
