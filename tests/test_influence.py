"""Influence engine: HVPs, the three inverse-HVP solvers, their safeguards, and the scores, each against an
independent reference (autograd's dense Hessian, finite differences, a dense solve, a batch-1 backward loop, and
refitting a ridge regression).

The dense reference Hessian is ``torch.autograd.functional.hessian`` (reverse-over-reverse with plain autograd), not
``torch.func.hessian``: in torch 2.13 the latter (jacfwd of jacrev, like jacrev of jacrev) gets the cross terms
between a LayerNorm's weight and the parameters before it wrong, while forward-over-reverse (jacfwd of grad), double
backward and finite differences agree with each other.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from influence_reference import score_samples_loop
from molinfluence.influence import (
    Batch,
    CurvatureOperator,
    EigenEstimate,
    CGArgs,
    InfluenceArgs,
    LissaArgs,
    ScoringArgs,
    SpectrumArgs,
    InfluenceDivergence,
    NegativeCurvature,
    SubsetObjective,
    compute_ihvp,
    exact,
    estimate_eigs,
    exact_gauss_newton,
    exact_hessian,
    gnvp,
    hvp,
    lanczos,
    lissa,
    load_ihvp,
    loss_gradient,
    save_ihvp,
    score_samples,
    select_params,
)
from molinfluence.config import ConfigError, section_schema
from molinfluence.influence.args import option_keys
from molinfluence.loss import squared_error
from molinfluence.rule_keys import WORKFLOW_KEYS, influence_options

# ---------------------------------------------------------------------------------------------------------------------
# Generic toy models: the engine knows no MoLFormer names; a model names its parameter groups through the seam


class ToyLayer(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x)) + x


class ToyBody(nn.Module):
    def __init__(self, vocab: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.blocks = nn.ModuleList(ToyLayer(hidden) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)


class ToyRegressor(nn.Module):
    """Embedding → residual tanh layers → LayerNorm → masked mean → Linear: ``(input_ids, mask) -> (B,)``."""

    def __init__(self, vocab: int = 20, hidden: int = 6, layers: int = 2) -> None:
        super().__init__()
        self.body = ToyBody(vocab, hidden, layers)
        self.head = nn.Linear(hidden, 1)

    def features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.body.embed(ids)
        for layer in self.body.blocks:
            x = layer(x)
        x = self.body.norm(x)
        m = mask.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(1) / m.sum(1)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids, mask)).squeeze(-1)

    def influence_param_prefixes(self, spec: str):
        """The seam: this model's named groups (the engine resolves nothing by name itself)."""
        if spec.startswith("last_layers:"):
            k = int(spec.split(":")[1])
            if k > len(self.body.blocks):
                raise ValueError(f"influence.params: last_layers:{k} but the toy has {len(self.body.blocks)} blocks")
            return [f"body.blocks.{i}" for i in range(len(self.body.blocks) - k, len(self.body.blocks))] + ["body.norm", "head"]
        return None


def toy_batch(n: int, seed: int, name: str, vocab: int = 20, width: int = 9) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, width + 1, (n,), generator=g)
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    ids = torch.randint(1, vocab, (n, width), generator=g) * mask
    labels = (ids.float() * mask).sum(1) / mask.sum(1) / 10 + 0.1 * torch.randn(n, generator=g)
    return Batch(ids, mask, labels, name=name)


