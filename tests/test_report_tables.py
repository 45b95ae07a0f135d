"""molinfluence.report_tables: the command that prints the docs' tables from a results folder puts the run's own numbers
in the right cells, names missing files, and refuses a folder with none of them. A hand-made results folder, no run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from molinfluence.report_tables import ReportError, report

REPO = Path(__file__).resolve().parents[1]


def _results(root: Path) -> Path:
    r = root / "results"
    (r / "base").mkdir(parents=True)
    (r / "influence").mkdir()
    (r / "validation").mkdir()
    (r / "base" / "metrics.json").write_text(json.dumps(
        {"rmse": 2.625, "mae": 1.904, "r2": 0.4014, "n_train": 326, "n_test": 97, "epochs_run": 12}))
    (r / "influence" / "ihvp_stats.json").write_text(json.dumps(
        {"method": "cg", "curvature": "gauss_newton", "params": "all", "n_params": 18369,
         "relative_residual": 0.000311, "hvp_full_equivalents": 22.99, "seconds": 11.38}))
    setting = {"pearson": {"estimate": 0.8804, "ci": [0.441, 0.987]}, "spearman": {"estimate": 0.9286, "ci": [0.61, 1.0]},
               "scale_ratio": 0.571, "sign_agreement": 0.875, "noise": {"seeds": [0, 1], "seed_agreement_pearson": 0.93}}
    convex = {**setting, "pearson": {"estimate": 0.997, "ci": None}}
    (r / "validation" / "influence_validation.json").write_text(json.dumps(
        {"m": 8, "n_train": 326, "target": "validation", "settings": {"full": setting, "convex": convex}}))
    pd.DataFrame([
        {"estimator": "pipeline", "method": "cg", "curvature": "gauss_newton", "params": "all", "n_params": 18369,
         "pearson": 0.8804, "pearson_ci_low": 0.441, "pearson_ci_high": 0.987, "spearman": 0.9286,
         "spearman_ci_low": 0.61, "spearman_ci_high": 1.0, "topk_overlap": 1.0, "topk": 5, "topk_ci_low": 0.8,
         "topk_ci_high": 1.0, "scale_ratio": 0.571, "relative_residual": 0.0008, "hvp_full_equivalents": 21.8,
         "seconds": 4.8, "refused": None},
        {"estimator": "gn_lissa_all", "method": "lissa", "curvature": "gauss_newton", "params": "all", "n_params": 18369,
         "pearson": 0.97, "spearman": 0.905, "topk_overlap": 0.8, "topk": 5, "scale_ratio": 0.76,
         "relative_residual": 0.0916, "hvp_full_equivalents": 208.3, "seconds": 216.4},
        {"estimator": "hessian_cg_all", "method": "cg", "curvature": "hessian", "params": "all", "n_params": 18369,
         "refused": "NegativeCurvature: damping 0.38 would fix it"},
    ]).to_csv(r / "validation" / "estimators.csv", index=False)
    (r / "metrics.md").write_text("| condition | RMSE |\n| --- | --- |\n| base | 2.63 ± 0.00 |\n")
    return r


def test_tables_carry_the_runs_numbers(tmp_path: Path) -> None:
    text = report(_results(tmp_path))
    assert "RMSE 2.62, MAE 1.9, R² 0.401 (326 training / 97 test molecules, 12 epochs)" in text
    assert "| IHVP cost | 23 full-split products, 11 s |" in text
    assert "`cg` on `gauss_newton`, params `all` (18,369 parameters)" in text
    # validation: estimate [CI] per setting; a missing interval is left out, not invented
    assert "| full | 0.880 [0.441, 0.987] | 0.929 [0.610, 1.000] | 0.57 | 0.88 | 0.93 | 2 |" in text
    assert "| convex | 0.997 | 0.929 [0.610, 1.000] |" in text
    assert "m = 8 samples, n_train = 326, target `validation`" in text
    # estimators: the k of the overlap in the header, a refused estimator keeps its row with the reason
    assert "top-5 overlap [CI]" in text
    assert ("| `pipeline` — cg, gauss_newton, all (18,369) | 0.880 [0.441, 0.987] | 0.929 [0.610, 1.000] | 1.00 [0.80, 1.00] "
            "| 0.57 | 0.0008 | 21.8 | 4.8 |") in text
    # no intervals in the file: none printed; large counts as whole numbers
    assert "| `gn_lissa_all` — lissa, gauss_newton, all (18,369) | 0.970 | 0.905 | 0.80 | 0.76 | 0.092 | 208 | 216 |" in text
    assert "| `hessian_cg_all` — cg, hessian, all (18,369) | refused: NegativeCurvature: damping 0.38 would fix it |" in text
    # metrics.md as the rule wrote it
    assert "| base | 2.63 ± 0.00 |" in text


def test_missing_files_are_named_and_an_asked_table_is_required(tmp_path: Path) -> None:
    results = _results(tmp_path)
    (results / "metrics.md").unlink()
    warnings: list[str] = []
    text = report(results, warn=warnings.append)
    assert "Fine-tuning table" not in text and "Estimators compared" in text
    assert len(warnings) == 4 and "metrics.md not found" in warnings[0] and "group_validation.md not found" in warnings[1]
    assert "audit.md not found" in warnings[2] and "audit.csv not found" in warnings[3]
    with pytest.raises(ReportError, match="metrics.md not found"):
        report(results, ["metrics"])
    with pytest.raises(ReportError, match="none of the files"):
        report(tmp_path)


def test_command_line_prints_the_tables(tmp_path: Path) -> None:
    results = _results(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "molinfluence.report_tables", str(results), "--table", "estimators"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("### Estimators compared (`validation/estimators.csv`)")
    assert "Base model" not in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "molinfluence.report_tables", str(tmp_path / "nowhere")],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 2 and "no such results folder" in bad.stderr


EXT = [3, 7, 11, 19, 23, 31]
EFFECT = {e: 0.01 * (i - 2.5) for i, e in enumerate(EXT)}  # the measured Δ the synthetic runs below produce
N_TRAIN = 100


def _synthetic_runs() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Chosen samples whose scores predict Δ exactly, and retraining runs (2 seeds, baselines included) that measure
    it with a little seed noise: the inputs of the validation summaries, no model."""
    chosen = pd.DataFrame({"ext_index": EXT, "smiles": "C", "label": 0.0, "rank": range(len(EXT)), "quantile": 0.0,
                           "score": [N_TRAIN * EFFECT[e] for e in EXT]})
    runs = [{"ext_index": -1, "seed": s, "target_loss": 1.0 + s} for s in (0, 1)]
    runs += [{"ext_index": e, "seed": s, "target_loss": 1.0 + s + EFFECT[e] + 0.001 * s * (-1) ** i}
             for i, e in enumerate(EXT) for s in (0, 1)]
    return chosen, pd.DataFrame(runs)


