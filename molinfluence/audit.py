"""Planted pools and their verdict: the statistics of the test bed (:mod:`molinfluence.bed`) and of the planted-label
audit (issue 16, item 4), which asks on *your* data and model whether a selector avoids known-bad labels.

Shared with the bed: :func:`plant` (``swap``, ``offset`` or ``noise`` corruption of a seeded share), :func:`auroc`,
:func:`paired`, :func:`control_picks` (the random and oracle arms of one seed) and :func:`judge` (the verdict rows).

The audit, on the user's own prepared training split (the ``audit:`` config section, opt-in; workflow/rules/audit.smk):

1. :func:`split_pool` holds out a seeded part of the training split as a pool whose labels are known and plants a
   seeded share of it; the rest is the audit's training split, on which a base model is trained with the base recipe
   (the pool never reaches it). :func:`check_k` refuses a k the oracle cannot fill with clean rows.
2. Every selector ranks the pool with that base model (``scripts/rank_pool.py``, as the pipeline ranks the real pool).
3. :func:`molinfluence.runs.finetune_arm` adds an arm's k pool rows (:func:`picks`: a selector's first k, k random
   rows, the oracle's k clean rows) to the audit's training split and fine-tunes over seeds through the project's
   training function.
4. :func:`summarise` judges them with :func:`judge`, the bed's own verdict: per selector AUROC (clean ranked before
   corrupted), clean share of its first k and of its top quarter, ΔMSE vs random paired over seeds; the oracle's margin
   over random decides, per k, whether a ΔMSE can be judged at all. :func:`markdown` is the report.

This module stands alone (numpy, pandas, scipy): the workflow's split, check and summary jobs import it without the
model or training code, so an edit there reruns none of them.

The pool table (``results/audit/pool.csv``): ``ext_index`` (0..n−1, the pool position), ``smiles``, ``label`` (what the
selectors and the fine-tunes see: planted), ``true_label`` (the training split's), ``corrupted`` and the training
split's other columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .config import ConfigError

__all__ = ["MODES", "plant", "auroc", "paired", "control_picks", "judge", "split_pool", "clean_mask", "check_k", "picks",
           "selection_frame", "ranking_order", "summarise", "markdown", "ARM_COLUMNS"]

MODES = ("swap", "offset", "noise")
"""How :func:`plant` corrupts a pool."""

ARM_COLUMNS = ("arm", "k", "seed", "mse", "rmse", "mae", "r2", "n_added", "clean_added")
"""The columns of one fine-tune arm's table (one row per seed)."""


# -- planted pools and the verdict (shared with the test bed) ---------------------------------------------------------


