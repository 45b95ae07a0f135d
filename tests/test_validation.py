"""Influence validation: sample choice, the paired retraining of the full setting, the convex reference against a
closed-form refit (Spearman ≥ 0.9 with the default estimator), the estimators compared on the same samples, the
bootstrap and the noise summary, the integration run's results (tests/config/integration.yaml), and that the stage is
planned only when enabled.

The tiny model is a randomly initialised MoLFormer (conftest.py) on real FreeSolv molecules.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import stats

from molinfluence.influence import Batch, FeatureBatch, InfluenceArgs, compute_ihvp
from molinfluence.regressor import RegressorSpec, encode_frame, new_regressor
from molinfluence.validation import (
    FrozenFeatureHead,
    _pearson_rows,
    Recipe,
    ValidationArgs,
    build_report,
    choose_samples,
    check_estimators,
    chunk_rows,
    compare_estimators,
    convex_reference,
    estimator_table,
    topk_overlap_with_ci,
    correlation_with_ci,
    full_effects,
    head_inputs,
    retrain_target_loss,
    summarize_setting,
)

REPO = Path(__file__).resolve().parents[1]
MAX_LENGTH = 64


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures: a tiny regressor and splits of real molecules


@pytest.fixture(scope="module")
def tiny(tiny_encoder_dir, molecules):
    """(model, train, target, samples as Batches, samples table) from disjoint slices of FreeSolv."""
    model, tokenizer = new_regressor(tiny_encoder_dir, RegressorSpec(max_length=MAX_LENGTH), seed=0)
    model.eval()

    def batch(frame: pd.DataFrame, name: str) -> Batch:
        return Batch(*encode_frame(tokenizer, frame, MAX_LENGTH), name=name)

    table = molecules.reset_index(drop=True)
    samples = table.iloc[300:312].reset_index(drop=True).assign(ext_index=range(300, 312))
    return model, batch(table.iloc[:200], "train"), batch(table.iloc[200:260], "validation"), batch(samples, "chosen"), samples


# ---------------------------------------------------------------------------------------------------------------------
# Which samples


def _scores(values) -> pd.DataFrame:
    n = len(values)
    return pd.DataFrame({"ext_index": np.arange(1000, 1000 + n), "smiles": ["C"] * n, "label": np.zeros(n), "score": values})


def test_sample_choice_spreads_over_the_score_range():
    values = np.random.default_rng(1).normal(size=101)
    chosen = choose_samples(_scores(values), 11, seed=0)
    assert len(chosen) == 11 and chosen.ext_index.is_unique
    assert chosen.score.iloc[0] == values.min() and chosen.score.iloc[-1] == values.max()
    assert chosen["rank"].tolist() == list(range(0, 101, 10))  # one sample per decile of the ranking
    assert chosen.score.is_monotonic_increasing
    # each chosen score sits at its quantile of the score distribution
    assert np.allclose(chosen.score, np.quantile(values, np.linspace(0, 1, 11), method="nearest"))


def test_sample_choice_is_seeded_and_independent_of_row_order():
    values = np.repeat([-2.0, -1.0, 0.0, 1.0, 2.0], 20)  # heavy ties: which row fills a position is the seed's choice
    table = _scores(values)
    first = choose_samples(table, 9, seed=3)
    assert first.ext_index.tolist() == choose_samples(table, 9, seed=3).ext_index.tolist()
    shuffled = table.sample(frac=1.0, random_state=7)
    assert first.ext_index.tolist() == choose_samples(shuffled, 9, seed=3).ext_index.tolist()
    others = {tuple(choose_samples(table, 9, seed=s).ext_index) for s in range(5)}
    assert len(others) > 1
    for s in range(5):  # the scores (the spread) do not depend on the seed, only the tie-breaking does
        assert choose_samples(table, 9, seed=s).score.tolist() == first.score.tolist()


def test_sample_choice_rejects_bad_input():
    with pytest.raises(ValueError, match="validation.m = 12 is larger than the 10"):
        choose_samples(_scores(np.arange(10.0)), 12, seed=0, source="scores.csv")
    bad = _scores(np.array([0.0, 1.0, np.nan, 2.0]))
    with pytest.raises(ValueError, match="scores.csv: the score of row 3 is not a finite number"):
        choose_samples(bad, 3, seed=0, source="scores.csv")
    with pytest.raises(ValueError, match="missing column"):
        choose_samples(_scores(np.arange(5.0)).drop(columns="score"), 3, seed=0)
    assert chunk_rows(10, 4, 2) == [8, 9]
    with pytest.raises(ValueError, match="chunk 3 does not exist"):
        chunk_rows(10, 4, 3)


def test_validation_args_name_the_bad_key():
    assert ValidationArgs.from_dict({"batch_size": None}).recipe().batch_size is None
    with pytest.raises(ValueError, match=r"unknown key 'stpes' \(did you mean 'steps'\?\) in `validation`"):
        ValidationArgs.from_dict({"stpes": 3})
    with pytest.raises(ValueError, match=r"`validation\.seeds`: \[1, 1\] has non-unique elements"):
        ValidationArgs.from_dict({"seeds": [1, 1]})
    with pytest.raises(ValueError, match=r"`validation\.m`: 2 is less than the minimum of 3"):
        ValidationArgs.from_dict({"m": 2})


# ---------------------------------------------------------------------------------------------------------------------
# The full setting: paired retraining


def test_run_with_a_zero_weight_sample_is_bit_identical_to_its_baseline(tiny):
    """z's extra forward pass (dropout, feature-map redraw) must not shift the batch order or the random draws."""
    model, train, target, samples, _ = tiny
    train, target = train.subset(range(96)), target.subset(range(32))  # small: four runs of four steps
    start = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = Recipe(steps=4, lr=1e-3, weight_decay=0.01, batch_size=32, train_mode=True)
    work = copy.deepcopy(model)
    base = retrain_target_loss(work, start, train, target, recipe, seed=5)
    zero = retrain_target_loss(work, start, train, target, recipe, seed=5, extra=samples.subset([0]), extra_weight=0.0)
    assert zero == base
    added = retrain_target_loss(work, start, train, target, recipe, seed=5, extra=samples.subset([0]), extra_weight=1 / 96)
    assert added != base
    assert retrain_target_loss(work, start, train, target, recipe, seed=6) != base  # the seed does matter


