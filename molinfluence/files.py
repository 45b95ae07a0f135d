"""Small file helpers shared by every pipeline script.

Why: Snakemake treats an existing output file as "done". A script that dies halfway through writing must therefore
never leave a truncated file at the output path, so every write goes to a temporary sibling that is renamed onto
the target only after the write succeeded. ``sha256_files`` fingerprints source files, and ``code_hash`` the code a
script runs (the script and every package module it imports, found from its imports) so that a rule can take it as a
parameter and rerun exactly when that code changes.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is only needed by write_csv; keep importing this module cheap.
    import pandas as pd

__all__ = [
    "atomic_path",
    "json_text",
    "write_json",
    "read_json",
    "write_csv",
    "sha256_files",
    "imported_modules",
    "code_hash",
]


def _remove(path: Path) -> None:
    """Delete a file, link or directory tree at ``path`` if anything is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds.

    The temporary path is ``.<name>.tmp-<pid>`` in the same directory (same file system, so the final
    ``os.replace`` is atomic for files). Write a file there, or, with ``directory=True``, fill the directory that is
    created for you. On success the result replaces ``path`` (an existing directory is moved aside and deleted only
    after the new one is in place); on any exception, including KeyboardInterrupt, the temporary path is removed and
    ``path`` is left untouched. Missing parent directories of ``path`` are created.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    _remove(tmp)  # left over from a crashed run that had the same pid
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        if not (tmp.exists() or tmp.is_symlink()):
            raise FileNotFoundError(f"nothing was written to the temporary path {tmp} for {target}")
        if tmp.is_dir() and target.is_dir():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            _remove(old)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            if target.is_dir() and not target.is_symlink():
                raise IsADirectoryError(f"cannot replace directory {target} with a file")
            os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def _plain(obj: Any) -> Any:
    """JSON fallback for numpy scalars/arrays and paths (duck-typed so numpy need not be imported)."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and numpy scalars (np.int64 is not a Python int)
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _find_nonfinite(obj: Any, where: str) -> str | None:
    """Return the location (like ``obj['a'][2]``) of the first NaN/inf float inside ``obj``, or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else where
    if isinstance(obj, dict):
        for key, value in obj.items():
            found = _find_nonfinite(value, f"{where}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            found = _find_nonfinite(value, f"{where}[{i}]")
            if found:
                return found
        return None
    if not isinstance(obj, (str, int, bool, type(None))) and hasattr(obj, "tolist"):
        return _find_nonfinite(obj.tolist(), where)
    return None


def json_text(obj: Any, path: str | os.PathLike[str]) -> str:
    """``obj`` as the JSON text :func:`write_json` writes to ``path`` (sorted keys, indent 2, trailing newline).

    NaN and infinity are not valid JSON and would silently break downstream readers, so they are rejected with a
    ValueError that names the file and where in ``obj`` the value sits. Numpy scalars/arrays and paths are converted.
    """
    try:
        text = json.dumps(obj, sort_keys=True, indent=2, allow_nan=False, default=_plain)
    except ValueError as exc:
        where = _find_nonfinite(obj, "obj")
        detail = f" at {where}" if where else ""
        raise ValueError(
            f"cannot write {path}: non-finite number (NaN or infinity){detail} is not valid JSON; "
            "replace it with null (None) or a finite value"
        ) from exc
    return text + "\n"


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON atomically (see :func:`json_text` for the format and the NaN check)."""
    text = json_text(obj, path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; a malformed file raises ValueError naming the file, line and column."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc


def write_csv(path: str | os.PathLike[str], df: pd.DataFrame) -> None:
    """Write a DataFrame as CSV without its index, atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _expand(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Absolute file paths: files as given, directories replaced by the files below them (no caches)."""
    files: list[Path] = []
    for p in paths:
        path = Path(p).resolve()
        if path.is_dir():
            files.extend(
                f
                for f in sorted(path.rglob("*"))
                if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"
            )
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"sha256_files: {p} does not exist")
    return files


def sha256_files(
    paths: Iterable[str | os.PathLike[str]], *, root: str | os.PathLike[str] | None = None
) -> str:
    """Hex SHA-256 over the names (relative to ``root``) and bytes of the given source files.

    Stable across machines and checkouts: each file contributes its POSIX path relative to ``root`` (default: the
    deepest directory containing all files) and its content, in sorted name order, so the argument order and the
    absolute location of the checkout do not matter, while renaming or editing any file changes the hash.
    Directories are expanded to the files below them, skipping ``__pycache__`` and ``.pyc``.
    """
    files = _expand(paths)
    if not files:
        raise ValueError("sha256_files: no files given")
    if root is None:
        base = Path(os.path.commonpath([f.parent for f in files]))
    else:
        base = Path(root).resolve()
    outside = [f for f in files if not f.is_relative_to(base)]
    if outside:
        raise ValueError(f"sha256_files: {outside[0]} is not below root {base}")
    named = sorted({f.relative_to(base).as_posix(): f for f in files}.items())
    digest = hashlib.sha256()
    for name, file in named:
        for part in (name.encode("utf-8"), file.read_bytes()):  # length-prefixed: no ambiguous concatenation
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()


def _module_file(root: Path, name: str) -> Path | None:
    """``root/a/b.py`` or ``root/a/b/__init__.py`` for the dotted module name ``a.b``, None if neither exists."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str | None, package: str) -> list[tuple[str, int, bool]]:
    """(dotted name, line, must exist) for each ``package`` module that the source file ``path`` imports anywhere
    (functions included). ``module`` is the file's own dotted name (None for a script), to resolve relative imports.
    ``from a.b import c`` yields ``a``, ``a.b`` (modules: must exist) and ``a.b.c`` (a submodule, or just a name
    defined in ``a.b``: kept only if it is a module file)."""
    source = path.read_bytes()
    key = (hashlib.sha256(source).hexdigest(), module, package)
    if key not in _IMPORTS_SEEN:  # parsing is the cost; a workflow asks once per rule for mostly the same modules
        _IMPORTS_SEEN[key] = _parse_imports(path, source, module, package)
    return _IMPORTS_SEEN[key]


_IMPORTS_SEEN: dict[tuple[str, str | None, str], list[tuple[str, int, bool]]] = {}


def _parse_imports(path: Path, source: bytes, module: str | None, package: str) -> list[tuple[str, int, bool]]:
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise ValueError(f"{path}: cannot read its imports: {exc}") from exc
    own_package = module if module is not None and path.name == "__init__.py" else (module or "").rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def add(name: str, line: int, optional_last: bool) -> None:
        if name != package and not name.startswith(package + "."):
            return
        parts = name.split(".")
        # importing a.b.c runs a/__init__, a/b/__init__ and a/b/c: every prefix is a module
        for i in range(len(parts)):
            found.append((".".join(parts[: i + 1]), line, not (optional_last and i == len(parts) - 1)))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno, False)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = own_package.split(".") if own_package else []
                if not parts or node.level - 1 >= len(parts):
                    raise ValueError(f"{path}:{node.lineno}: relative import beyond the top of the package")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                stem = f"{base}.{node.module}" if node.module else base
            else:
                stem = node.module or ""
            add(stem, node.lineno, False)
            for alias in node.names:
                if alias.name != "*":
                    add(f"{stem}.{alias.name}", node.lineno, True)
    return found


def imported_modules(
    source: str | os.PathLike[str], *, root: str | os.PathLike[str], package: str = "molinfluence",
    module: str | None = None,
) -> list[Path]:
    """Files of ``package`` (a directory below ``root``) that running ``source`` imports, directly or transitively.

    Read from the code, not executed: every ``import``/``from ... import`` anywhere in the file (also inside functions,
    where the scripts import lazily) is followed through the package's own modules, relative imports included.
    Importing a submodule runs its package's ``__init__.py``, which is therefore included. A name imported from a
    module that is not itself a module file (``from molinfluence.data import DataError``) counts as that module; an
    import of a package module that does not exist is an error naming the file and line. ``module`` is the dotted
    name of ``source`` when it is itself a package module (its relative imports are then resolved). Sorted absolute
    paths.
    """
    root_dir = Path(root).resolve()
    seen: dict[str, Path] = {}
    todo: list[tuple[Path, str | None]] = [(Path(source).resolve(), module)]
    while todo:
        path, module = todo.pop()
        for name, line, must_exist in _imports(path, module, package):
            if name in seen:
                continue
            file = _module_file(root_dir, name)
            if file is None:
                if must_exist:
                    raise ValueError(f"{path}:{line}: imports {name}, but {root_dir} has no module file for it")
                continue
            seen[name] = file
            todo.append((file, name))
    return sorted(set(seen.values()))


def code_hash(
    script: str | os.PathLike[str], *, root: str | os.PathLike[str], package: str = "molinfluence",
    module: str | None = None,
) -> str:
    """Hex SHA-256 (:func:`sha256_files`, names relative to ``root``) of ``script`` and every ``package`` module it
    imports (:func:`imported_modules`): the code a workflow rule runs. As a rule parameter it makes an edit rerun
    exactly the rules whose script imports the edited module, and nothing else, without hand-kept module lists."""
    script = Path(script)
    return sha256_files([script, *imported_modules(script, root=root, package=package, module=module)], root=root)
