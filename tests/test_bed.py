"""The test bed (molinfluence.bed): deterministic labels and planted pools, exact corrupted shares, the paired
statistic and the AUROC of a ranking against hand-computed cases. Seconds: no model is trained."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from molinfluence import bed


@pytest.fixture(scope="module")
def molecules() -> pd.DataFrame:
    return bed.bed_molecules()


@pytest.fixture(scope="module")
def pool(molecules) -> pd.DataFrame:
    return bed.split_bed(molecules, bed.BedConfig())["pool"]


def test_shipped_molecules_are_labelled_by_crippen_logp_deterministically(molecules):
    from rdkit import Chem
    from rdkit.Chem import Crippen

    assert len(molecules) == 2000 and molecules["smiles"].is_unique
    again = bed.bed_molecules()
    pd.testing.assert_frame_equal(molecules, again)
    for i in (0, 777, 1999):  # independent recomputation
        expected = Crippen.MolLogP(Chem.MolFromSmiles(molecules["smiles"][i]))
        assert molecules["label"][i] == pytest.approx(expected, abs=1e-12)
    assert molecules["label"].std() > 0.5  # a task with spread, not a constant


def test_splits_are_disjoint_seeded_and_sized(molecules):
    cfg = bed.BedConfig()
    a, b = bed.split_bed(molecules, cfg), bed.split_bed(molecules, cfg)
    other = bed.split_bed(molecules, bed.BedConfig(data_seed=1))
    sizes = {"train": cfg.n_train, "validation": cfg.n_validation, "test": cfg.n_test, "pool": cfg.pool}
    assert {k: len(v) for k, v in a.items()} == sizes
    sets = [set(v["smiles"]) for v in a.values()]
    assert sum(map(len, sets)) == len(set().union(*sets))  # disjoint
    for name in sizes:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert set(a["pool"]["smiles"]) != set(other["pool"]["smiles"])
    with pytest.raises(ValueError, match="need"):
        bed.split_bed(molecules.iloc[:100], cfg)


@pytest.mark.parametrize("mode", bed.MODES)
def test_planted_pools_are_deterministic_exact_and_leave_clean_rows_untouched(pool, mode):
    sd = 1.0
    planted, bad = bed.plant(pool, mode, 0.5, seed=3, sd=sd)
    again, bad_again = bed.plant(pool, mode, 0.5, seed=3, sd=sd)
    other, bad_other = bed.plant(pool, mode, 0.5, seed=4, sd=sd)
    pd.testing.assert_frame_equal(planted, again)
    np.testing.assert_array_equal(bad, bad_again)
    assert not np.array_equal(bad, bad_other)
    assert bad.sum() == len(pool) // 2
    original = pool["label"].to_numpy()
    new = planted["label"].to_numpy()
    np.testing.assert_array_equal(new[~bad], original[~bad])  # clean rows untouched
    assert np.all(new[bad] != original[bad])  # every corrupted row changed
    assert (planted["smiles"] == pool["smiles"]).all()
    # 30 % of 400 = 120 corrupted rows
    assert bed.plant(pool, mode, 0.3, seed=0, sd=sd)[1].sum() == 120


def test_swap_permutes_labels_within_the_corrupted_rows_only(pool):
    planted, bad = bed.plant(pool, "swap", 0.5, seed=0, sd=1.0)
    original = pool["label"].to_numpy()
    new = planted["label"].to_numpy()
    np.testing.assert_array_equal(np.sort(new[bad]), np.sort(original[bad]))
    np.testing.assert_array_equal(new[~bad], original[~bad])


def test_offset_and_noise_shift_by_the_requested_scale(pool):
    original = pool["label"].to_numpy()
    planted, bad = bed.plant(pool, "offset", 0.5, seed=0, sd=0.9, offset_sd=2.0)
    np.testing.assert_allclose((planted["label"].to_numpy() - original)[bad], 1.8)  # one systematic shift
    planted, bad = bed.plant(pool, "noise", 0.5, seed=0, sd=1.0, noise_sd=2.0)
    assert np.std(planted["label"].to_numpy()[bad] - original[bad]) == pytest.approx(2.0, rel=0.2)


def test_paired_statistic_matches_a_hand_computed_t_test():
    a = [1.0, 2.0, 3.0, 5.0]
    b = [0.5, 1.0, 3.5, 4.0]
    d = np.array(a) - np.array(b)  # 0.5, 1, -0.5, 1
    t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    from scipy.stats import t as student

    p_hand = 2 * student.sf(abs(t), len(d) - 1)
    delta, p = bed.paired(a, b)
    assert delta == pytest.approx(0.5)
    assert p == pytest.approx(p_hand, rel=1e-10)
    assert np.isnan(bed.paired([1.0, 2.0], [0.0, 1.0])[1])  # constant differences: no test
    with pytest.raises(ValueError):
        bed.paired([1.0, 2.0], [1.0])


def test_auroc_of_a_ranking_against_hand_counts():
    clean = np.array([True, False, True, False])
    assert bed.auroc(np.array([0, 2, 1, 3]), clean) == 1.0  # both clean rows first
    assert bed.auroc(np.array([1, 3, 0, 2]), clean) == 0.0
    # order 0, 1, 2, 3: pairs (clean before corrupted) = (0<1), (0<3), (2<3) of 4 -> 0.75
    assert bed.auroc(np.array([0, 1, 2, 3]), clean) == 0.75
    # partial ranking [1, 0]: rows 2 and 3 tie last -> pairs: (0 vs 1) 0, (0 vs 3) 1, (2 vs 1) 0, (2 vs 3) 0.5
    assert bed.auroc(np.array([1, 0]), clean) == pytest.approx(1.5 / 4)


def test_bed_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="mode"):
        bed.BedConfig(modes=["flip"])
    with pytest.raises(ValueError, match="k = 300"):
        bed.BedConfig(ks=[300])  # more than the 200 clean rows: the oracle cannot add them
    with pytest.raises(ValueError, match="unknown key"):
        bed.BedConfig.from_dict({"n_trian": 5})
    cfg = bed.BedConfig.from_dict({"finetune": {"epochs": 9}})
    assert cfg.finetune["epochs"] == 9 and cfg.finetune["lr"] == bed.BedConfig().finetune["lr"]


def test_a_tiny_bed_runs_end_to_end_and_pairs_every_arm_with_random(tmp_path):
    cfg = bed.BedConfig(n_train=80, n_validation=30, n_test=30, pool=40, ks=[10], seeds=2, modes=["offset"],
                        selectors=["residual"], base={"epochs": 1}, finetune={"epochs": 1}, workers=1, groups=3,
                        model=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                                   num_random_features=8))
    result = bed.run_bed(cfg, cache_dir=tmp_path, log=lambda _m: None)
    rows = result["rows"].set_index("arm")
    assert list(rows.index) == ["random", "oracle", "residual"]
    assert rows.loc["random", "delta"] == 0.0 and rows.loc["oracle", "clean_share"] == 1.0
    assert 0.0 <= rows.loc["residual", "clean_share"] <= 1.0 and 0.0 <= rows.loc["residual", "auroc"] <= 1.0
    assert rows.loc["oracle", "clean_quarter"] == 1.0 and 0.0 <= rows.loc["residual", "clean_quarter"] <= 1.0
    assert rows["judged"].nunique() == 1  # one verdict per (mode, k), from the oracle's p
    assert list(tmp_path.glob("base-*.pt"))  # the base model is cached for the next run
    assert "mode offset" in bed.report(result, cfg)
    # group validation: the selector's summed score against the measured Δ test MSE of 3 random subsets of 10
    groups = result["groups"]
    assert groups[["mode", "selector", "k", "subsets"]].values.tolist() == [["offset", "residual", 10, 3]]
    assert -1 <= groups.spearman.iloc[0] <= 1
    assert "group validation" in bed.report(result, cfg)