def test_full_effects_are_deterministic_and_leave_the_model_alone(tiny):
    model, train, target, samples, table = tiny
    train, target = train.subset(range(64)), target.subset(range(32))  # small: ten runs
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = Recipe(steps=3, lr=1e-3, weight_decay=0.0, batch_size=None, train_mode=False)  # full batch, eval mode
    runs = full_effects(model, train, target, samples.subset([0, 1]), recipe, [0, 1], table.ext_index[:2].tolist())
    again = full_effects(model, train, target, samples.subset([0, 1]), recipe, [0, 1], table.ext_index[:2].tolist())
    pd.testing.assert_frame_equal(runs, again)
    assert runs.ext_index.tolist() == [300, 300, 301, 301] and runs.seed.tolist() == [0, 1, 0, 1]
    base = full_effects(model, train, target, None, recipe, [0, 1])
    assert base.ext_index.tolist() == [-1, -1]
    # full batch in eval mode has no randomness left: both seeds give the same run
    assert base.target_loss.iloc[0] == base.target_loss.iloc[1]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


# ---------------------------------------------------------------------------------------------------------------------
# The convex reference


def test_frozen_feature_head_is_the_model_with_its_encoder_frozen(tiny):
    """Cached head inputs reproduce the model's predictions, and its head-only IHVP is the model's (exact solves)."""
    model, train, target, _, _ = tiny
    frozen = FrozenFeatureHead(model.head)
    rows_train = FeatureBatch(head_inputs(model, train), train.labels.double(), name="train")
    rows_target = FeatureBatch(head_inputs(model, target), target.labels.double(), name="validation")
    with torch.no_grad():
        direct = model(train.input_ids, train.attention_mask).double()
        cached = frozen(*rows_train.inputs)
    torch.testing.assert_close(cached, direct, rtol=1e-6, atol=1e-6)
    args = {"method": "exact", "params": "head"}
    reference = compute_ihvp(model, train, target, args, progress=False)
    ours = compute_ihvp(frozen, rows_train, rows_target, args, progress=False)
    assert ours.param_names == reference.param_names == ["head.weight", "head.bias"]
    for name in ours.ihvp:
        torch.testing.assert_close(ours.ihvp[name].float(), reference.ihvp[name].float(), rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def convex(tiny):
    """The convex setting with the default estimator (CG on Gauss–Newton, damping 0.01) and two seeds."""
    model, train, target, samples, table = tiny
    effects, scores, stats_ = convex_reference(model, train, target, samples, InfluenceArgs.of(), [0, 1], table.ext_index)
    return effects, scores, stats_


def _closed_form(x, y, lam, center, extra=None):
    """argmin mean((Xw + b − y)²) + w_z (x_z w + b − y_z)² + λ/2 ‖θ − center‖², from the normal equations."""
    xx = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    a = 2.0 * xx.T @ xx / len(x) + lam * torch.eye(xx.shape[1], dtype=x.dtype)
    b = 2.0 * xx.T @ y / len(x) + lam * center
    if extra is not None:
        xz, yz, w = extra
        xz1 = torch.cat([xz, torch.ones(1, 1, dtype=x.dtype)], dim=1)
        a = a + 2.0 * w * xz1.T @ xz1
        b = b + 2.0 * w * xz1.T @ yz
    return torch.linalg.solve(a, b)


def test_convex_retraining_reaches_the_closed_form_optimum(tiny, convex):
    model, train, target, samples, table = tiny
    effects, _, st = convex
    x, x_t, x_s = head_inputs(model, train), head_inputs(model, target), head_inputs(model, samples)
    y, y_t, y_s = train.labels.double(), target.labels.double(), samples.labels.double()
    center = torch.cat([model.head.weight.detach().reshape(-1), model.head.bias.detach()]).double()
    lam = st["lambda"]

    def loss_t(theta):
        return float((x_t @ theta[:-1] + theta[-1] - y_t).square().mean())

    base = loss_t(_closed_form(x, y, lam, center))
    runs = effects.set_index(["ext_index", "seed"]).target_loss
    for seed in (0, 1):
        assert runs[(-1, seed)] == pytest.approx(base, rel=1e-9)
    for i, ext in enumerate(table.ext_index):
        with_z = loss_t(_closed_form(x, y, lam, center, (x_s[i : i + 1], y_s[i : i + 1], 1 / len(train))))
        measured = runs[(ext, 0)] - runs[(-1, 0)]
        assert measured == pytest.approx(with_z - base, rel=1e-4, abs=1e-9), ext
    assert st["lambda_at_optimum"] == pytest.approx(lam, rel=1e-6)
    assert st["train_loss_optimum"] < st["train_loss_base"]  # θ*₀ is the damped optimum, not the base head


def test_convex_setting_predicts_the_measured_effect(tiny, convex):
    """The issue's acceptance test: with the default estimator the convex reference ranks the effects correctly."""
    _, train, _, _, table = tiny
    effects, scores, st = convex
    predicted = pd.Series(scores.score.to_numpy() / len(train), index=scores.ext_index)
    summary, per_sample = summarize_setting(predicted, effects, n_boot=500, seed=0)
    print(f"convex: Spearman {summary['spearman']}, Pearson {summary['pearson']}, scale {summary['scale_ratio']:.3f}")
    assert summary["spearman"]["estimate"] >= 0.9
    assert summary["pearson"]["estimate"] >= 0.9
    assert 0.8 < summary["scale_ratio"] < 1.2  # the score also has the right size: Δ ≈ I(z)/n
    assert st["ihvp"]["method"] == "cg" and st["ihvp"]["damping"] == 0.01
    # the measurement noise is reported, and in the convex setting it is the solver's precision: negligible
    noise = summary["noise"]
    assert noise["delta_sd_max"] is not None and noise["delta_sd_max"] < 1e-3 * noise["actual_sd_across_samples"]
    assert noise["seed_agreement_pearson"] > 0.999
    assert len(per_sample) == len(table) and per_sample.actual_sd.ge(0).all()


# ---------------------------------------------------------------------------------------------------------------------
# Agreement and noise


def test_bootstrap_interval_contains_the_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    x = rng.normal(size=15)
    y = x + 0.7 * rng.normal(size=15)
    out = correlation_with_ci(x, y, n_boot=1000, seed=4)
    assert out["pearson"]["estimate"] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert out["spearman"]["estimate"] == pytest.approx(stats.spearmanr(x, y).statistic)
    for name in ("pearson", "spearman"):
        lo, hi = out[name]["ci"]
        assert -1 <= lo <= out[name]["estimate"] <= hi <= 1
    assert correlation_with_ci(x, y, n_boot=1000, seed=4) == out
    assert correlation_with_ci(x, y, n_boot=1000, seed=5)["pearson"]["ci"] != out["pearson"]["ci"]
    # the vectorised bootstrap agrees with scipy on the same resamples (loop reference)
    idx = np.random.default_rng(4).integers(0, 15, size=(1000, 15))
    loop = [stats.spearmanr(x[i], y[i]).statistic for i in idx[:50]]
    vectorised = _pearson_rows(stats.rankdata(x[idx[:50]], axis=1), stats.rankdata(y[idx[:50]], axis=1))
    np.testing.assert_allclose(vectorised, loop, rtol=1e-10)


def test_undefined_correlations_are_none_not_nan():
    out = correlation_with_ci([1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0], n_boot=200)
    assert out["pearson"]["estimate"] is None and out["pearson"]["ci"] is None
    with pytest.raises(ValueError, match="finite"):
        correlation_with_ci([1.0, np.nan, 3.0], [1.0, 2.0, 3.0])


def _runs(deltas: np.ndarray, baselines: list[float]) -> pd.DataFrame:
    rows = [{"ext_index": -1, "seed": s, "target_loss": b} for s, b in enumerate(baselines)]
    for i, row in enumerate(deltas):
        rows += [{"ext_index": 10 + i, "seed": s, "target_loss": baselines[s] + d} for s, d in enumerate(row)]
    return pd.DataFrame(rows)


def test_noise_of_the_measurement_is_reported():
    rng = np.random.default_rng(2)
    truth = np.linspace(-1, 1, 8)
    deltas = truth[:, None] + 0.1 * rng.normal(size=(8, 3))
    baselines = [5.0, 5.3, 4.9]
    predicted = pd.Series(2 * truth, index=range(10, 18))
    summary, table = summarize_setting(predicted, _runs(deltas, baselines), n_boot=300, seed=0)
    np.testing.assert_allclose(table.actual, deltas.mean(axis=1), atol=1e-12)
    np.testing.assert_allclose(table.actual_sd, deltas.std(axis=1, ddof=1), atol=1e-12)
    noise = summary["noise"]
    assert noise["baseline_loss_sd"] == pytest.approx(np.std(baselines, ddof=1))
    assert noise["delta_sd_median"] == pytest.approx(np.median(deltas.std(axis=1, ddof=1)), abs=1e-12)
    pairs = [stats.pearsonr(deltas[:, a], deltas[:, b]).statistic for a, b in ((0, 1), (0, 2), (1, 2))]
    assert noise["seed_agreement_pearson"] == pytest.approx(np.mean(pairs))
    assert summary["scale_ratio"] == pytest.approx(0.5, rel=0.05)  # the prediction is twice the truth
    with pytest.raises(ValueError, match="no baseline run for seed"):
        summarize_setting(predicted, _runs(deltas, baselines).query("not (ext_index == -1 and seed == 2)"))
    with pytest.raises(ValueError, match="ext_index 17 has no retraining run"):
        summarize_setting(predicted, _runs(deltas, baselines).query("not (ext_index == 17 and seed == 1)"))


def test_report_puts_both_settings_on_the_score_per_sample_scale(tiny, convex):
    _, train, _, _, table = tiny
    effects, scores, st = convex
    chosen = table.assign(score=np.linspace(-2, 2, len(table)), rank=range(len(table)), quantile=0.0)
    full = effects.assign(target_loss=effects.target_loss + 0.1 * effects.ext_index.ne(-1))
    report, per_sample = build_report(chosen, len(train), full, effects, scores, st, recipe=Recipe(3, 1e-3, 0.0, 16),
                                      influence_stats={"params": "all", "lambda": 1.0}, n_boot=200)
    assert report["epsilon"] == 1 / len(train) and set(report["settings"]) == {"full", "convex"}
    rows = per_sample[per_sample.setting == "full"].reset_index(drop=True)
    convex_rows = per_sample[per_sample.setting == "convex"].reset_index(drop=True)
    np.testing.assert_allclose(rows.predicted, chosen.score / len(train))
    np.testing.assert_allclose(convex_rows.predicted, scores.score / len(train))
    np.testing.assert_allclose(rows.actual, convex_rows.actual + 0.1, rtol=1e-6)  # the 0.1 added to every run with z
    assert report["settings"]["full"]["influence"]["params"] == "all"
    assert report["settings"]["convex"]["influence"]["influence_params"] == "head"


# ---------------------------------------------------------------------------------------------------------------------
# Estimators compared on the same samples against the same retraining


def test_topk_overlap_counts_the_shared_most_helpful_samples():
    x = np.arange(10.0)
    assert topk_overlap_with_ci(x, x, 3, n_boot=200)["estimate"] == 1.0
    assert topk_overlap_with_ci(x, -x, 3, n_boot=200)["estimate"] == 0.0
    y = x.copy()
    y[[0, 5]] = y[[5, 0]]  # the most helpful by prediction is only 6th measured
    out = topk_overlap_with_ci(x, y, 3, n_boot=300, seed=1)
    assert out["estimate"] == pytest.approx(2 / 3) and out["k"] == 3
    assert 0.0 <= out["ci"][0] <= out["estimate"] <= out["ci"][1] <= 1.0


def test_estimator_specs_name_the_bad_entry():
    with pytest.raises(ValueError, match=r"validation\.estimators\[1\]: the name 'a' is used twice"):
        check_estimators([{"name": "a"}, {"name": "a"}])
    with pytest.raises(ValueError, match=r"validation\.estimators\[0\] \(a\): .*unknown key 'methd' .*in `influence`"):
        check_estimators([{"name": "a", "methd": "cg"}])
    with pytest.raises(ValueError, match=r"`validation\.estimators\.0`: 'name' is a required property"):
        ValidationArgs.from_dict({"estimators": [{"method": "cg"}]})


def test_estimators_are_compared_on_the_same_samples_and_runs(tiny, convex):
    """Each estimator scores the chosen samples on the base model; the table puts every one (and the pipeline's own
    scores) against the same measured effects; an estimator that refuses keeps its row with the reason."""
    model, train, target, samples, table = tiny
    effects, _, _ = convex
    specs = [{"name": "gn_cg_head", "params": "head"}, {"name": "gn_cg_all", "params": "all", "cg_iters": 8},
             {"name": "hessian_tiny_damping", "curvature": "hessian", "damping": 1e-9}]
    scores, st = compare_estimators(model, train, target, samples, {}, specs, table.ext_index.tolist())
    assert set(scores.estimator) <= {"gn_cg_head", "gn_cg_all", "hessian_tiny_damping"}
    assert scores.groupby("estimator").size().eq(len(table)).all()
    chosen = table.assign(score=scores[scores.estimator == "gn_cg_head"].score.to_numpy(), rank=range(len(table)),
                          quantile=0.0)
    out = estimator_table(chosen, len(train), effects, scores, st, {"method": "cg", "params": "head"}, k=3, n_boot=200)
    assert out.estimator.tolist() == ["pipeline", "gn_cg_head", "gn_cg_all", "hessian_tiny_damping"]
    ok = out[out.refused.isna()]
    assert ok.pearson.between(-1, 1).all() and ok.topk_overlap.between(0, 1).all()
    assert (ok.pearson_ci_low <= ok.pearson).all() and (ok.pearson <= ok.pearson_ci_high).all()
    # the pipeline row and the identical estimator agree exactly: same scores, same runs
    assert out.pearson.iloc[0] == pytest.approx(out.pearson.iloc[1])
    assert ok.hvp_full_equivalents.iloc[1:].gt(0).all()
    refused = out.set_index("estimator").loc["hessian_tiny_damping"]
    # the random tiny model's Hessian is indefinite: at a 1e-9 relative damping it is refused, with the reason
    assert isinstance(refused.refused, str) and "influence.damping" in refused.refused and pd.isna(refused.pearson)


# ---------------------------------------------------------------------------------------------------------------------
# Workflow: planned only when enabled; the integration run's results


def _planned(config: dict, tmp_path: Path) -> dict[str, int]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path / "work"),
           "--configfile", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    start = lines.index("Job stats:") + 3
    counts = {}
    for row in lines[start:]:
        parts = row.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def test_stage_is_planned_only_when_enabled(tmp_path):
    external = tmp_path / "external.csv"
    external.write_text("SMILES,Label\nCCO,1.0\n")
    config = yaml.safe_load((REPO / "config.yaml").read_text())  # the real experiment: validation left at its default
    config["data"]["external"]["path"] = str(external)
    off = _planned(config, tmp_path / "off")
    assert off.get("finetune") and not [rule for rule in off if rule.startswith("validate")]
    config["validation"] = {"enabled": True, "m": 7, "seeds": [0, 2], "chunk_size": 3}
    on = _planned(config, tmp_path / "on")
    assert {rule: n for rule, n in on.items() if rule.startswith("validate")} == {
        "validate_choose": 1, "validate_baseline": 2, "validate_full": 3, "validate_convex": 1, "validate_influence": 1,
        "validate_estimators": 1, "validate_estimator_table": 1,
    }


