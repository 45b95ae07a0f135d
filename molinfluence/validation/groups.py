"""Group validation (issue 16): do the selectors predict what adding a *group* of pool molecules does to the real
fine-tune? The linear datamodeling score (LDS) for additions.

A top-k selection relies on group effects, not on one sample's: the sum of k first-order scores is a prediction of
what adding those k molecules together does, and a believability score (a residual, a neighbour disagreement) summed
over a group says how much of it is suspect. This module measures the actual effect and correlates.

- **Subsets** (:func:`draw_subsets`): ``per_k`` seeded random subsets of the pool at each size k (``groups.k``),
  each a set of ``ext_index`` values; the draws for one k do not depend on the other sizes.
- **Actual effect** (:func:`measure`): for each subset S and fine-tune seed s, **Δ(S, s) = L_target(θ_s(S)) −
  L_target(θ_s(∅))**: the grid's own fine-tune (``continue`` from the base model, the ``finetune`` recipe, early
  stopping included) with S added as ordinary training rows, against the same fine-tune without additions under the
  same seed (the baseline, ``subset`` −1). Negative = adding S helped. Measured on the influence target split
  (validation by default); the test MSE is recorded beside it.
- **Predicted effect** (:func:`predicted_effects`): each selector's own score summed over the subset — for the
  pipeline's influence score (``most_negative``) that is the first-order change of the target loss up to a positive
  factor; for the model-ranked selectors (``molinfluence.selectors``, lower = more recommended) the sum of their
  score. A selector whose ranking means anything for groups predicts larger Δ for subsets with larger summed scores:
  a **positive** correlation is agreement, for every selector.
- **Agreement** (:func:`group_table`): per selector and k, Spearman and Pearson of the predicted and the mean actual
  effect over seeds, with seeded percentile bootstrap intervals over the subsets (LDS is the Spearman), and, over all
  sizes at once, the same on effects centred within each k (the size of a subset moves both sums and effects; the
  centred row asks only which subsets of the same size are better).
- **Noise ceiling** (:func:`noise_ceiling`): the seeds' own agreement ρ (mean Pearson over seed pairs of Δ(S, s) and
  Δ(S, s′)) and r seeds give the reliability of the mean, ``rρ / (1 + (r − 1)ρ)`` (Spearman–Brown); its square root
  bounds the correlation any predictor can reach with the measured mean. A selector near the ceiling is as good as
  this measurement can tell.

Nothing here imports snakemake or trains anything: :func:`measure` takes the fine-tune as a function (the workflow's
``scripts/group_finetune.py`` passes the grid's :func:`molinfluence.runs.train_run`; the tests pass an exact ridge
refit).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .stats import correlation_with_ci, summarize_setting

BASELINE = -1
"""``subset`` of the baseline runs (the fine-tune without additions)."""


def draw_subsets(ext_index: Sequence[int], ks: Iterable[int], per_k: int, seed: int) -> pd.DataFrame:
    """``per_k`` seeded random subsets of the pool at each size k: one row per member, columns ``subset`` (0, 1, …
    in order of k, then draw), ``k``, ``ext_index``. Raises ValueError (naming ``groups.k``) when k exceeds the pool."""
    pool = np.asarray(list(ext_index), dtype=np.int64)
    if len(np.unique(pool)) != len(pool):
        raise ValueError("the pool's ext_index values are not unique")
    if per_k < 1:
        raise ValueError(f"groups.subsets must be >= 1, got {per_k}")
    rows, subset = [], 0
    for k in sorted({int(k) for k in ks}):
        if not 1 <= k <= len(pool):
            raise ValueError(f"config key `groups.k`: {k} must be between 1 and the pool's {len(pool)} molecules")
        rng = np.random.default_rng([int(seed), k])
        for _ in range(per_k):
            members = np.sort(pool[rng.choice(len(pool), size=k, replace=False)])
            rows.extend((subset, k, int(e)) for e in members)
            subset += 1
    return pd.DataFrame(rows, columns=["subset", "k", "ext_index"])


def subset_sizes(subsets: pd.DataFrame) -> pd.Series:
    """k of each subset (index ``subset``), checked against its member count."""
    missing = {"subset", "k", "ext_index"} - set(subsets.columns)
    if missing:
        raise ValueError(f"subsets table lacks column(s) {sorted(missing)}; has {list(subsets.columns)}")
    k = subsets.groupby("subset")["k"].agg(["first", "nunique", "size"])
    bad = k[(k["nunique"] != 1) | (k["first"] != k["size"])]
    if len(bad):
        raise ValueError(f"subset {bad.index[0]} has {bad['size'].iloc[0]} members but says k = {bad['first'].iloc[0]}")
    return k["first"].rename("k")


def predicted_effects(subsets: pd.DataFrame, scores: Mapping[str, pd.Series]) -> pd.DataFrame:
    """Each selector's predicted group effect: its score (a Series indexed by ``ext_index``) summed over each subset's
    members. Returns one row per subset: ``subset``, ``k`` and one column per selector. Raises ValueError naming the
    selector and the member when a score is missing or not finite."""
    k = subset_sizes(subsets)
    out = pd.DataFrame({"subset": k.index.to_numpy(), "k": k.to_numpy()})
    for name, score in scores.items():
        score = pd.Series(score, dtype=np.float64)
        absent = ~subsets["ext_index"].isin(score.index)
        if absent.any():
            raise ValueError(f"selector {name}: no score for pool molecule ext_index {int(subsets['ext_index'][absent].iloc[0])}")
        values = score.loc[subsets["ext_index"]].to_numpy()
        if not np.all(np.isfinite(values)):
            raise ValueError(f"selector {name}: a score of the pool is not finite")
        sums = pd.Series(values).groupby(subsets["subset"].to_numpy()).sum()
        out[name] = sums.loc[out["subset"]].to_numpy()
    return out


def measure(subsets: pd.DataFrame, seeds: Sequence[int],
            finetune: Callable[[np.ndarray | None, int], Mapping[str, float]], *, baseline: bool = True,
            log: Callable[[str], None] = lambda _m: None) -> pd.DataFrame:
    """Fine-tune once per (subset, seed) and, with ``baseline``, once per seed without additions.

    ``finetune(members, seed)`` trains with the subset's ``ext_index`` values added (``None``: nothing added) and
    returns at least ``target_loss`` (and any other metrics, e.g. ``test_mse``). Returns one row per run: ``subset``
    (−1 for the baseline), ``k`` (0 for the baseline), ``seed`` and the returned metrics."""
    rows = []
    if baseline:
        for seed in seeds:
            rows.append({"subset": BASELINE, "k": 0, "seed": int(seed), **_metrics(finetune(None, int(seed)))})
            log(f"baseline seed {seed}: target loss {rows[-1]['target_loss']:.5f}")
    k = subset_sizes(subsets)
    for subset, members in subsets.groupby("subset", sort=True)["ext_index"]:
        for seed in seeds:
            rows.append({"subset": int(subset), "k": int(k.loc[subset]), "seed": int(seed),
                         **_metrics(finetune(members.to_numpy(dtype=np.int64), int(seed)))})
            log(f"subset {subset} (k {k.loc[subset]}) seed {seed}: target loss {rows[-1]['target_loss']:.5f}")
    return pd.DataFrame(rows)


def _metrics(result: Mapping[str, float]) -> dict[str, float]:
    if "target_loss" not in result:
        raise ValueError(f"the fine-tune must return target_loss; returned {sorted(result)}")
    out = {name: float(v) for name, v in result.items()}
    if not math.isfinite(out["target_loss"]):
        raise ValueError(f"a fine-tune returned a non-finite target loss {out['target_loss']}")
    return out


def noise_ceiling(seed_agreement: float | None, n_seeds: int) -> float | None:
    """Upper bound on the correlation of any predictor with the mean of ``n_seeds`` noisy measurements whose
    seed-to-seed correlation is ``seed_agreement``: the square root of the Spearman–Brown reliability of the mean,
    ``sqrt(rρ / (1 + (r − 1)ρ))``. ``None`` with fewer than two seeds or an undefined agreement; 0 when ρ ≤ 0."""
    if seed_agreement is None or n_seeds < 2 or not math.isfinite(seed_agreement):
        return None
    rho = float(seed_agreement)
    if rho <= 0:
        return 0.0
    return math.sqrt(n_seeds * rho / (1.0 + (n_seeds - 1) * rho))


def _runs_as_samples(runs: pd.DataFrame) -> pd.DataFrame:
    """The run table in the shape :func:`summarize_setting` reads (``ext_index`` = subset, −1 = baseline)."""
    return runs.rename(columns={"subset": "ext_index"})[["ext_index", "seed", "target_loss"]]


def group_table(predicted: pd.DataFrame, runs: pd.DataFrame, *, n_boot: int = 2000,
                seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, per-subset table). ``predicted`` is :func:`predicted_effects`' table, ``runs`` :func:`measure`'s.

    The summary has one row per (selector, k) and one per selector with ``k`` = ``"all"`` (within-k centred):
    columns selector, k, subsets, spearman, spearman_lo, spearman_hi, pearson, pearson_lo, pearson_hi,
    seed_agreement, ceiling, actual_mean (mean Δ over the subsets: the average effect of adding k random molecules).
    The per-subset table: subset, k, actual (mean Δ over seeds), actual_sd, one ``delta_seed{s}`` per seed, and the
    selectors' predictions."""
    selectors = [c for c in predicted.columns if c not in ("subset", "k")]
    if not selectors:
        raise ValueError("no selector's prediction to validate")
    samples = _runs_as_samples(runs)
    rows, per_subset = [], None
    for k in sorted(predicted["k"].unique()):
        part = predicted[predicted["k"] == k]
        keep = samples[samples.ext_index.isin([BASELINE, *part["subset"]])]
        for name in selectors:
            summary, table = summarize_setting(pd.Series(part[name].to_numpy(), index=part["subset"].to_numpy()),
                                               keep, n_boot, seed)
            r = len(summary["noise"]["seeds"])
            agreement = summary["noise"]["seed_agreement_pearson"]
            rows.append(_row(name, int(k), len(part), summary, agreement, noise_ceiling(agreement, r), table["actual"].mean()))
            if name == selectors[0]:
                table = table.rename(columns={"ext_index": "subset"}).drop(columns="predicted").assign(k=int(k))
                per_subset = table if per_subset is None else pd.concat([per_subset, table], ignore_index=True)
    per_subset = per_subset.merge(predicted.drop(columns="k"), on="subset", how="left")
    if predicted["k"].nunique() > 1:
        centred_actual = per_subset["actual"] - per_subset.groupby("k")["actual"].transform("mean")
        seeds = [c for c in per_subset.columns if c.startswith("delta_seed")]
        centred_seeds = per_subset[seeds] - per_subset.groupby("k")[seeds].transform("mean")
        agreement = _seed_agreement(centred_seeds.to_numpy())
        for name in selectors:
            x = per_subset[name] - per_subset.groupby("k")[name].transform("mean")
            summary = correlation_with_ci(x.to_numpy(), centred_actual.to_numpy(), n_boot, seed)
            rows.append(_row(name, "all", len(x), summary, agreement, noise_ceiling(agreement, len(seeds)),
                             float("nan")))
    first = ["subset", "k", "actual", "actual_sd"]
    per_subset = per_subset[first + [c for c in per_subset.columns if c not in first]]
    return pd.DataFrame(rows), per_subset