def fit(model: nn.Module, train: Batch, steps: int, lr: float, params=None) -> None:
    """Full-batch Adam on the mean squared error, in eval mode (a fixed function, as influence sees it)."""
    model.eval()
    opt = torch.optim.Adam(params if params is not None else model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        ((model(train.input_ids, train.attention_mask) - train.labels) ** 2).mean().backward()
        opt.step()


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    model = ToyRegressor().double()
    train, val, ext = toy_batch(40, 1, "train"), toy_batch(12, 2, "validation"), toy_batch(30, 3, "external")
    train.labels, val.labels, ext.labels = train.labels.double(), val.labels.double(), ext.labels.double()
    fit(model, train, 300, 1e-2)
    return model, train, val, ext


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------------------------------------------------------
# Arguments and parameter selection


def test_args_round_trip_and_errors_name_the_key():
    args = InfluenceArgs.of(method="cg", params=["head", "body.norm"], damping=0.1, scale=3.0, seed=4, curvature="hessian")
    assert InfluenceArgs.from_dict(args.to_dict()) == args
    with pytest.raises(ValueError, match=r"`influence\.depth`: 0 is less than the minimum of 1"):
        InfluenceArgs.of(depth=0)
    with pytest.raises(ValueError, match=r"influence\.scale"):
        InfluenceArgs.of(scale="big")
    with pytest.raises(ValueError, match=r"influence\.safety_factor"):
        InfluenceArgs.of(safety_factor=0.5)
    with pytest.raises(ValueError, match=r"influence\.params"):
        InfluenceArgs.of(params="last_layers:0")
    with pytest.raises(ValueError, match=r"unknown key 'dampnig' \(did you mean 'damping'\?\) in `influence`"):
        InfluenceArgs.from_dict({"dampnig": 0.1})
    with pytest.raises(ValueError, match=r"influence\.hvp_mode"):
        InfluenceArgs.from_dict({"hvp_mode": "fd"})
    with pytest.raises(ValueError, match=r"`influence\.curvature`: 'fisher' is not allowed; allowed values: 'hessian', 'gauss_newton'"):
        InfluenceArgs.of(curvature="fisher")
    defaults = InfluenceArgs.of()
    assert (defaults.method, defaults.curvature) == ("cg", "gauss_newton")  # the default is decided in docs/validation.md


def test_the_one_squared_error_is_torch_mse_per_sample_in_the_prediction_dtype():
    pred = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    labels = torch.tensor([1.0, 1.0, 2.0])
    loss = squared_error(pred, labels)
    assert loss.dtype == torch.float64
    assert torch.equal(loss, torch.nn.functional.mse_loss(pred, labels.double(), reduction="none"))


def test_options_are_grouped_by_phase_and_the_config_keys_stay_flat():
    """A config section's flat keys land in their phase; the saved JSON has the config's keys again; the workflow's
    target is not an option; every option of the schema has exactly one phase."""
    args = InfluenceArgs.from_dict({"method": "lissa", "depth": 7, "tolerance": 1e-4, "cg_tolerance": 1e-2,
                                    "spectrum_samples": 9, "score_batch_size": 5, "topk": 3, "target": "test"})
    assert args == InfluenceArgs(method="lissa", lissa=LissaArgs(depth=7, tolerance=1e-4), cg=CGArgs(tolerance=1e-2),
                                 spectrum=SpectrumArgs(samples=9), scoring=ScoringArgs(batch_size=5, topk=3))
    assert "target" not in args.to_dict() and args.to_dict()["depth"] == 7 and args.to_dict()["cg_tolerance"] == 1e-2
    schema_options = set(section_schema("influence")["properties"]) - set(WORKFLOW_KEYS)
    assert set(option_keys()) == schema_options == set(args.to_dict())
    assert option_keys()["tolerance"] == "lissa" and option_keys()["cg_tolerance"] == "cg"
    with pytest.raises(ConfigError, match=r"`influence\.cg_iters`: 0 is less than the minimum of 1"):
        CGArgs(iters=0)


def test_each_rule_hashes_every_option_that_can_change_its_outputs():
    """The rules' params come from influence_options: never the target (an input file), and only what the rule's
    computation cannot read is left out."""
    section = {**InfluenceArgs().to_dict(), "target": "validation"}
    ihvp = influence_options("influence_ihvp", section)
    assert set(section) - set(ihvp) == {"target", "score_batch_size"}
    assert set(section) - set(influence_options("validate_convex", section)) == {"target", "params"}
    assert set(section) - set(influence_options("validate_estimators", section)) == {"target"}
    assert InfluenceArgs.from_dict(ihvp).to_dict() == {**InfluenceArgs().to_dict(), **ihvp}
    with pytest.raises(KeyError, match="influence_scorez"):
        influence_options("influence_scorez", section)


def test_select_params_specs_and_errors():
    model = ToyRegressor(layers=3)
    assert list(select_params(model, "head")) == ["head.weight", "head.bias"]
    assert list(select_params(model, "last_layers:2")) == [
        "body.blocks.1.dense.weight",
        "body.blocks.1.dense.bias",
        "body.blocks.2.dense.weight",
        "body.blocks.2.dense.bias",
        "body.norm.weight",
        "body.norm.bias",
        "head.weight",
        "head.bias",
    ]
    assert len(select_params(model, "all")) == len(list(model.parameters()))
    assert list(select_params(model, ["body.blocks.0."])) == ["body.blocks.0.dense.weight", "body.blocks.0.dense.bias"]
    with pytest.raises(ValueError, match=r"influence\.params.*\['hed'\].*valid prefixes.*head"):
        select_params(model, ["hed"])
    with pytest.raises(ValueError, match=r"influence\.params.*last_layers:4.*3"):
        select_params(model, "last_layers:4")
    with pytest.raises(ValueError, match=r"influence\.params.*no parameter group 'last_layers:1'"):
        select_params(nn.Sequential(nn.Linear(2, 1)), "last_layers:1")
    with pytest.raises(ValueError, match=r"influence\.params"):
        select_params(model, [])


# ---------------------------------------------------------------------------------------------------------------------
# HVPs and the exact Hessian


@pytest.mark.parametrize("mode", ["func", "double_backward"])
def test_hvp_matches_the_dense_hessian_and_finite_differences(toy, mode):
    model, train, _, _ = toy
    obj = SubsetObjective(model, "last_layers:1")  # a residual layer, a LayerNorm and the head
    n = len(train)

    def mean_loss(theta):
        return obj.loss_sum(theta, train) / n

    reference = torch.autograd.functional.hessian(mean_loss, obj.theta0)  # unchunked, no torch.func involved
    vec = torch.randn(obj.numel, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = hvp(obj, train, vec, mode=mode, batch_size=7)  # chunks of 7: the accumulation is exercised too
    assert rel(got, reference @ vec) < 1e-10

    eps = 1e-5
    g_plus = torch.func.grad(mean_loss)(obj.theta0 + eps * vec)
    g_minus = torch.func.grad(mean_loss)(obj.theta0 - eps * vec)
    assert rel(got, (g_plus - g_minus) / (2 * eps)) < 1e-6


def test_exact_hessian_matches_autograd_and_refuses_large_subsets(toy):
    model, train, _, _ = toy
    obj = SubsetObjective(model, "last_layers:1")
    reference = torch.autograd.functional.hessian(lambda t: obj.loss_sum(t, train) / len(train), obj.theta0)
    assert torch.allclose(exact_hessian(obj, train, batch_size=16), reference, rtol=1e-9, atol=1e-11)
    with pytest.raises(ValueError, match=r"limited to 10 parameters.*influence\.params"):
        exact_hessian(obj, train, max_params=10)


# ---------------------------------------------------------------------------------------------------------------------
# Solvers on a tiny MoLFormer regressor

SUBSET = ["molformer.encoder.layer.1.output", "molformer.LayerNorm", "head"]  # 609 entries of the tiny MoLFormer


@pytest.fixture(scope="module")
def tiny_molformer(tiny_encoder_dir, molecules):
    """A tiny MoLFormer regressor fitted to 32 FreeSolv molecules; 16 validation and 32 external molecules."""
    from molinfluence.regressor import RegressorSpec, new_regressor

    model, tokenizer = new_regressor(tiny_encoder_dir, RegressorSpec(), seed=0)
    frame = molecules.sample(n=80, random_state=0).reset_index(drop=True)
    frame["label"] = (frame["label"] - frame["label"][:32].mean()) / frame["label"][:32].std()

    def batch(rows: slice, name: str) -> Batch:
        return Batch.encode(tokenizer, frame[rows], 202, name=name)

    train, val, ext = batch(slice(0, 32), "train"), batch(slice(32, 48), "validation"), batch(slice(48, 80), "external")
    torch.manual_seed(0)
    fit(model, train, 300, 3e-3)
    return model, train, val, ext


@pytest.fixture(scope="module")
def tiny_exact(tiny_molformer):
    """Float64 objective, v and dense Hessian on the ≤ 2,000-entry subset, and the exact IHVP at default damping."""
    model, train, val, _ = tiny_molformer
    obj = SubsetObjective(model, SUBSET, torch.float64)
    assert obj.numel <= 2000
    v = loss_gradient(obj, val)
    ref = compute_ihvp(model, train, val, InfluenceArgs.of(method="exact", params=SUBSET, curvature="hessian"), progress=False)
    return obj, v, ref


@pytest.mark.parametrize("mode", ["func", "double_backward"])
def test_molformer_hvp_matches_finite_differences(tiny_molformer, tiny_exact, mode):
    _, train, _, _ = tiny_molformer
    obj, _, _ = tiny_exact  # float64, encoder layer output block + final LayerNorm + head
    vec = torch.randn(obj.numel, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad = lambda t: torch.func.grad(lambda u: obj.loss_sum(u, train) / len(train))(t)  # noqa: E731
    eps = 1e-5
    fd = (grad(obj.theta0 + eps * vec) - grad(obj.theta0 - eps * vec)) / (2 * eps)
    assert rel(hvp(obj, train, vec, mode=mode, batch_size=20), fd) < 1e-6


def test_lissa_full_batch_matches_exact_with_auto_scale_and_default_damping(tiny_molformer, tiny_exact):
    model, train, val, _ = tiny_molformer
    obj, v, _ = tiny_exact
    args = InfluenceArgs.of(method="lissa", curvature="hessian", params=SUBSET, batch_size=len(train), repeats=1)
    assert args.damping == InfluenceArgs.of().damping and args.lissa.scale == "auto"
    result = compute_ihvp(model, train, val, args, progress=False)
    stats = result.stats
    assert stats["converged"] and stats["steps"][0] < args.lissa.depth
    # Same absolute λ for the reference: this compares solvers, not the two λ_max(H) estimates.
    reference = exact(obj, train, v, stats["lambda"]).x
    assert rel(obj.flatten(result.ihvp), reference) <= 1e-2
    assert stats["scale"] == pytest.approx(args.lissa.safety_factor * stats["lambda_max_A"])
    assert stats["error_estimate"] <= 2e-2 and stats["relative_residual"] < 1e-2


def test_lissa_mini_batches_and_cg_match_exact(tiny_molformer, tiny_exact):
    model, train, val, _ = tiny_molformer
    obj, v, _ = tiny_exact
    args = InfluenceArgs.of(method="lissa", curvature="hessian", params=SUBSET, batch_size=16, repeats=2, depth=600, seed=1)
    result = compute_ihvp(model, train, val, args, progress=False)
    assert not result.stats["full_batch"] and len(result.stats["repeat_norms"]) == 2
    assert rel(obj.flatten(result.ihvp), exact(obj, train, v, result.stats["lambda"]).x) <= 3e-2
    assert 0 <= result.stats["repeat_norm_spread"] < 0.05

    result = compute_ihvp(model, train, val, InfluenceArgs.of(method="cg", curvature="hessian", params=SUBSET, cg_tolerance=1e-5, cg_iters=500), progress=False)
    assert result.stats["converged"]
    assert rel(obj.flatten(result.ihvp), exact(obj, train, v, result.stats["lambda"]).x) <= 1e-4


def test_exact_method_uses_relative_damping(tiny_molformer, tiny_exact):
    _, train, _, _ = tiny_molformer
    obj, v, ref = tiny_exact
    hess = exact_hessian(obj, train)
    lam = 0.01 * float(torch.linalg.eigvalsh(hess)[-1])
    assert ref.stats["lambda"] == pytest.approx(lam, rel=1e-12)
    assert rel(obj.flatten(ref.ihvp), torch.linalg.solve(hess + lam * torch.eye(obj.numel, dtype=hess.dtype), v)) < 1e-8


def test_batched_scores_equal_the_batch1_loop_and_are_not_the_identity_order(tiny_molformer, tiny_exact):
    model, _, _, ext = tiny_molformer
    ihvp = tiny_exact[2]
    # float32 IHVP: the same dtype the pipeline scores in
    ihvp32 = type(ihvp)(ihvp={k: t.float() for k, t in ihvp.ihvp.items()}, stats=ihvp.stats, args=ihvp.args)
    batched = score_samples(model, ihvp32, ext, batch_size=10)
    loop = score_samples_loop(model, ihvp32, ext)
    assert batched.shape == (len(ext),) and batched.dtype == torch.float64
    assert bool(torch.isfinite(batched).all())
    assert float((batched - loop).abs().max() / loop.abs().max()) <= 1e-5
    # Peers' bug: NaN scores made every "top-k" the first k rows. Real scores must order the rows otherwise.
    order = torch.argsort(batched)
    assert not torch.equal(order, torch.arange(len(ext))) and not torch.equal(order, torch.arange(len(ext)).flip(0))
    assert len(torch.unique(batched)) == len(ext)


# ---------------------------------------------------------------------------------------------------------------------
# Safeguards


def test_too_small_scale_is_reported_as_divergence(toy):
    model, train, val, _ = toy
    args = InfluenceArgs.of(method="lissa", params="last_layers:1", scale=1e-3, batch_size=len(train), repeats=1)
    with pytest.raises(InfluenceDivergence, match=r"LiSSA diverged.*influence\.scale"):
        compute_ihvp(model, train, val, args, progress=False)


class Indefinite(nn.Module):
    """``f = c·θ₀ + d·θ₁²`` at θ = 0 with label 1: H = diag(2c², −4d) exactly (here diag(8, −2)); G = diag(8, 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        f = 2.0 * self.theta[0] + 0.5 * self.theta[1] ** 2
        return f.expand(ids.shape[0])


@pytest.mark.parametrize("method", ["lissa", "cg", "exact"])
def test_negative_curvature_is_reported_with_a_damping_that_works(method):
    model = Indefinite()
    data = Batch(torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long), torch.ones(4, dtype=torch.float64))
    args = InfluenceArgs.of(method=method, curvature="hessian", params=["theta"], damping=0.01, dtype="float64")
    with pytest.raises(NegativeCurvature, match=r"influence\.damping > 0\.25") as info:
        compute_ihvp(model, data, data, args, progress=False)
    # λ_min(H) = −2, λ_max(H) = 8: any relative damping above 0.25 makes H + λI positive definite.
    assert info.value.suggested_damping == pytest.approx(0.5)
    assert info.value.lambda_min_H == pytest.approx(-2.0, rel=1e-6)
    fixed = compute_ihvp(model, data, data, InfluenceArgs.of(method=method, curvature="hessian", params=["theta"], damping=0.5,
                                                         dtype="float64", batch_size=4, tolerance=1e-9,
                                                         cg_tolerance=1e-9), progress=False)
    # v = ∇L = (−4, 0): s = (H + 4I)⁻¹ v = (−1/3, 0)
    assert torch.allclose(fixed.ihvp["theta"], torch.tensor([-1 / 3, 0.0], dtype=torch.float64), atol=1e-6)


def test_negative_curvature_missed_by_power_iteration_is_diagnosed_when_lissa_diverges():
    model = Indefinite()
    data = Batch(torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long), torch.ones(4, dtype=torch.float64))
    obj = SubsetObjective(model, "theta")
    v = loss_gradient(obj, data) + torch.tensor([0.0, 1e-3], dtype=torch.float64)  # a component along the bad direction
    wrong = EigenEstimate(top=8.0, bottom=0.5, iterations=1)  # as if power iteration had missed λ_min(H) = −2
    args = InfluenceArgs.of(method="lissa", curvature="hessian", params=["theta"], batch_size=4, repeats=1, damping=0.01)
    op = CurvatureOperator(obj, data, "hessian", "func", 4)
    with pytest.raises(NegativeCurvature, match=r"LiSSA.*curvature -2 .*influence\.damping > 0\.25") as info:
        lissa(op, v, 0.08, wrong, args.lissa, args.seed)
    assert info.value.suggested_damping == pytest.approx(0.5)


def test_non_finite_scores_raise_instead_of_returning_nan(toy):
    model, train, val, ext = toy
    result = compute_ihvp(model, train, val, InfluenceArgs.of(method="cg", params="head"), progress=False)
    result.ihvp = {k: torch.full_like(t, torch.finfo(t.dtype).max) for k, t in result.ihvp.items()}
    with pytest.raises(InfluenceDivergence, match="not finite"):
        score_samples(model, result, ext)


def test_scoring_refuses_a_model_that_does_not_match_the_ihvp(toy):
    model, train, val, ext = toy
    result = compute_ihvp(model, train, val, InfluenceArgs.of(method="cg", params="head"), progress=False)
    with pytest.raises(ValueError, match=r"head\.weight.*shape"):
        score_samples(ToyRegressor(hidden=4).double(), result, ext)


class Noisy(ToyRegressor):
    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return super().forward(ids, mask) + 1e-3 * torch.randn(ids.shape[0], dtype=torch.float64)


def test_a_random_model_is_refused(toy):
    _, train, val, _ = toy
    with pytest.raises(ValueError, match="deterministic_eval"):
        compute_ihvp(Noisy().double(), train, val, InfluenceArgs.of(method="cg", params="head"), progress=False)


# ---------------------------------------------------------------------------------------------------------------------
# Sign convention: influence predicts what refitting a ridge regression does


def test_scores_predict_the_effect_of_adding_a_sample_to_a_ridge_regression():
    torch.manual_seed(0)
    model = ToyRegressor(hidden=5).double()  # encoder frozen at random init: fixed features, convex in the head
    train, val, ext = toy_batch(60, 11, "train"), toy_batch(30, 12, "validation"), toy_batch(20, 13, "external")
    for b in (train, val, ext):
        b.labels = b.labels.double()
    with torch.no_grad():
        phi = {k: torch.cat([model.features(b.input_ids, b.attention_mask), torch.ones(len(b), 1, dtype=torch.float64)], 1)
               for k, b in (("train", train), ("val", val), ("ext", ext))}
    n, damping = len(train), 0.01
    gram = 2 / n * phi["train"].T @ phi["train"]  # the Hessian of the mean squared error in (w, b)
    lam = damping * float(torch.linalg.eigvalsh(gram)[-1])

    def ridge(extra_x=None, extra_y=None, eps=0.0):
        """argmin (1/n) Σ (θᵀφᵢ − yᵢ)² + (λ/2)‖θ‖² + ε (θᵀφ_z − y_z)², in closed form."""
        a = gram + lam * torch.eye(gram.shape[0], dtype=torch.float64)
        b = 2 / n * phi["train"].T @ train.labels
        if extra_x is not None:
            a = a + 2 * eps * torch.outer(extra_x, extra_x)
            b = b + 2 * eps * extra_x * extra_y
        return torch.linalg.solve(a, b)

    def val_loss(theta):
        return float(((phi["val"] @ theta - val.labels) ** 2).mean())

    theta = ridge()
    with torch.no_grad():
        model.head.weight.copy_(theta[:-1].unsqueeze(0))
        model.head.bias.copy_(theta[-1:])
    eps = 1e-4
    actual = torch.tensor([(val_loss(ridge(phi["ext"][i], ext.labels[i], eps)) - val_loss(theta)) / eps for i in range(len(ext))])
    for method in ("exact", "lissa", "cg"):
        args = InfluenceArgs.of(method=method, params="head", damping=damping, batch_size=n, repeats=1, dtype="float64",
                             curvature="hessian")
        result = compute_ihvp(model, train, val, args, progress=False)
        assert result.stats["lambda"] == pytest.approx(lam, rel=1e-3)
        predicted = score_samples(model, result, ext)
        corr = float(torch.corrcoef(torch.stack([predicted, actual.double()]))[0, 1])
        assert corr >= 0.99, (method, corr)
        assert torch.equal(torch.sign(predicted), torch.sign(actual)), method
        assert rel(predicted, actual) < 0.05


# ---------------------------------------------------------------------------------------------------------------------
# Determinism and the file format


def test_same_seed_gives_bit_identical_ihvp_and_scores(toy):
    model, train, val, ext = toy
    args = InfluenceArgs.of(method="lissa", curvature="hessian", params="last_layers:1", batch_size=8, repeats=2, depth=60,
                         seed=3, dtype="float32")
    first, second = (compute_ihvp(model, train, val, args, progress=False) for _ in range(2))
    for name in first.ihvp:
        assert torch.equal(first.ihvp[name], second.ihvp[name]), name
    assert torch.equal(score_samples(model, first, ext), score_samples(model, second, ext))
    other = compute_ihvp(model, train, val, InfluenceArgs.of(**{**args.to_dict(), "seed": 4}), progress=False)
    assert not torch.equal(other.ihvp["head.weight"], first.ihvp["head.weight"])  # the seed is actually used


def test_save_and_load_round_trip_with_weights_only(tmp_path, toy):
    model, train, val, _ = toy
    result = compute_ihvp(model, train, val, InfluenceArgs.of(method="cg", params="last_layers:1"), progress=False)
    path = save_ihvp(result, tmp_path / "ihvp.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ihvp.pt"]  # no temporary file left behind
    raw = torch.load(path, weights_only=True)
    assert raw["param_names"] == result.param_names
    loaded = load_ihvp(path)
    assert loaded.shapes == result.shapes and loaded.stats == result.stats and loaded.args == result.args
    assert all(torch.equal(loaded.ihvp[k], result.ihvp[k]) for k in result.ihvp)
    assert math.isfinite(loaded.stats["norm"])
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="bad.pt"):
        load_ihvp(tmp_path / "bad.pt")


# ---------------------------------------------------------------------------------------------------------------------
# Gauss–Newton curvature, the Lanczos spectrum, the default estimator's accuracy and cost


def test_gauss_newton_products_match_G_from_the_full_jacobian(toy):
    """G = (2/n) Σ wᵢ JᵢᵀJᵢ built from autograd's full Jacobian of the predictions (float64), with sample weights."""
    model, train, _, _ = toy
    weighted = Batch(train.input_ids, train.attention_mask, train.labels,
                     torch.linspace(0.5, 2.0, len(train), dtype=torch.float64), name="train")
    obj = SubsetObjective(model, "last_layers:1")
    jac = torch.autograd.functional.jacobian(lambda t: obj.predict(t, weighted), obj.theta0)  # (n, P)
    reference = 2.0 / len(train) * jac.T @ (weighted.weights[:, None] * jac)
    vec = torch.randn(obj.numel, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for mode in ("double_backward", "func"):  # reverse-over-reverse J·v, and forward-mode J·v
        assert rel(gnvp(obj, weighted, vec, batch_size=7, mode=mode), reference @ vec) < 1e-10, mode
    assert torch.allclose(exact_gauss_newton(obj, weighted, batch_size=16), reference, rtol=1e-9, atol=1e-12)
    # G is the Hessian without the residual term: they differ on this non-linear model, and G is never indefinite
    assert rel(hvp(obj, weighted, vec, batch_size=7), reference @ vec) > 1e-3
    assert float(torch.linalg.eigvalsh(reference)[0]) > -1e-10


class Saddle(nn.Module):
    """``f = c·a + ½ bᵀ D b`` at θ = 0 with label 1: H = diag(2ccᵀ, −2D), G = diag(2ccᵀ, 0). Here the largest
    eigenvalue of H is 2|c|² = 8 and the most negative −2·max(D) = −20: the largest in magnitude is negative."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(4, dtype=torch.float64))
        self.b = nn.Parameter(torch.zeros(6, dtype=torch.float64))
        self.register_buffer("c", torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
        self.register_buffer("d", torch.tensor([10.0, 7.0, 3.0, 1.0, 0.5, 0.1], dtype=torch.float64))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        f = self.c @ self.a + 0.5 * (self.d * self.b**2).sum()
        return f.expand(ids.shape[0])


def _saddle_data() -> Batch:
    return Batch(torch.ones(5, 3, dtype=torch.long), torch.ones(5, 3, dtype=torch.long), torch.ones(5, dtype=torch.float64))


def test_lanczos_finds_both_ends_of_a_spectrum_dominated_by_negative_curvature():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(400, 400, generator=gen, dtype=torch.float64))
    evals = torch.cat([torch.tensor([-50.0, -30.0, 8.0, 6.0], dtype=torch.float64),
                       torch.rand(396, generator=gen, dtype=torch.float64) * 2 - 1])
    matrix = q @ torch.diag(evals) @ q.T
    est = lanczos(lambda u: matrix @ u, torch.randn(400, generator=gen, dtype=torch.float64), iters=40)
    assert est.top == pytest.approx(8.0, rel=0.05) and est.bottom == pytest.approx(-50.0, rel=0.05)
    assert est.top <= 8.0 + 1e-9 and est.bottom >= -50.0 - 1e-9  # Ritz values lie inside the spectrum

    # through a model's Hessian: what the IHVP stage reports, and the damping it suggests
    model, data = Saddle(), _saddle_data()
    obj = SubsetObjective(model, "all")
    dense = torch.linalg.eigvalsh(exact_hessian(obj, data))
    assert abs(float(dense[0])) > abs(float(dense[-1]))
    eigs = estimate_eigs(obj, data, iters=30, curvature="hessian")
    assert eigs.top == pytest.approx(float(dense[-1]), rel=0.05)
    assert eigs.bottom == pytest.approx(float(dense[0]), rel=0.05)
    with pytest.raises(NegativeCurvature, match=r"influence\.damping > 2\.5") as info:
        compute_ihvp(model, data, data, InfluenceArgs.of(curvature="hessian", dtype="float64"), progress=False)
    assert info.value.suggested_damping == pytest.approx(5.0)  # 2 × 20/8, from the correct λ_max = 8
    # The Gauss–Newton matrix of the same model is positive semi-definite: LiSSA and CG on it never meet negative
    # curvature and agree with the dense solve.
    for method in ("lissa", "cg"):
        args = InfluenceArgs.of(method=method, dtype="float64", batch_size=5, tolerance=1e-10, cg_tolerance=1e-10)
        result = compute_ihvp(model, data, data, args, progress=False)
        reference = exact(obj, data, loss_gradient(obj, data), result.stats["lambda"], curvature="gauss_newton").x
        assert rel(obj.flatten(result.ihvp), reference) < 1e-6, method
        assert result.stats["lambda_min_C"] >= -1e-9


def _score_error(model, ihvp, reference, ext) -> float:
    got, want = score_samples(model, ihvp, ext), score_samples(model, reference, ext)
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("which", ["toy", "tiny_molformer"])
def test_default_estimator_scores_are_within_2_percent_of_exact(which, request):
    """The default settings (CG on the damped Gauss–Newton system) against the dense float64 solve of the same
    system at the same λ, compared where they are used: the external scores."""
    model, train, val, ext = request.getfixturevalue(which)
    params = "all" if which == "toy" else SUBSET
    result = compute_ihvp(model, train, val, InfluenceArgs.of(params=params), progress=False)
    st = result.stats
    assert (st["method"], st["curvature"]) == ("cg", "gauss_newton")
    obj = SubsetObjective(model, params, torch.float64)
    x = exact(obj, train, loss_gradient(obj, val), st["lambda"], curvature="gauss_newton").x
    reference = type(result)(ihvp={n: t for n, t in obj.unflatten(x).items()}, stats={}, args={})
    assert _score_error(model, result, reference, ext) <= 0.02
    assert st["relative_residual"] < 1e-2 and st["hvp_full_equivalents"] > 0


def test_chunk_size_bounds_memory_not_the_result_and_cost_is_counted(toy):
    """influence.chunk_size (rows per pass of a full-split product) is separate from LiSSA's mini-batch: changing it
    leaves the result unchanged; hvp_full_equivalents counts the products in full-split units."""
    model, train, val, _ = toy
    base = dict(method="lissa", params="last_layers:1", batch_size=8, repeats=2, depth=40, seed=1, dtype="float64")
    a = compute_ihvp(model, train, val, InfluenceArgs.of(**base, chunk_size=3), progress=False)
    b = compute_ihvp(model, train, val, InfluenceArgs.of(**base, chunk_size=64), progress=False)
    for name in a.ihvp:
        torch.testing.assert_close(a.ihvp[name], b.ihvp[name], rtol=1e-9, atol=1e-12)
    st = a.stats
    n = len(train)
    spectrum = st["spectrum_iterations"] * st["spectrum_rows"] / n
    assert st["hvp_full_equivalents"] == pytest.approx(spectrum + sum(st["steps"]) * 8 / n + 1)  # + the residual
    stab = st["topk_stability"]
    assert stab["k"] >= 1 and 0.0 <= stab["overlap_min"] <= stab["overlap_mean"] <= 1.0
    cg_run = compute_ihvp(model, train, val, InfluenceArgs.of(params="last_layers:1", spectrum_samples=10), progress=False)
    assert cg_run.stats["spectrum_rows"] == 10  # a seeded subsample for the spectrum of a large split
    assert cg_run.stats["hvp_full_equivalents"] == pytest.approx(
        cg_run.stats["spectrum_iterations"] * 10 / n + cg_run.stats["steps"][0] + 1)


# ---------------------------------------------------------------------------------------------------------------------
# EK-FAC through kronfluence


def test_ekfac_is_exact_for_a_single_linear_output_layer_and_writes_the_same_file(toy, tmp_path):
    """For the head alone (one Linear with one output) the Gauss–Newton matrix is exactly a Kronecker product, so
    kronfluence's EK-FAC must reproduce the exact solve: this checks the task, the sign, the scale and the layout of
    weight and bias. Over several Linear modules EK-FAC is an approximation (block-diagonal): scores are finite, its
    residual against the exact Gauss–Newton product is reported, and runs are deterministic."""
    pytest.importorskip("kronfluence")
    model, train, val, ext = toy
    model32 = ToyRegressor().float()
    model32.load_state_dict({k: t.float() for k, t in model.state_dict().items()})
    train32, val32, ext32 = (Batch(b.input_ids, b.attention_mask, b.labels.float(), name=b.name) for b in (train, val, ext))
    head = compute_ihvp(model32, train32, val32, InfluenceArgs.of(method="ekfac", params="head"), progress=False)
    assert head.param_names == ["head.weight", "head.bias"] and "EK-FAC" in head.stats["holds"]
    reference = compute_ihvp(model32, train32, val32, InfluenceArgs.of(method="exact", params="head"), progress=False)
    assert head.stats["lambda"] == pytest.approx(reference.stats["lambda"], rel=1e-3)
    assert _score_error(model32, head, reference, ext32) < 1e-4
    assert head.stats["relative_residual"] < 1e-4

    every = compute_ihvp(model32, train32, val32, InfluenceArgs.of(method="ekfac"), progress=False)
    assert every.stats["ekfac_modules"] == ["body.blocks.0.dense", "body.blocks.1.dense", "head"]
    assert every.param_names == [f"{m}.{p}" for m in every.stats["ekfac_modules"] for p in ("weight", "bias")]
    assert every.stats["hvp_full_equivalents"] > 0 and math.isfinite(every.stats["relative_residual"])
    again = compute_ihvp(model32, train32, val32, InfluenceArgs.of(method="ekfac"), progress=False)
    assert all(torch.equal(every.ihvp[k], again.ihvp[k]) for k in every.ihvp)
    scores = score_samples(model32, load_ihvp(save_ihvp(every, tmp_path / "ekfac.pt")), ext32)
    assert bool(torch.isfinite(scores).all()) and len(torch.unique(scores)) == len(ext32)
    with pytest.raises(ValueError, match=r"ekfac.*nn\.Linear.*influence\.params"):
        compute_ihvp(model32, train32, val32, InfluenceArgs.of(method="ekfac", params=["body.norm"]), progress=False)


def test_ekfac_factors_are_kept_reused_and_precondition_as_kronfluences_public_scores(toy, tmp_path):
    """EK-FAC goes through kronfluence's public API: factors fitted by Analyzer.fit_all_factors are kept under a name
    that depends on the model and split, reused by a second run, and the preconditioned s gives the same scores as
    kronfluence's own public compute_pairwise_scores on those factors (the independent reference of the one product
    written here), over several Linear modules where EK-FAC is an approximation."""
    pytest.importorskip("kronfluence")
    import copy

    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import ScoreArguments

    from molinfluence.influence.ekfac import RegressionTask, _RowsDataset

    model, train, val, ext = toy
    model32 = ToyRegressor().float()
    model32.load_state_dict({k: t.float() for k, t in model.state_dict().items()})
    train32, val32, ext32 = (Batch(b.input_ids, b.attention_mask, b.labels.float(), name=b.name) for b in (train, val, ext))
    args = InfluenceArgs.of(method="ekfac", dtype="float64")
    first = compute_ihvp(model32, train32, val32, args, progress=False, factors_dir=tmp_path)
    name = first.stats["ekfac_factors"]
    assert not first.stats["ekfac_factors_reused"] and (tmp_path / "ihvp" / f"factors_{name}").is_dir()
    again = compute_ihvp(model32, train32, val32, args, progress=False, factors_dir=tmp_path)
    assert again.stats["ekfac_factors_reused"] and again.stats["ekfac_factors"] == name
    assert all(torch.equal(first.ihvp[k], again.ihvp[k]) for k in first.ihvp)
    shifted = {k: t + 0.01 if k == "head.bias" else t for k, t in model32.state_dict().items()}
    other = ToyRegressor().float()
    other.load_state_dict(shifted)
    assert compute_ihvp(other, train32, val32, args, progress=False, factors_dir=tmp_path).stats["ekfac_factors"] != name

    modules = first.stats["ekfac_modules"]
    work = prepare_model(copy.deepcopy(model32).eval(), RegressionTask(modules, masked=True))
    analyzer = Analyzer("ihvp", work, RegressionTask(modules, masked=True), cpu=True, disable_tqdm=True,
                        output_dir=str(tmp_path))
    score_args = ScoreArguments(damping_factor=first.stats["lambda"], precondition_dtype=torch.float64,
                                per_sample_gradient_dtype=torch.float64, score_dtype=torch.float64,
                                aggregate_query_gradients=True)
    analyzer.compute_pairwise_scores("check", name, _RowsDataset(val32), _RowsDataset(ext32),
                                     per_device_query_batch_size=len(val32), per_device_train_batch_size=len(ext32),
                                     score_args=score_args)
    theirs = analyzer.load_pairwise_scores("check")["all_modules"].reshape(-1).double()
    # kronfluence: Σ_q ∇ℓ(q)ᵀ P ∇ℓ(z) over the query (target) rows; ours: −sᵀ∇ℓ(z) with s = P v, v their mean.
    ours = score_samples(model32, first, ext32).double()
    assert torch.allclose(ours, -theirs / len(val32), rtol=1e-4, atol=1e-7 * float(theirs.abs().max()))