INFLUENCE_STATS = {"method": "cg", "curvature": "gauss_newton", "params": "all", "n_params": 900,
                   "relative_residual": 0.0003, "hvp_full_equivalents": 23.0, "seconds": 11.0}


def test_reads_the_estimator_table_the_pipeline_writes(tmp_path: Path) -> None:
    """The hand-made estimators.csv above could drift from what validate_estimator_table writes: here the table is made
    by the pipeline's own estimator_table (synthetic scores and retraining runs, no model) and written as its script
    writes it; the printer finds every column it needs and prints the computed agreement, and a refused estimator's
    reason."""
    from molinfluence.files import write_csv
    from molinfluence.validation import estimator_table

    chosen, runs = _synthetic_runs()
    scores = pd.DataFrame({"estimator": "reversed", "ext_index": EXT, "score": [-N_TRAIN * EFFECT[e] for e in EXT]})
    stats = {"reversed": {"method": "lissa", "curvature": "gauss_newton", "params": "head", "n_params": 33,
                          "relative_residual": 0.05, "hvp_full_equivalents": 200.0, "seconds": 3.0},
             "hessian_all": {"method": "cg", "curvature": "hessian", "params": "all", "n_params": 900,
                             "refused": "NegativeCurvature: raise influence.damping"}}
    table = estimator_table(chosen, N_TRAIN, runs, scores, stats, INFLUENCE_STATS, k=2, n_boot=200)
    (tmp_path / "validation").mkdir()
    write_csv(tmp_path / "validation" / "estimators.csv", table)

    text = report(tmp_path, ["estimators"])
    assert "top-2 overlap [CI]" in text
    rows = {line.split(" — ")[0].strip("| `"): line for line in text.splitlines() if " — " in line}
    assert set(rows) == {"pipeline", "reversed", "hessian_all"}
    assert rows["pipeline"].startswith("| `pipeline` — cg, gauss_newton, all (900) | 1.000 ")
    assert "| 1.00 [" in rows["pipeline"] and "| 0.0003 | 23 | 11 |" in rows["pipeline"]
    assert rows["reversed"].startswith("| `reversed` — lissa, gauss_newton, head (33) | -1.000 ")
    assert "refused: NegativeCurvature: raise influence.damping" in rows["hessian_all"]


def test_reads_the_validation_summary_the_pipeline_writes(tmp_path: Path) -> None:
    """Likewise for influence_validation.json: made by the pipeline's own build_report (synthetic runs, the convex
    setting's scores reversed) and written as validate_summary.py writes it; the printer puts each setting's computed
    agreement in its row."""
    from molinfluence.files import write_json
    from molinfluence.validation import Recipe, build_report

    chosen, runs = _synthetic_runs()
    convex_scores = chosen[["ext_index"]].assign(score=-chosen["score"])
    summary, _ = build_report(chosen, N_TRAIN, runs, runs, convex_scores, {"method": "cg", "params": "head"},
                              recipe=Recipe(steps=3, lr=1e-3, weight_decay=0.0, batch_size=None),
                              influence_stats=INFLUENCE_STATS, n_boot=200)
    (tmp_path / "validation").mkdir()
    write_json(tmp_path / "validation" / "influence_validation.json", summary)

    text = report(tmp_path, ["validation"])
    assert f"m = {len(EXT)} samples, n_train = {N_TRAIN}, target `validation`" in text
    assert "| full | 1.000 [" in text and "| convex | -1.000 [" in text