def _seed_agreement(d: np.ndarray) -> float | None:
    """Mean Pearson over seed pairs of the columns of ``d`` (subsets × seeds); None if undefined."""
    r = d.shape[1]
    values = [np.corrcoef(d[:, a], d[:, b])[0, 1] for a in range(r) for b in range(a + 1, r)
              if np.ptp(d[:, a]) > 0 and np.ptp(d[:, b]) > 0]
    return float(np.mean(values)) if values else None


def _row(name: str, k: Any, n: int, summary: Mapping[str, Any], agreement: float | None, ceiling: float | None,
         actual_mean: float) -> dict[str, Any]:
    row: dict[str, Any] = {"selector": name, "k": k, "subsets": int(n)}
    for stat in ("spearman", "pearson"):
        part = summary[stat]
        ci = part["ci"] or [None, None]
        row.update({stat: part["estimate"], f"{stat}_lo": ci[0], f"{stat}_hi": ci[1]})
    row.update(seed_agreement=agreement, ceiling=ceiling, actual_mean=actual_mean)
    return row


def markdown(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table (Spearman and Pearson with their intervals, the noise ceiling)."""
    def ci(row: pd.Series, stat: str) -> str:
        if row[stat] is None or pd.isna(row[stat]):
            return "n/a"
        lo, hi = row[f"{stat}_lo"], row[f"{stat}_hi"]
        interval = f" [{lo:.2f}, {hi:.2f}]" if lo is not None and not pd.isna(lo) else ""
        return f"{row[stat]:.2f}{interval}"

    lines = ["| selector | k | subsets | Spearman (LDS) [95 % CI] | Pearson [95 % CI] | seed agreement | ceiling |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for _, row in summary.iterrows():
        agree = "n/a" if row["seed_agreement"] is None or pd.isna(row["seed_agreement"]) else f"{row['seed_agreement']:.2f}"
        ceil = "n/a" if row["ceiling"] is None or pd.isna(row["ceiling"]) else f"{row['ceiling']:.2f}"
        lines.append(f"| {row['selector']} | {row['k']} | {int(row['subsets'])} | {ci(row, 'spearman')} | {ci(row, 'pearson')} "
                     f"| {agree} | {ceil} |")
    return "\n".join(lines) + "\n"


def grid_finetune(start: str, spec: Mapping[str, Any], recipe: Mapping[str, Any], splits: Any, pool: pd.DataFrame,
                  target: pd.DataFrame) -> Callable[[np.ndarray | None, int], dict[str, float]]:
    """The fine-tune :func:`measure` calls: the grid's own run (:func:`molinfluence.runs.continue_run`, ``continue``
    from the base model ``start``, the ``finetune`` recipe ``recipe`` with the run's seed, early stopping on the
    validation split as the grid does) with the subset's pool rows added at weight 1, as a selection would add them.
    Returns ``target_loss`` (MSE on ``target``, the influence target split) and ``test_mse``. ``splits`` is a
    :class:`molinfluence.runs.Splits`; ``pool`` the external split (columns ``ext_index``, ``smiles``, ``label``)."""
    from ..runs import continue_run
    from ..training import TrainConfig, evaluate, pick_device

    missing = {"ext_index", "smiles", "label"} - set(pool.columns)
    if missing:
        raise ValueError(f"{pool.attrs.get('source', 'the external split')}: lacks column(s) {sorted(missing)}")
    by_ext = pool.set_index("ext_index")
    cfg = TrainConfig.from_dict(recipe)  # how to evaluate (batch size, token limit, device): the seed does not matter

    def finetune(members: np.ndarray | None, seed: int) -> dict[str, float]:
        added = None
        if members is not None:
            added = by_ext.loc[members, ["smiles", "label"]].reset_index(drop=True).assign(weight=1.0)
        result = continue_run(start, spec, recipe, splits, added, seed, source="the subset", log=lambda _m: None)
        target_metrics, _ = evaluate(result.model, result.tokenizer, target, cfg, pick_device(cfg.device))
        return {"target_loss": float(target_metrics["mse"]), "test_mse": float(result.metrics["mse"]),
                "epochs_run": float(result.metrics["epochs_run"])}

    return finetune