@pytest.mark.slow
def test_integration_run_reports_both_settings(demo):
    """The `demo` fixture's run of tests/config/integration.yaml (the demo's DAG on 200 molecules, validation on; not
    examples/demo.yaml, whose own outputs tests/test_demo.py checks): both validation settings and the estimator table
    are written with finite, in-range statistics."""
    import json

    path = demo.results / "validation" / "influence_validation.json"
    assert path.is_file(), "the integration config enables validation: results/validation/influence_validation.json must exist"
    report = json.loads(path.read_text())
    demo_cfg = yaml.safe_load(demo.config.read_text())["validation"]
    assert report["m"] == demo_cfg["m"] and report["settings"]["full"]["noise"]["seeds"] == demo_cfg["seeds"]
    for setting in ("full", "convex"):
        s = report["settings"][setting]
        for name in ("pearson", "spearman"):
            assert s[name]["estimate"] is not None and math.isfinite(s[name]["estimate"]), (setting, name)
            lo, hi = s[name]["ci"]
            assert lo <= s[name]["estimate"] <= hi
        assert s["noise"]["baseline_loss_sd"] is not None
        print(f"integration {setting}: Pearson {s['pearson']}, Spearman {s['spearman']}, noise {s['noise']}")
    assert report["settings"]["convex"]["spearman"]["estimate"] >= 0.9
    per_sample = pd.read_csv(demo.results / "validation" / "effects.csv")
    assert len(per_sample) == 2 * demo_cfg["m"]
    # every default estimator ran on all parameters of the integration run's model (none refused), in one table
    estimators = pd.read_csv(demo.results / "validation" / "estimators.csv")
    assert estimators.estimator.tolist()[0] == "pipeline"
    assert sorted(estimators.estimator[1:]) == sorted(e["name"] for e in ValidationArgs().estimators)
    assert estimators.refused.isna().all() and estimators.pearson.between(-1, 1).all()
    assert estimators.topk_overlap.between(0, 1).all() and (estimators.hvp_full_equivalents > 0).all()
    assert (demo.results / "validation" / "estimators.png").stat().st_size > 0
    stats = json.loads((demo.results / "influence" / "ihvp_stats.json").read_text())
    assert (stats["method"], stats["curvature"], stats["params"]) == ("cg", "gauss_newton", "all")
    assert stats["hvp_full_equivalents"] > 0 and stats["relative_residual"] < 0.01
    for png in ("influence_validation.png", "influence_validation_convex.png"):
        assert (demo.results / "validation" / png).stat().st_size > 0


