"""Group validation (molinfluence.validation.groups): subsets, predicted and measured group effects, agreement.

The reference is a tiny ridge regression whose fine-tune is an exact refit: the group effect of adding a subset is
known in closed form, so the measured effects, the exact predictor's agreement (1) and the first-order influence
sum's agreement can be checked; the workflow stage is planned only when enabled and the demo runs it
(tests/test_demo.py)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from molinfluence.validation.groups import (
    BASELINE,
    draw_subsets,
    group_table,
    markdown,
    measure,
    noise_ceiling,
    predicted_effects,
)

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------------
# A ridge model: an exact refit is the fine-tune


class Ridge:
    """mean squared error over train ∪ added + lam‖θ‖², solved exactly; target loss = MSE on the target rows."""

    def __init__(self, seed: int = 0, n: int = 200, m: int = 30, t: int = 25, d: int = 4, lam: float = 0.05):
        rng = np.random.default_rng(seed)
        w = rng.normal(size=d)
        self.lam = lam
        self.X, self.P, self.T = (rng.normal(size=(r, d)) for r in (n, m, t))
        self.y = self.X @ w + 0.3 * rng.normal(size=n)
        self.yp = self.P @ w + 0.3 * rng.normal(size=m)
        self.yp[: m // 3] += rng.choice([-3.0, 3.0], size=m // 3)  # a third of the pool mislabelled
        self.yt = self.T @ w + 0.3 * rng.normal(size=t)
        self.ext_index = np.arange(100, 100 + m)  # pool ids that are not row positions

    def fit(self, rows: np.ndarray | None) -> np.ndarray:
        X, y = self.X, self.y
        if rows is not None:
            X, y = np.vstack([X, self.P[rows]]), np.concatenate([y, self.yp[rows]])
        A = X.T @ X / len(X) + self.lam * np.eye(X.shape[1])
        return np.linalg.solve(A, X.T @ y / len(X))

    def target_loss(self, theta: np.ndarray) -> float:
        return float(np.mean((self.T @ theta - self.yt) ** 2))

    def finetune(self, members: np.ndarray | None, seed: int) -> dict[str, float]:
        rows = None if members is None else np.searchsorted(self.ext_index, members)
        return {"target_loss": self.target_loss(self.fit(rows))}

    def exact_effect(self, members: np.ndarray) -> float:
        return self.target_loss(self.fit(np.searchsorted(self.ext_index, members))) - self.target_loss(self.fit(None))

    def influence(self) -> pd.Series:
        """First-order effect of adding each pool row at weight 1/n: −∇L_targetᵀ H⁻¹ ∇ℓ(z) / n at the base fit."""
        theta = self.fit(None)
        n = len(self.X)
        H = 2 * (self.X.T @ self.X / n + self.lam * np.eye(self.X.shape[1]))
        g_target = 2 * self.T.T @ (self.T @ theta - self.yt) / len(self.T)
        g_pool = 2 * (self.P @ theta - self.yp)[:, None] * self.P
        return pd.Series(-(g_pool @ np.linalg.solve(H, g_target)) / n, index=self.ext_index)


# ---------------------------------------------------------------------------------------------------------------------
# Subsets and predictions


def test_subsets_are_seeded_and_each_size_is_drawn_independently():
    pool = np.arange(50, 90)
    a = draw_subsets(pool, [5, 10], 4, seed=3)
    assert a.equals(draw_subsets(pool, [10, 5], 4, seed=3))
    assert not a.equals(draw_subsets(pool, [5, 10], 4, seed=4))
    sizes = a.groupby("subset").agg(k=("k", "first"), n=("ext_index", "size"), unique=("ext_index", "nunique"))
    assert (sizes.k == sizes.n).all() and (sizes.n == sizes.unique).all() and len(sizes) == 8
    assert set(a.ext_index) <= set(pool)
    only10 = draw_subsets(pool, [10], 4, seed=3)  # adding a size does not redraw the others
    assert (a[a.k == 10].ext_index.to_numpy() == only10.ext_index.to_numpy()).all()


def test_a_subset_larger_than_the_pool_names_the_config_key():
    with pytest.raises(ValueError, match=r"groups\.k.*41.*40"):
        draw_subsets(np.arange(40), [10, 41], 3, seed=0)


def test_predicted_effect_is_the_score_summed_over_the_members():
    subsets = pd.DataFrame({"subset": [0, 0, 1], "k": [2, 2, 1], "ext_index": [10, 12, 11]})
    scores = {"a": pd.Series([1.0, 2.0, 4.0], index=[10, 11, 12]), "b": pd.Series([0.5, -1.0, 0.0], index=[10, 11, 12])}
    pred = predicted_effects(subsets, scores)
    assert pred.to_dict("list") == {"subset": [0, 1], "k": [2, 1], "a": [5.0, 2.0], "b": [0.5, -1.0]}
    with pytest.raises(ValueError, match="selector a.*ext_index 13"):
        predicted_effects(subsets.assign(ext_index=[10, 13, 11]), scores)


def test_noise_ceiling_is_the_root_of_the_spearman_brown_reliability():
    assert noise_ceiling(0.5, 2) == pytest.approx(math.sqrt(2 / 3))
    assert noise_ceiling(1.0, 3) == pytest.approx(1.0)
    assert noise_ceiling(-0.2, 3) == 0.0 and noise_ceiling(0.5, 1) is None and noise_ceiling(None, 3) is None


# ---------------------------------------------------------------------------------------------------------------------
# Measured effects against the exact refit, agreement of exact and first-order predictors


@pytest.fixture(scope="module")
def ridge_run():
    model = Ridge()
    subsets = draw_subsets(model.ext_index, [3, 8], 12, seed=1)
    runs = measure(subsets, [0, 1], model.finetune)
    return model, subsets, runs


def test_measured_group_effects_are_the_exact_refit_effects(ridge_run):
    model, subsets, runs = ridge_run
    assert (runs[runs.subset == BASELINE].k == 0).all() and len(runs) == 2 * (24 + 1)
    exact = pd.Series({s: model.exact_effect(g.to_numpy()) for s, g in subsets.groupby("subset")["ext_index"]}, name="e")
    pred = predicted_effects(subsets, {"influence": model.influence()})
    _, per_subset = group_table(pred, runs, n_boot=200)
    assert np.allclose(per_subset.set_index("subset").actual.loc[exact.index], exact, rtol=0, atol=1e-12)
    assert (per_subset.actual_sd == 0).all(), "an exact refit has no seed noise"


def test_the_exact_predictor_agrees_perfectly_and_first_order_influence_nearly(ridge_run):
    model, subsets, runs = ridge_run
    exact = {s: model.exact_effect(g.to_numpy()) for s, g in subsets.groupby("subset")["ext_index"]}
    # an "exact" selector: each member's share of its subset's exact effect (sums to the exact group effect)
    k = subsets.groupby("subset").k.first()
    share = subsets.assign(score=subsets.subset.map(exact) / subsets.subset.map(k))
    # a pool molecule sits in several subsets: give each (subset, member) pair its own id so the sum is exact
    pairs = share.assign(ext_index=np.arange(len(share)))
    rng = np.random.default_rng(0)
    scores = {
        "exact": pairs.set_index("ext_index").score,
        "influence": pd.Series(model.influence().loc[subsets.ext_index].to_numpy(), index=pairs.ext_index),
        "shuffled": pd.Series(rng.permutation(model.influence().loc[subsets.ext_index].to_numpy()), index=pairs.ext_index),
    }
    summary, _ = group_table(predicted_effects(pairs, scores), runs, n_boot=500)
    by = summary.set_index(["selector", summary.k.astype(str)])
    for k in ("3", "8", "all"):
        assert by.loc[("exact", k), "spearman"] == pytest.approx(1.0)
        assert by.loc[("exact", k), "ceiling"] == pytest.approx(1.0), "identical seeds: no noise"
        assert by.loc[("influence", k), "spearman"] > 0.9, by.loc[("influence", k)]
        lo, hi = by.loc[("influence", k), ["spearman_lo", "spearman_hi"]]
        assert lo <= by.loc[("influence", k), "spearman"] <= hi
    assert by.loc[("shuffled", "all"), "spearman"] < by.loc[("influence", "all"), "spearman"] - 0.4
    assert "| influence | all | 24 |" in markdown(summary)


def test_seed_noise_lowers_the_ceiling(ridge_run):
    model, subsets, exact_runs = ridge_run
    scale = 0.5 * exact_runs[exact_runs.subset != BASELINE].groupby("k").target_loss.std().min()

    def noisy(members, seed):
        out = model.finetune(members, seed)
        key = 0 if members is None else int(members.sum())
        return {"target_loss": out["target_loss"] + scale * np.random.default_rng([seed, key]).normal()}

    runs = measure(subsets, [0, 1, 2], noisy)
    summary, per_subset = group_table(predicted_effects(subsets, {"influence": model.influence()}), runs, n_boot=200)
    assert (per_subset.actual_sd > 0).all()
    row = summary[summary.k.astype(str) == "all"].iloc[0]
    assert 0 < row.ceiling < 1 and row.ceiling == pytest.approx(noise_ceiling(row.seed_agreement, 3))


def test_a_fine_tune_without_a_target_loss_is_refused():
    subsets = draw_subsets(np.arange(10), [2], 3, seed=0)
    with pytest.raises(ValueError, match="target_loss"):
        measure(subsets, [0], lambda members, seed: {"mse": 1.0})


# ---------------------------------------------------------------------------------------------------------------------
# Workflow: planned only when enabled


def test_stage_is_planned_only_when_enabled(tmp_path):
    from test_validation import _planned

    external = tmp_path / "external.csv"
    external.write_text("SMILES,Label\nCCO,1.0\n")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["data"]["external"]["path"] = str(external)
    off = _planned(config, tmp_path / "off")
    assert off.get("finetune") and not [rule for rule in off if rule.startswith("group")]
    config["groups"] = {"enabled": True, "k": [10, 30], "subsets": 4, "seeds": [0, 1]}
    on = _planned(config, tmp_path / "on")
    assert {rule: n for rule, n in on.items() if rule.startswith("group")} == {
        "group_subsets": 1, "group_finetune": 3, "group_summary": 1,  # one fine-tune job per size + the baselines
    }
