"""Tests for molinfluence.files: atomic writes never leave partial outputs; source hashes are stable and sensitive."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from molinfluence.files import (
    atomic_path,
    code_hash,
    imported_modules,
    read_json,
    sha256_files,
    write_csv,
    write_json,
)

REPO = Path(__file__).resolve().parents[1]


def _leftovers(directory: Path) -> list[str]:
    """Hidden temporary names atomic_path may create."""
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_atomic_file_appears_only_after_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"  # parent is created
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new")
        assert not target.exists(), "target must not exist before the block ends"
    assert target.read_text() == "new"
    assert _leftovers(target.parent) == []


def test_atomic_file_error_keeps_old_content_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_atomic_requires_something_written(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_path(tmp_path / "out.txt"):
            pass
    assert not (tmp_path / "out.txt").exists()


def test_atomic_directory_replaces_existing_directory(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.bin").write_text("stale")
    with atomic_path(target, directory=True) as tmp:
        assert tmp.is_dir()
        (tmp / "weights.bin").write_text("w")
    assert sorted(p.name for p in target.iterdir()) == ["weights.bin"]
    assert _leftovers(tmp_path) == []


def test_atomic_directory_error_keeps_old_directory(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "good.bin").write_text("good")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target, directory=True) as tmp:
            (tmp / "partial.bin").write_text("p")
            raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["good.bin"]
    assert _leftovers(tmp_path) == []


def test_write_json_sorted_indented_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    obj = {"b": [1, 2.5], "a": {"z": None, "y": "text"}, "n": np.int64(3), "v": np.array([0.5, 1.0])}
    write_json(path, obj)
    text = path.read_text()
    assert text == json.dumps(
        {"a": {"y": "text", "z": None}, "b": [1, 2.5], "n": 3, "v": [0.5, 1.0]}, sort_keys=True, indent=2
    ) + "\n"
    assert read_json(path) == {"a": {"y": "text", "z": None}, "b": [1, 2.5], "n": 3, "v": [0.5, 1.0]}


@pytest.mark.parametrize("bad", [math.nan, math.inf, np.float64("nan")])
def test_write_json_rejects_non_finite_and_names_location(tmp_path: Path, bad: float) -> None:
    path = tmp_path / "r.json"
    path.write_text('{"old": true}\n')
    with pytest.raises(ValueError) as info:
        write_json(path, {"metrics": {"rmse": [0.5, bad]}})
    message = str(info.value)
    assert str(path) in message and "['metrics']['rmse'][1]" in message and "NaN" in message
    assert read_json(path) == {"old": True}, "a failed write must leave the previous file"
    assert _leftovers(tmp_path) == []


def test_read_json_reports_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "a": 1,\n  oops\n}\n')
    with pytest.raises(ValueError, match=r"broken\.json: invalid JSON at line 3"):
        read_json(path)


def test_write_csv_roundtrip_without_index(tmp_path: Path) -> None:
    df = pd.DataFrame({"smiles": ["CCO", "c1ccccc1"], "label": [0.1, -2.25], "row": [3, 1]}, index=[10, 20])
    path = tmp_path / "t.csv"
    write_csv(path, df)
    back = pd.read_csv(path)
    pd.testing.assert_frame_equal(back, df.reset_index(drop=True))
    assert _leftovers(tmp_path) == []


def _tree(root: Path) -> list[Path]:
    (root / "pkg").mkdir(parents=True)
    a = root / "pkg" / "a.py"
    b = root / "pkg" / "b.py"
    a.write_text("x = 1\n")
    b.write_text("y = 2\n")
    return [a, b]


def test_sha256_files_stable_across_checkouts_and_argument_order(tmp_path: Path) -> None:
    first = _tree(tmp_path / "machine1")
    second = _tree(tmp_path / "elsewhere" / "machine2")
    digest = sha256_files(first)
    assert re.fullmatch(r"[0-9a-f]{64}", digest), f"not a lowercase hex SHA-256: {digest!r}"
    assert sha256_files(first) == digest, "the same files hashed twice gave different digests"
    assert sha256_files(reversed(second)) == digest
    assert sha256_files([str(p) for p in second]) == digest
    first[0].write_text("x = 2\n")
    assert sha256_files(first) != digest, "editing a file did not change the digest"


def test_sha256_files_changes_with_content_and_names(tmp_path: Path) -> None:
    a, b = _tree(tmp_path)
    digest = sha256_files([a, b])
    b.write_text("y = 3\n")
    edited = sha256_files([a, b])
    assert edited != digest
    renamed = b.with_name("c.py")
    b.rename(renamed)
    assert sha256_files([a, renamed]) != edited
    # Moving bytes between files must not collide (names and contents are length-prefixed).
    a.write_text("")
    renamed.write_text("x = 1\ny = 3\n")
    assert sha256_files([a, renamed]) != sha256_files([renamed])


def test_sha256_files_directory_ignores_caches(tmp_path: Path) -> None:
    a, b = _tree(tmp_path)
    listed = sha256_files([a, b], root=tmp_path)
    assert sha256_files([tmp_path / "pkg"], root=tmp_path) == listed
    cache = tmp_path / "pkg" / "__pycache__"
    cache.mkdir()
    (cache / "a.cpython-311.pyc").write_bytes(b"\x00compiled")
    assert sha256_files([tmp_path / "pkg"], root=tmp_path) == listed
    shutil.rmtree(cache)


def test_sha256_files_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.py"):
        sha256_files([tmp_path / "missing.py"])
    with pytest.raises(ValueError, match="no files"):
        sha256_files([])
    a, _ = _tree(tmp_path / "x")
    with pytest.raises(ValueError, match="not below root"):
        sha256_files([a], root=tmp_path / "y")


# ----------------------------------------------------------------------------------------------------------------------
# code_hash: the code a script runs, found from its imports


def _write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


SYNTHETIC = {
    "pkg/__init__.py": "",
    "pkg/base.py": "X = 1\n",
    "pkg/mid.py": "from .base import X\n",  # relative
    "pkg/top.py": "from pkg import mid\nimport json\n",  # from-package import of a submodule, plus stdlib
    "pkg/alone.py": "import numpy\n",
    "pkg/sub/__init__.py": "from ..base import X\n",  # a subpackage, relative two levels up
    "pkg/sub/leaf.py": "from . import helper\n",
    "pkg/sub/helper.py": "",
    "scripts/a.py": "import sys\n\ndef main():\n    from pkg.top import mid  # lazy, inside a function\n",
    "scripts/b.py": "from pkg.alone import numpy as np\n",  # a name that is not a module file
    "scripts/c.py": "import pkg.sub.leaf\n",
    "scripts/d.py": "print('no package imports')\n",
}


def test_imported_modules_follows_relative_lazy_and_transitive_imports(tmp_path: Path) -> None:
    root = _write_tree(tmp_path, SYNTHETIC)

    def names(script: str) -> list[str]:
        return [p.relative_to(root).as_posix() for p in imported_modules(root / script, root=root, package="pkg")]

    assert names("scripts/a.py") == ["pkg/__init__.py", "pkg/base.py", "pkg/mid.py", "pkg/top.py"]
    assert names("scripts/b.py") == ["pkg/__init__.py", "pkg/alone.py"]
    assert names("scripts/c.py") == [
        "pkg/__init__.py", "pkg/base.py", "pkg/sub/__init__.py", "pkg/sub/helper.py", "pkg/sub/leaf.py",
    ]
    assert names("scripts/d.py") == []


def test_imported_modules_names_a_missing_module(tmp_path: Path) -> None:
    root = _write_tree(tmp_path, {**SYNTHETIC, "scripts/e.py": "x = 1\nfrom pkg.nope import thing\n"})
    with pytest.raises(ValueError, match=r"e\.py:2: imports pkg\.nope, but .* has no module file"):
        imported_modules(root / "scripts/e.py", root=root, package="pkg")


def test_code_hash_changes_for_exactly_the_scripts_that_import_the_edited_module(tmp_path: Path) -> None:
    root = _write_tree(tmp_path, SYNTHETIC)
    scripts = sorted((root / "scripts").glob("*.py"))

    def hashes() -> dict[str, str]:
        return {s.name: code_hash(s, root=root, package="pkg") for s in scripts}

    before = hashes()
    users = {"pkg/base.py": {"a.py", "c.py"}, "pkg/sub/helper.py": {"c.py"}, "pkg/alone.py": {"b.py"},
             "pkg/__init__.py": {"a.py", "b.py", "c.py"}}
    for module, expected in users.items():
        path = root / module
        original = path.read_text()
        path.write_text(original + "# an edit\n")
        after = hashes()
        path.write_text(original)
        assert {name for name in before if after[name] != before[name]} == expected, module
    assert hashes() == before


def _reference_closure(script: Path, root: Path) -> set[str]:
    """The molinfluence modules a script imports, by the standard library's own static import finder (an independent
    implementation), searching only the checkout so that third-party packages are not followed."""
    import modulefinder

    finder = modulefinder.ModuleFinder(path=[str(root)])
    finder.run_script(str(script))
    return {
        Path(m.__file__).relative_to(root).as_posix()
        for name, m in finder.modules.items()
        if (name == "molinfluence" or name.startswith("molinfluence.")) and m.__file__
    }


def test_every_script_hash_covers_exactly_its_imports_and_reruns_on_their_edits(tmp_path: Path) -> None:
    """On a copy of the real package and scripts: the modules found agree with modulefinder's, and editing any package
    module changes the code hash of exactly the scripts that import it, directly or through other modules."""
    root = tmp_path / "checkout"
    for part in ("molinfluence", "scripts"):
        shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "datasets"))
    scripts = sorted((root / "scripts").glob("*.py"))
    closure = {}
    for script in scripts:
        ours = {p.relative_to(root).as_posix() for p in imported_modules(script, root=root)}
        assert ours == _reference_closure(script, root), script.name
        assert "molinfluence/cli.py" in ours, f"{script.name}: every script runs through molinfluence.cli"
        closure[script.name] = ours

    def hashes() -> dict[str, str]:
        return {s.name: code_hash(s, root=root) for s in scripts}

    before = hashes()
    modules = sorted((root / "molinfluence").glob("*.py"))
    for module in modules:
        name = module.relative_to(root).as_posix()
        original = module.read_bytes()
        module.write_bytes(original + b"\n# an edit\n")
        after = hashes()
        module.write_bytes(original)
        changed = {s for s in before if after[s] != before[s]}
        assert changed == {s for s, mods in closure.items() if name in mods}, name
    assert hashes() == before
    for script in scripts:  # and a script's own edit changes its hash only
        original = script.read_bytes()
        script.write_bytes(original + b"\n# an edit\n")
        after = hashes()
        script.write_bytes(original)
        assert {s for s in before if after[s] != before[s]} == {script.name}