@pytest.mark.slow
def test_validation_reruns_only_what_a_change_touches(demo, tmp_path):
    """Bootstrap settings rerun only the summary, a new seed only its baseline (plus the jobs with every seed inside),
    an edit of the validation module only the stage; nothing upstream."""

    def variant(**changes):
        cfg = yaml.safe_load(demo.config.read_text())
        cfg["validation"].update(changes)
        path = tmp_path / f"variant{len(changes)}_{'_'.join(changes)}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    assert demo.planned(config=variant(bootstrap=500)) == {"validate_influence": 1, "validate_estimator_table": 1, "all": 1}
    section = yaml.safe_load(demo.config.read_text())["validation"]
    seeds, chunks = section["seeds"], math.ceil(section["m"] / section["chunk_size"])
    assert demo.planned(config=variant(seeds=[*seeds, 99])) == {
        "validate_baseline": 1, "validate_full": chunks, "validate_convex": 1, "validate_influence": 1,
        "validate_estimator_table": 1, "all": 1,
    }
    module = demo.checkout / "molinfluence" / "validation" / "retrain.py"
    original = module.read_bytes()
    try:
        module.write_bytes(original + b"\n# an edit\n")
        plan = demo.planned()
    finally:
        module.write_bytes(original)
    assert plan == {"validate_choose": 1, "validate_baseline": len(seeds), "validate_full": chunks,
                    "validate_convex": 1, "validate_estimators": 1, "validate_influence": 1, "validate_estimator_table": 1,
                    "all": 1}
    assert demo.planned() == {}
