"""The planted-label audit (issue 16, item 4): does a selector avoid known-bad data on *your* model and data?

On the user's own prepared training split (the ``audit:`` config section, opt-in):

1. :func:`split_pool` holds out a seeded part of the training split as a pool whose labels are known, and corrupts a
   seeded share of it with :func:`molinfluence.bed.plant` (``swap``, ``offset`` or ``noise``); the rest is the audit's
   training split, on which a base model is trained with the base recipe (the pool never reaches it).
2. Every selector ranks the pool with that base model (``scripts/rank_pool.py``, as the pipeline ranks the real pool).
3. :func:`finetune_arm` adds k pool rows to the audit's training split and fine-tunes (continue from the audit base,
   the fine-tune recipe, every seed) through the project's training function (:func:`molinfluence.runs.train_run`):
   each selector's first k, k random rows and the oracle's k clean rows (:func:`molinfluence.bed.control_picks`, one
   draw per seed and k).
4. :func:`summarise` judges them with :func:`molinfluence.bed.judge`, the test bed's own verdict: per selector AUROC
   (clean ranked before corrupted), clean share of its first k and of its top quarter, ΔMSE vs random paired over
   seeds; the oracle's margin over random decides, per k, whether the audit can judge a ΔMSE at all.

The pool table (``results/audit/pool.csv``): ``ext_index`` (0..n−1, the pool position), ``smiles``, ``label`` (what the
selectors and the fine-tunes see: planted), ``true_label`` (the training split's), ``corrupted`` and the training
split's other columns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .bed import MODES, control_picks, judge, plant
from .config import ConfigError

__all__ = ["split_pool", "check_k", "picks", "selection_frame", "finetune_arm", "ranking_order", "summarise", "markdown",
           "ARM_COLUMNS"]

ARM_COLUMNS = ("arm", "k", "seed", "mse", "rmse", "mae", "r2", "n_added", "clean_added")
"""The columns of one fine-tune arm's table (one row per seed)."""