def test_group_table_and_the_readme_figures_come_from_the_results_folder(tmp_path: Path) -> None:
    from molinfluence.report_tables import FIGURES, copy_figures

    results = _results(tmp_path)
    (results / "groups").mkdir()
    (results / "groups" / "group_validation.md").write_text("intro\n\n| selector | k |\n| --- | --- |\n| residual | all |\n")
    assert "### Group validation (`groups/group_validation.md`)" in report(results, ["groups"])
    assert "| residual | all |" in report(results)
    with pytest.raises(ReportError, match="none of the figures"):
        copy_figures(results, tmp_path / "figs")
    (results / "groups" / "group_validation.png").write_bytes(b"png-bytes")
    assert "groups/group_validation.png" in FIGURES
    proc = subprocess.run([sys.executable, "-m", "molinfluence.report_tables", str(results), "--table", "groups",
                           "--figures", str(tmp_path / "figs")], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "figs" / "groups_group_validation.png").read_bytes() == b"png-bytes"
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["groups_group_validation.png"]


def _verdict(path: Path, mode: str = "swap") -> None:
    pd.DataFrame([
        {"mode": mode, "k": 20, "arm": "random", "auroc": None, "clean_share": None, "clean_quarter": None, "delta": 0.0,
         "p": None, "judged": True},
        {"mode": mode, "k": 20, "arm": "oracle", "auroc": None, "clean_share": 1.0, "clean_quarter": 1.0, "delta": -0.47,
         "p": 0.036, "judged": True},
        {"mode": mode, "k": 20, "arm": "knn_agreement", "auroc": 0.87, "clean_share": 0.85, "clean_quarter": 0.8,
         "delta": -0.11, "p": 0.74, "judged": True},
        {"mode": mode, "k": 40, "arm": "oracle", "auroc": None, "clean_share": 1.0, "clean_quarter": 1.0, "delta": -0.1,
         "p": 0.5, "judged": False},
        {"mode": mode, "k": 40, "arm": "knn_agreement", "auroc": 0.87, "clean_share": 0.78, "clean_quarter": 0.8,
         "delta": -0.71, "p": 0.043, "judged": False},
    ]).to_csv(path, index=False)


def test_selectors_table_puts_audit_group_effects_and_bed_side_by_side(tmp_path: Path) -> None:
    results = _results(tmp_path)
    (results / "audit").mkdir()
    _verdict(results / "audit" / "audit.csv")
    text = report(results, ["selectors"])
    # the quarter and AUROC once per mode; clean@k and ΔMSE (p) per k; a k the oracle cannot judge says so
    assert "| `oracle` | 100% | 100%; -0.4700 (0.036) | 100%; -0.1000 (0.5) |" in text
    assert "| `knn_agreement` | 80% (0.87) | 85%; -0.1100 (0.74) | 78%; -0.7100 (0.043) |" in text
    assert "audit swap k=40: clean@k; ΔMSE vs random (p) — CANNOT JUDGE" in text and "k=20: clean@k; ΔMSE vs random (p) |" in text
    (results / "groups").mkdir()
    pd.DataFrame([{"selector": "knn_agreement", "k": k, "spearman": r, "spearman_lo": r - 0.5, "spearman_hi": 1.0,
                   "ceiling": 0.59} for k, r in (("20", 0.1), ("all", 0.12))]).to_csv(
        results / "groups" / "group_validation.csv", index=False)
    bed = tmp_path / "bed.csv"
    _verdict(bed, mode="offset")
    pd.DataFrame([{"selector": "most_negative", "k": 100, "spearman": 0.64, "spearman_lo": -0.15, "spearman_hi": 0.99,
                   "ceiling": 0.56, "mode": "offset"}]).to_csv(tmp_path / "bed.groups.csv", index=False)
    text = report(results, ["selectors"], bed=bed)
    assert "run group effects k=all: Spearman [95 % CI] (ceiling 0.59)" in text and "| 0.12 [-0.38, 1.00] |" in text
    assert "bed offset k=20" in text and "bed group effects offset k=100: Spearman [95 % CI] (ceiling 0.56)" in text
    assert text.rstrip().endswith("| 0.64 [-0.15, 0.99] |"), "most_negative: only the bed's group effect, the rest –"
    with pytest.raises(ReportError, match="no such bed table"):
        report(results, ["selectors"], bed=tmp_path / "missing.csv")
