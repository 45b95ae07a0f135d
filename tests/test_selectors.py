"""The selectors against independent references on tiny linear models: adaptive greedy with Newton steps vs exact
refits (least squares: the Newton step on a quadratic is exact), TracIn vs finite differences through a short gradient
descent run, and the label-consistency selectors on a hand-made pool with planted wrong labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from molinfluence.influence import FeatureBatch, InfluenceArgs
from molinfluence.selectors import (
    SELECTORS,
    PoolContext,
    SelectorOptions,
    adaptive_greedy_order,
    ranking,
    robust_z,
    tracin_scores,
)


class Linear(nn.Module):
    """``f(x) = head(x)``: a linear model on fixed features, float64 (the engine's FeatureBatch seam)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.head = nn.Linear(d, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x).squeeze(-1)


def _set(model: Linear, theta: np.ndarray) -> None:
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor(theta[:-1]).view(1, -1))
        model.head.bias.fill_(float(theta[-1]))


def _design(x: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.ones((len(x), 1))])


def _problem(seed: int = 0, n: int = 30, d: int = 4, m: int = 16, t: int = 12):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    x, xp, xt = rng.normal(size=(n, d)), rng.normal(size=(m, d)), rng.normal(size=(t, d)) + 0.5
    y = x @ w + 0.3 * rng.normal(size=n)
    yp = xp @ w + rng.normal(size=m)  # a noisier pool
    yt = xt @ w + 0.1 + 0.3 * rng.normal(size=t)  # a shifted target
    return (x, y), (xp, yp), (xt, yt)


def _rows(x: np.ndarray, y: np.ndarray, name: str) -> FeatureBatch:
    return FeatureBatch(torch.tensor(x), torch.tensor(y), name=name)