def split_pool(train: pd.DataFrame, *, pool_fraction: float | None = 0.25,
               pool_size: int | None = None, corrupted: float = 0.5, mode: str = "swap", seed: int = 0,
               offset_sd: float = 2.0, noise_sd: float = 2.0, min_train: int = 10,
               source: str = "the training split") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the audit's training split, the planted pool) from the prepared training split ``train`` (columns smiles,
    label, ...): ``pool_size`` rows (else ``round(pool_fraction · n)``) drawn with ``seed``, of which
    ``round(corrupted · pool)`` are corrupted by ``mode`` (label SDs of the audit's training split). Both keep the
    training split's row order. Settings that cannot work raise :class:`ConfigError` naming the ``audit.`` key; the
    pool does not depend on ``audit.k`` (:func:`check_k` checks it against the pool)."""
    if mode not in MODES:
        raise ConfigError(f"config key `audit.mode`: {mode!r} is not allowed; allowed values: {', '.join(MODES)}")
    missing = {"smiles", "label"} - set(train.columns)
    if missing:
        raise ValueError(f"{source}: lacks column(s) {sorted(missing)}; has {list(train.columns)}")
    n = len(train)
    if pool_size is not None:
        n_pool, key = int(pool_size), f"`audit.pool_size` = {pool_size}"
    else:
        n_pool, key = int(round(float(pool_fraction) * n)), f"`audit.pool_fraction` = {pool_fraction}"
    if n_pool < 4 or n - n_pool < min_train:
        raise ConfigError(f"config key {key}: a pool of {n_pool} of the {n} rows of {source} leaves {n - n_pool} to "
                          f"train on; the audit needs a pool of at least 4 rows and at least {min_train} training rows")
    n_bad = int(round(corrupted * n_pool))
    if not 0 < n_bad < n_pool or (mode == "swap" and n_bad < 2):
        raise ConfigError(f"config key `audit.corrupted` = {corrupted}: {n_bad} corrupted of a {n_pool}-row pool; the "
                          "audit needs clean and corrupted rows (swap: at least 2 corrupted)")
    in_pool = np.zeros(n, dtype=bool)
    in_pool[np.random.default_rng(int(seed)).permutation(n)[:n_pool]] = True
    rest = train.loc[~in_pool].reset_index(drop=True)
    held = train.loc[in_pool].reset_index(drop=True)
    sd = float(rest["label"].std())
    planted, bad = plant(held, mode, corrupted, seed, sd, offset_sd=offset_sd, noise_sd=noise_sd)
    pool = planted.assign(true_label=held["label"].to_numpy(dtype=np.float64), corrupted=bad)
    pool.insert(0, "ext_index", np.arange(n_pool))
    return rest, pool


def _clean(pool: pd.DataFrame) -> np.ndarray:
    if "corrupted" not in pool.columns:
        raise ValueError(f"the audit pool lacks its 'corrupted' column; has {list(pool.columns)}")
    return ~pool["corrupted"].astype(bool).to_numpy()


def check_k(pool: pd.DataFrame, ks: Iterable[int], source: str = "the audit pool") -> int:
    """The pool's clean rows, after checking that every k of ``ks`` fits in them (the oracle adds k clean rows): a
    :class:`ConfigError` naming ``audit.k`` otherwise."""
    clean = _clean(pool)
    too_big = sorted(int(k) for k in ks if int(k) > clean.sum())
    if too_big:
        raise ConfigError(
            f"config key `audit.k`: {too_big} larger than the {int(clean.sum())} clean rows of {source} ({len(pool)} "
            f"rows, {int((~clean).sum())} corrupted): the oracle adds k clean rows. Lower audit.k, or enlarge the pool "
            "(audit.pool_fraction, audit.pool_size) or lower audit.corrupted")
    return int(clean.sum())


def ranking_order(pool: pd.DataFrame, ranking: pd.DataFrame, source: str = "the ranking") -> np.ndarray:
    """A selector's ranking table (``ext_index``, ``rank``; scripts/rank_pool.py) as pool positions, first first."""
    for column in ("ext_index", "rank"):
        if column not in ranking.columns:
            raise ValueError(f"{source}: lacks column {column!r}; has {list(ranking.columns)}")
    ranked = ranking.sort_values("rank", kind="stable")["ext_index"].to_numpy(dtype=np.int64)
    bad = ranked[(ranked < 0) | (ranked >= len(pool))]
    if bad.size or len(np.unique(ranked)) != len(ranked):
        raise ValueError(f"{source}: ext_index must name distinct rows of the {len(pool)}-row audit pool")
    return ranked


def picks(pool: pd.DataFrame, arm: str, k: int, seed: int, draw_seed: int,
          ranking: pd.DataFrame | None = None) -> np.ndarray:
    """The pool positions an arm adds at ``k`` for fine-tune ``seed``: ``random`` and ``oracle`` drawn by
    :func:`molinfluence.bed.control_picks` with ``(draw_seed, seed, k)``, a selector its ranking's first k."""
    check_k(pool, [k])
    if arm in ("random", "oracle"):
        return control_picks(len(pool), _clean(pool), int(k), [int(draw_seed), int(seed), int(k)])[arm]
    if ranking is None:
        raise ValueError(f"audit arm {arm!r} is a selector: give its ranking")
    order = ranking_order(pool, ranking, f"the ranking of {arm}")
    if len(order) < k:
        raise ValueError(f"the ranking of {arm} has {len(order)} rows; audit.k needs {k}")
    return order[:k]


def selection_frame(pool: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """The rows to add, as a selection (ext_index, smiles, label as planted, weight 1)."""
    picked = pool.iloc[np.asarray(rows, dtype=int)]
    return picked[["ext_index", "smiles", "label"]].reset_index(drop=True).assign(weight=1.0)


def finetune_arm(arm: str, k: int, seeds: Iterable[int], *, start: str, spec: Mapping[str, Any],
                 recipe: Mapping[str, Any], splits: Any, pool: pd.DataFrame, draw_seed: int,
                 ranking: pd.DataFrame | None = None, log: Callable[[str], None] = print,
                 progress: bool = False) -> pd.DataFrame:
    """Fine-tune every seed of one arm at ``k`` (continue from the audit base ``start``, ``recipe`` without its seed,
    the audit's ``splits``: :class:`molinfluence.runs.Splits`) through :func:`molinfluence.runs.train_run`; one row
    per seed with its test metrics and how many of the added rows were clean (:data:`ARM_COLUMNS`)."""
    from .runs import train_run
    from .training import TrainConfig

    clean = _clean(pool)
    rows = []
    for seed in seeds:
        chosen = picks(pool, arm, k, seed, draw_seed, ranking)
        cfg = TrainConfig.from_dict({**recipe, "seed": int(seed)})
        result = train_run("continue", start, spec, cfg, splits, selection=selection_frame(pool, chosen),
                           selection_source=f"audit arm {arm} k={k}", log=log, progress=progress)
        m = result.metrics
        rows.append(dict(arm=arm, k=int(k), seed=int(seed), mse=m["mse"], rmse=m["rmse"], mae=m["mae"], r2=m["r2"],
                         n_added=m["n_added"], clean_added=int(clean[chosen].sum())))
        log(f"{arm} k={k} seed {seed}: test MSE {m['mse']:.4f} ({rows[-1]['clean_added']} of {k} added rows clean)")
    return pd.DataFrame(rows, columns=list(ARM_COLUMNS))


def summarise(pool: pd.DataFrame, rankings: Mapping[str, pd.DataFrame], runs: pd.DataFrame, ks: Sequence[int],
              alpha: float, mode: str) -> pd.DataFrame:
    """The audit's table: :func:`molinfluence.bed.judge` of the selectors' rankings (``rankings``: name -> ranking
    table, in report order) and the fine-tunes ``runs`` (every arm's :data:`ARM_COLUMNS` rows, concatenated). Every arm
    must have the same seeds at every k (they are paired with random by seed). Columns: those of the bed's rows
    plus ``base_rate`` (the pool's clean share)."""
    clean = _clean(pool)
    runs = runs.sort_values(["arm", "k", "seed"], kind="stable")
    mse: dict[tuple[str, int], list[float]] = {}
    seeds: dict[tuple[str, int], list[int]] = {}
    for (arm, k), part in runs.groupby(["arm", "k"], sort=False):
        mse[arm, int(k)] = part["mse"].astype(float).tolist()
        seeds[arm, int(k)] = part["seed"].astype(int).tolist()
    for arm in ["random", "oracle", *rankings]:
        for k in map(int, ks):
            if (arm, k) not in mse:
                raise ValueError(f"audit: no fine-tunes of arm {arm!r} at k = {k}")
            if seeds[arm, k] != seeds["random", k]:
                raise ValueError(f"audit: arm {arm!r} at k = {k} has seeds {seeds[arm, k]}, random has "
                                 f"{seeds['random', k]}: they are paired by seed")
    orders = {name: ranking_order(pool, table, f"the ranking of {name}") for name, table in rankings.items()}
    labels, truth = pool["label"].to_numpy(dtype=np.float64), pool["true_label"].to_numpy(dtype=np.float64)
    shift = float(np.abs(labels - truth)[~clean].mean())
    return pd.DataFrame(judge(orders, clean, mse, ks, alpha, mode=mode, mean_shift=shift)).assign(
        base_rate=float(clean.mean()))


def _f(value: float, spec: str) -> str:
    return "–" if value is None or not np.isfinite(value) else format(value, spec)


def markdown(table: pd.DataFrame, *, base: Mapping[str, Any], pool: pd.DataFrame, n_train: int, seeds: Sequence[int],
             alpha: float) -> str:
    """The audit's report (``audit.md``): what was planted, the oracle margin per k (or CANNOT JUDGE), then per
    selector its AUROC, clean share of the top quarter, and at each k its clean share and ΔMSE vs random with p."""
    clean = _clean(pool)
    mode = str(table["mode"].iloc[0])
    ks = sorted(int(k) for k in table["k"].unique())
    lines = [
        "# Planted-label audit",
        "",
        f"Pool: {len(pool)} rows held out of the training split ({len(pool) - int(clean.sum())} corrupted by `{mode}`, "
        f"mean |label shift| {table['mean_shift'].iloc[0]:.2f}; base rate {clean.mean():.2f} clean). Base model trained "
        f"on the other {n_train} rows: test MSE {base['mse']:.4f}, R² {base['r2']:.3f}. Each arm adds k pool rows and "
        f"fine-tunes from that base ({len(seeds)} seeds: {', '.join(map(str, seeds))}), paired with k random pool rows "
        "at the same k and seed (two-sided paired t-test).",
        "",
        "## Can the audit judge a ΔMSE? (the oracle adds k clean rows)",
        "",
        "| k | random MSE (± sd) | oracle ΔMSE | p | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for k in ks:
        part = table[table["k"] == k].set_index("arm")
        r, o = part.loc["random"], part.loc["oracle"]
        verdict = "judges" if o["judged"] else f"CANNOT JUDGE (oracle not better with p < {alpha})"
        lines.append(f"| {k} | {r['mse']:.4f} ± {r['sd']:.4f} | {o['delta']:+.4f} | {_f(o['p'], '.3f')} | {verdict} |")
    lines += [
        "",
        "## Selectors",
        "",
        "AUROC: the chance a clean row is ranked before a corrupted one (0.5 = chance). clean@k: clean share of the first "
        "k. ΔMSE@k: test MSE minus random's at the same k and seed (negative = better), with its p; where the oracle "
        "cannot be told from random it says CANNOT JUDGE.",
        "",
        "| selector | AUROC | clean share of top quarter | " + " | ".join(f"clean@{k} | ΔMSE@{k} (p)" for k in ks) + " |",
        "| --- | --- | --- | " + " | ".join("--- | ---" for _ in ks) + " |",
    ]
    for arm in [a for a in table["arm"].unique() if a not in ("random", "oracle")]:
        part = table[table["arm"] == arm].set_index("k")
        cells = []
        for k in ks:
            row = part.loc[k]
            delta = f"{row['delta']:+.4f} ({_f(row['p'], '.3f')})"
            cells.append(f"{row['clean_share']:.2f} | " + (delta if row["judged"] else f"{delta} CANNOT JUDGE"))
        first = part.iloc[0]
        lines.append(f"| `{arm}` | {first['auroc']:.3f} | {first['clean_quarter']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