def plant(pool: pd.DataFrame, mode: str, share: float, seed: int, sd: float, *, offset_sd: float = 2.0,
          noise_sd: float = 2.0) -> tuple[pd.DataFrame, np.ndarray]:
    """(pool with planted labels, boolean mask of the corrupted rows): exactly ``round(share · len(pool))`` rows,
    chosen with ``seed``, are corrupted by ``mode``; the others keep their labels."""
    if mode not in MODES:
        raise ValueError(f"unknown corruption mode {mode!r}; choose from {list(MODES)}")
    rng = np.random.default_rng([int(seed), MODES.index(mode)])
    n = len(pool)
    n_bad = int(round(share * n))
    bad = np.zeros(n, dtype=bool)
    idx = np.sort(rng.permutation(n)[:n_bad])
    bad[idx] = True
    labels = pool["label"].to_numpy(dtype=np.float64).copy()
    if mode == "swap":
        if n_bad < 2:
            raise ValueError("swap needs at least 2 corrupted rows")
        # rank rotation by half: the corrupted row of label rank i gets the label of rank (i + n/2) mod n among the
        # corrupted rows — a permutation without fixed points that moves every label by about half the distribution
        # (a random permutation leaves many labels near their own on a narrow label distribution such as ZINC logP)
        by_label = idx[np.lexsort((idx, labels[idx]))]
        labels[by_label] = labels[np.roll(by_label, -(n_bad // 2))]
    elif mode == "offset":
        labels[idx] += offset_sd * sd  # a systematic shift (another assay, a unit slip): the model's bias moves
    else:
        labels[idx] += rng.normal(0.0, noise_sd * sd, n_bad)
    return pool.assign(label=labels), bad


def auroc(order: np.ndarray, clean: np.ndarray) -> float:
    """P(a clean row is ranked before a corrupted one) for a ranking ``order`` (pool positions, most recommended
    first; rows it leaves out share the last place; ties count half). 0.5 = chance, 1 = every clean row first."""
    from scipy.stats import rankdata

    clean = np.asarray(clean, dtype=bool)
    place = np.full(len(clean), float(len(order)))
    place[np.asarray(order, dtype=int)] = np.arange(len(order))
    r = rankdata(-place)  # high = early
    n1, n0 = int(clean.sum()), int((~clean).sum())
    return float((r[clean].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def paired(values: Sequence[float], control: Sequence[float]) -> tuple[float, float]:
    """(mean of ``values − control``, two-sided paired t-test p); p is NaN if every difference is equal."""
    from scipy.stats import ttest_rel

    a, b = np.asarray(values, dtype=np.float64), np.asarray(control, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired: need two equal-length series of ≥ 2 values, got {a.shape} and {b.shape}")
    d = a - b
    if np.all(d == d[0]):
        return float(d.mean()), float("nan")
    return float(d.mean()), float(ttest_rel(a, b).pvalue)


def control_picks(n: int, clean: np.ndarray, k: int, draw: Sequence[int]) -> dict[str, np.ndarray]:
    """The two controls of one fine-tune seed at ``k`` (pool positions), drawn by ``default_rng(draw)``: ``random`` (k
    rows of the whole pool) and ``oracle`` (k clean rows; ``clean`` is the pool's boolean mask)."""
    rng = np.random.default_rng(list(draw))
    return {"random": rng.permutation(n)[:k], "oracle": rng.permutation(np.flatnonzero(clean))[:k]}


def judge(orders: Mapping[str, np.ndarray], clean: np.ndarray, mse: Mapping[tuple[str, int], Sequence[float]],
          ks: Sequence[int], alpha: float, *, mode: str, mean_shift: float) -> list[dict[str, Any]]:
    """The verdict rows of one planted pool (the bed's per mode, the audit's), a pure function of its inputs.

    ``orders``: selector -> its ranking of the pool (positions, most recommended first); ``clean``: the pool's boolean
    mask of untouched rows; ``mse``: (arm, k) -> test MSE per fine-tune seed, in the same seed order for every arm,
    with the arms ``random``, ``oracle`` and every selector. One row per (k, arm), arms in the order random, oracle,
    the selectors: ``auroc`` (clean ranked before corrupted; NaN for the controls), ``clean_share`` (of the first k;
    1 for the oracle), ``clean_quarter`` (of the first quarter of the pool), ``mse`` and ``sd`` over seeds, ``delta``
    and ``p`` (paired with random at the same k and seed), and ``judged``: the oracle beats random at this k with
    p < ``alpha`` — where it does not, no selector's ΔMSE can be told from noise (the verdict CANNOT JUDGE)."""
    clean = np.asarray(clean, dtype=bool)
    rows = []
    for k in map(int, ks):
        ref = mse[("random", k)]
        _, p_oracle = paired(mse[("oracle", k)], ref)
        judged = bool(p_oracle < alpha and np.mean(mse[("oracle", k)]) < np.mean(ref))
        for arm in ["random", "oracle", *orders]:
            vals = mse[(arm, k)]
            delta, p = paired(vals, ref) if arm != "random" else (0.0, float("nan"))
            if arm in orders:
                order = np.asarray(orders[arm], dtype=int)
                au = auroc(order, clean)
                share = float(clean[order[:k]].mean())
                quarter = float(clean[order[: len(clean) // 4]].mean())
            else:
                au = float("nan")
                share = quarter = 1.0 if arm == "oracle" else float("nan")
            rows.append(dict(mode=mode, k=k, arm=arm, auroc=au, clean_share=share, clean_quarter=quarter,
                             mse=float(np.mean(vals)), sd=float(np.std(vals, ddof=1)), delta=delta, p=p, judged=judged,
                             mean_shift=float(mean_shift)))
    return rows


# -- the audit ---------------------------------------------------------------------------------------------------------


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


def clean_mask(pool: pd.DataFrame) -> np.ndarray:
    """The audit pool's boolean mask of clean (untouched) rows, from its ``corrupted`` column."""
    if "corrupted" not in pool.columns:
        raise ValueError(f"the audit pool lacks its 'corrupted' column; has {list(pool.columns)}")
    return ~pool["corrupted"].astype(bool).to_numpy()


def check_k(pool: pd.DataFrame, ks: Iterable[int], source: str = "the audit pool") -> int:
    """The pool's clean rows, after checking that every k of ``ks`` fits in them (the oracle adds k clean rows): a
    :class:`ConfigError` naming ``audit.k`` otherwise."""
    clean = clean_mask(pool)
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
    :func:`control_picks` with ``(draw_seed, seed, k)``, a selector its ranking's first k."""
    check_k(pool, [k])
    if arm in ("random", "oracle"):
        return control_picks(len(pool), clean_mask(pool), int(k), [int(draw_seed), int(seed), int(k)])[arm]
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


def summarise(pool: pd.DataFrame, rankings: Mapping[str, pd.DataFrame], runs: pd.DataFrame, ks: Sequence[int],
              alpha: float, mode: str) -> pd.DataFrame:
    """The audit's table: :func:`judge` of the selectors' rankings (``rankings``: name -> ranking
    table, in report order) and the fine-tunes ``runs`` (every arm's :data:`ARM_COLUMNS` rows, concatenated). Every arm
    must have the same seeds at every k (they are paired with random by seed). Columns: those of the bed's rows
    plus ``base_rate`` (the pool's clean share)."""
    clean = clean_mask(pool)
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
    clean = clean_mask(pool)
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