def test_adaptive_greedy_with_newton_steps_equals_greedy_with_exact_refits():
    (x, y), (xp, yp), (xt, yt) = _problem()
    args = InfluenceArgs(method="exact", damping=0.0)
    model = Linear(x.shape[1])
    _set(model, np.linalg.lstsq(_design(x), y, rcond=None)[0])

    k, rounds = 6, 3
    chosen, history = adaptive_greedy_order(
        model, _rows(x, y, "train"), _rows(xt, yt, "validation"), _rows(xp, yp, "pool"), args, k, rounds)

    # Reference: refit by least squares on train + chosen, exact influence I(z) = −vᵀ H⁻¹ ∇ℓ(z) at the refit.
    ref: list[int] = []
    for r in range(rounds):
        a, b = _design(np.vstack([x, xp[ref]])), np.concatenate([y, yp[ref]])
        theta = np.linalg.lstsq(a, b, rcond=None)[0]
        hess = 2 * a.T @ a / len(a)
        at = _design(xt)
        v = 2 * at.T @ (at @ theta - yt) / len(at)
        grads = 2 * (_design(xp) @ theta - yp)[:, None] * _design(xp)
        scores = -grads @ np.linalg.solve(hess, v)
        np.testing.assert_allclose(history[r], scores, rtol=1e-8, atol=1e-10)
        free = np.where(np.isin(np.arange(len(xp)), ref), np.inf, scores)
        ref += [int(i) for i in np.argsort(free, kind="stable")[: k // rounds]]
    assert chosen.tolist() == ref
    # Re-scoring matters here: the one-shot top-k of the first round's scores is another set.
    assert set(np.argsort(history[0], kind="stable")[:k].tolist()) != set(ref)


def _tracin_vs_finite_differences(lr: float, steps: int = 5, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    (x, y), (xp, yp), (xt, yt) = _problem(seed=1)
    design, dt, dp = _design(x), _design(xt), _design(xp)

    def run(j: int, e: float) -> tuple[float, list[np.ndarray]]:
        """Full-batch gradient descent on the training loss plus e × sample j's loss; final target loss, trajectory."""
        theta, path = np.zeros(design.shape[1]), []
        for _ in range(steps):
            path.append(theta.copy())
            g = 2 * design.T @ (design @ theta - y) / len(y) + e * 2 * (dp[j] @ theta - yp[j]) * dp[j]
            theta = theta - lr * g
        return float(np.mean((dt @ theta - yt) ** 2)), path

    checkpoints = []
    for theta in run(0, 0.0)[1]:
        model = Linear(x.shape[1])
        _set(model, theta)
        checkpoints.append((model, lr))
    estimate = tracin_scores(checkpoints, _rows(xt, yt, "validation"), _rows(xp, yp, "pool"))
    actual = np.array([(run(j, eps)[0] - run(j, -eps)[0]) / (2 * eps) for j in range(len(xp))])
    return estimate, actual


def test_tracin_matches_finite_differences_through_gradient_descent():
    errors = []
    for lr in (0.01, 0.0025):
        estimate, actual = _tracin_vs_finite_differences(lr)
        assert np.corrcoef(estimate, actual)[0, 1] > 0.99
        errors.append(np.abs(estimate - actual).max() / np.abs(actual).max())
    # First order in lr: TracIn ignores how z's step moves the later gradients, a relative error O(lr); a quarter of
    # the learning rate leaves about a quarter of the error, and at lr 0.0025 it is a few per cent.
    assert errors[1] < 0.05 and errors[1] / errors[0] < 0.35, errors


@pytest.fixture(scope="module")
def planted():
    """A linear model fitted to clean data; a pool of 24 with 6 labels moved by 4–6 noise SDs."""
    rng = np.random.default_rng(3)
    d, w = 3, np.array([1.0, -2.0, 0.5])

    def table(n: int, name: str) -> pd.DataFrame:
        x = rng.normal(size=(n, d))
        frame = pd.DataFrame({"smiles": [f"{name}{i}" for i in range(n)], "label": x @ w + 0.2 * rng.normal(size=n)})
        return frame.assign(**{f"x{j}": x[:, j] for j in range(d)})

    train, target, pool = table(60, "t"), table(20, "v"), table(24, "p")
    bad = np.zeros(len(pool), dtype=bool)
    bad[[2, 5, 11, 17, 19, 23]] = True
    pool.loc[bad, "label"] += rng.choice([-1.0, 1.0], bad.sum()) * rng.uniform(0.8, 1.2, bad.sum())
    model = Linear(d)
    _set(model, np.linalg.lstsq(_design(train[["x0", "x1", "x2"]].to_numpy()), train["label"].to_numpy(), rcond=None)[0])

    def encode(frame: pd.DataFrame, name: str) -> FeatureBatch:
        return FeatureBatch(torch.tensor(frame[["x0", "x1", "x2"]].to_numpy()), torch.tensor(frame["label"].to_numpy()),
                            name=name)

    ctx = PoolContext(model, None, train, target, pool, InfluenceArgs(method="exact", params="head"),
                      options=SelectorOptions(believable_z=3.0, knn=3), encode=encode)
    return ctx, bad


@pytest.mark.parametrize("name", ["residual", "believable_helpful"])
def test_label_consistency_selectors_put_planted_wrong_labels_last(planted, name):
    ctx, bad = planted
    order = SELECTORS[name](ctx, len(ctx.pool))
    assert sorted(order.tolist()) == list(range(len(ctx.pool)))
    assert set(order[-bad.sum():].tolist()) == set(np.flatnonzero(bad).tolist())
    table = ranking(ctx, name, 5)
    assert table["rank"].tolist() == [1, 2, 3, 4, 5] and (np.diff(table["score"]) >= 0).all()


def test_believable_helpful_ranks_believable_rows_by_influence(planted):
    ctx, bad = planted
    order = SELECTORS["believable_helpful"](ctx, int((~bad).sum()))
    influence = ctx.influence_scores()[order]
    assert (np.diff(influence) >= 0).all()  # believable rows first, most negative influence first
    # the plain influence ranking does pick wrong labels early on this pool: the combination is what removes them
    assert bad[SELECTORS["most_negative"](ctx, bad.sum())].any()


def test_knn_influence_is_the_rank_sum_of_believability_and_helpfulness(planted):
    """knn_influence = rank(kNN disagreement) + rank(influence): checked against ranks counted by hand (position of each
    row in each order); a row first in both orders comes first, and the planted wrong labels (last by kNN agreement)
    never lead."""
    from molinfluence.selectors import knn_influence_score, knn_score

    ctx, bad = planted
    knn, influence = knn_score(ctx), ctx.influence_scores()
    by_hand = np.empty(len(knn))
    for i in range(len(knn)):
        by_hand[i] = sum((knn[j], j) < (knn[i], i) for j in range(len(knn))) + sum(
            (influence[j], j) < (influence[i], i) for j in range(len(knn)))
    np.testing.assert_array_equal(knn_influence_score(ctx), by_hand)
    order = SELECTORS["knn_influence"](ctx, len(ctx.pool))
    assert np.array_equal(order, np.argsort(by_hand, kind="stable"))
    assert not bad[order[: int(bad.sum())]].all()


def test_robust_z_is_relative_to_the_reference():
    ref = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_allclose(robust_z([3.0, 3.0 + 1.4826], ref), [0.0, 1.0])


def _script(name: str, argv: list[str], monkeypatch) -> None:
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    monkeypatch.setattr(sys, "argv", [str(script), *argv])
    runpy.run_path(str(script), run_name="__main__")


def test_rank_pool_and_recommend_scripts_write_the_rankings_and_the_recommended_molecules(
        tiny_encoder_dir, molecules, tmp_path, monkeypatch):
    """The pipeline's two scripts on a tiny MoLFormer: every pool row ranked once (adaptive_greedy: its first k), and
    recommended.csv holds each k's prefix of the default's ranking."""
    import json

    from molinfluence.files import write_csv
    from molinfluence.influence import Batch, compute_ihvp, save_ihvp
    from molinfluence.regressor import RegressorSpec, new_regressor, save_regressor

    model, tokenizer = new_regressor(tiny_encoder_dir, RegressorSpec(max_length=64), seed=0)
    frames = {"train": molecules.iloc[:40], "validation": molecules.iloc[40:52], "external": molecules.iloc[52:64]}
    paths = {}
    for name, frame in frames.items():
        frame = frame.reset_index(drop=True)
        if name == "external":
            frame = frame.assign(ext_index=range(100, 100 + len(frame)))
        paths[name] = tmp_path / f"{name}.csv"
        write_csv(paths[name], frame)
    save_regressor(model, tokenizer, tmp_path / "base")
    influence = {"method": "cg", "cg_iters": 3, "spectrum_iters": 5}
    ihvp = compute_ihvp(model, Batch.encode(tokenizer, paths["train"], 64), Batch.encode(tokenizer, paths["validation"], 64),
                        influence, progress=False)
    save_ihvp(ihvp, tmp_path / "ihvp.pt")
    common = ["--model", str(tmp_path / "base"), "--train", str(paths["train"]), "--target", str(paths["validation"]),
              "--external", str(paths["external"]), "--device", "cpu", "--k", "4"]
    extra = {
        "knn_agreement": [],
        "believable_helpful": ["--ihvp", str(tmp_path / "ihvp.pt"), "--influence", json.dumps(influence)],
        "knn_influence": ["--ihvp", str(tmp_path / "ihvp.pt"), "--influence", json.dumps(influence)],
        "adaptive_greedy": ["--ihvp", str(tmp_path / "ihvp.pt"), "--influence", json.dumps(influence),
                            "--options", json.dumps({"rounds": 2})],
        "tracin": ["--influence", json.dumps(influence), "--options", json.dumps({"tracin_epochs": 2}),
                   "--finetune", json.dumps({"lr": 1e-3, "epochs": 1, "batch_size": 16, "device": "cpu"})],
    }
    for selector, args in extra.items():
        out = tmp_path / f"{selector}.csv"
        _script("rank_pool", ["--selector", selector, *common, *args, "--out", str(out)], monkeypatch)
        table = pd.read_csv(out)
        assert list(table.columns) == ["ext_index", "smiles", "label", "rank", "score", "prediction"]
        assert len(table) == (4 if selector == "adaptive_greedy" else 12) and table["rank"].tolist() == list(
            range(1, len(table) + 1))
        assert set(table["ext_index"]) <= set(range(100, 112)) and table["ext_index"].is_unique
    _script("recommend", ["--strategy", "knn_agreement", "--k", "3", "5", "--pool", str(tmp_path / "knn_agreement.csv"),
                          "--out", str(tmp_path / "recommended.csv")], monkeypatch)
    rec = pd.read_csv(tmp_path / "recommended.csv")
    ranking_ = pd.read_csv(tmp_path / "knn_agreement.csv")
    assert rec["k"].tolist() == [3] * 3 + [5] * 5 and rec["rank"].tolist() == [1, 2, 3, 1, 2, 3, 4, 5]
    for k in (3, 5):
        assert rec.loc[rec.k == k, "ext_index"].tolist() == ranking_["ext_index"].head(k).tolist()
