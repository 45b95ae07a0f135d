"""Print the markdown tables the docs show, from a finished run's results folder.

    python -m molinfluence.report_tables results/            # every table whose files exist
    python -m molinfluence.report_tables results/ --table estimators

Tables (each from the files the pipeline wrote; nothing is computed here but formatting):

- ``run``: the base model's test metrics (``base/metrics.json``) and the pipeline's IHVP (``influence/ihvp_stats.json``);
- ``validation``: the influence-validation summary, one row per setting (``validation/influence_validation.json``);
- ``estimators``: the estimator comparison (``validation/estimators.csv``);
- ``metrics``: the fine-tuning table, ``metrics.md`` exactly as the ``metrics_table`` rule wrote it;
- ``groups``: the group validation (``groups/group_validation.md`` as the ``group_summary`` rule wrote it);
- ``audit``: the planted-label audit (``audit/audit.md`` as the ``audit_summary`` rule wrote it);
- ``selectors``: every selector side by side (``audit/audit.csv``, and ``groups/group_validation.csv`` when present;
  with ``--bed CSV`` also the test bed's table that ``benchmarks/selection.py --csv CSV`` wrote and its
  ``.groups.csv``): clean share of the top quarter and ΔMSE vs random (p) per mode and k beside the oracle's margin,
  and the group-effect Spearman with its interval.

``--figures DIR`` also copies the figures the README shows (:data:`FIGURES`, those that exist) into ``DIR``:

    python -m molinfluence.report_tables results/ --figures docs/figures

A table whose file is missing is named on stderr; asking for it explicitly (``--table``), or finding none at all, is an
error. Stands alone: reads JSON/CSV/markdown, imports nothing of the pipeline.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

TABLES: dict[str, tuple[str, ...]] = {
    "run": ("base/metrics.json", "influence/ihvp_stats.json"),
    "validation": ("validation/influence_validation.json",),
    "estimators": ("validation/estimators.csv",),
    "metrics": ("metrics.md",),
    "groups": ("groups/group_validation.md",),
    "audit": ("audit/audit.md",),
    "selectors": ("audit/audit.csv",),
}
FIGURES: tuple[str, ...] = (
    "figures/rmse_vs_k.png",
    "validation/influence_validation.png",
    "validation/estimators.png",
    "groups/group_validation.png",
    "audit/audit.png",
)
"""The figures the README and docs show, relative to the results folder (copied by ``--figures``)."""


class ReportError(ValueError):
    """A results folder that lacks what a table needs."""


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def fmt(value: Any, digits: int = 3) -> str:
    """A number: ``digits`` significant digits below 100, whole numbers from 100 on (thousands separated from 10,000
    on); ``–`` when absent."""
    if _missing(value):
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)) and abs(value) >= 100:
        return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def with_ci(estimate: Any, low: Any, high: Any, decimals: int = 3) -> str:
    """``estimate [low, high]``, all with ``decimals`` fixed decimals; the interval left out when absent."""
    if _missing(estimate):
        return "–"
    if _missing(low) or _missing(high):
        return f"{estimate:.{decimals}f}"
    return f"{estimate:.{decimals}f} [{low:.{decimals}f}, {high:.{decimals}f}]"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc})") from None


def _need(mapping: Mapping[str, Any], keys: Sequence[str], path: Path) -> None:
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise ReportError(f"{path}: lacks {', '.join(missing)}")


def run_table(results: Path) -> str:
    base_path, ihvp_path = (results / p for p in TABLES["run"])
    base, ihvp = _json(base_path), _json(ihvp_path)
    _need(base, ("rmse", "mae", "r2", "n_train", "n_test"), base_path)
    _need(ihvp, ("method", "curvature", "params", "n_params", "relative_residual", "hvp_full_equivalents", "seconds"),
          ihvp_path)
    rows = [
        ["base model, test split", f"RMSE {fmt(base['rmse'])}, MAE {fmt(base['mae'])}, R² {fmt(base['r2'])} "
         f"({base['n_train']} training / {base['n_test']} test molecules, {base.get('epochs_run', '–')} epochs)"],
        ["IHVP", f"`{ihvp['method']}` on `{ihvp['curvature']}`, params `{ihvp['params']}` "
         f"({fmt(ihvp['n_params'])} parameters)"],
        ["IHVP relative residual", fmt(ihvp["relative_residual"], 2)],
        ["IHVP cost", f"{fmt(ihvp['hvp_full_equivalents'])} full-split products, {fmt(ihvp['seconds'], 2)} s"],
    ]
    return markdown(["quantity", "value"], rows)


def validation_table(results: Path) -> str:
    path = results / TABLES["validation"][0]
    report = _json(path)
    _need(report, ("settings", "m", "n_train"), path)
    rows = []
    for name, s in report["settings"].items():
        _need(s, ("pearson", "spearman", "scale_ratio", "sign_agreement", "noise"), path)
        noise = s["noise"] or {}
        rows.append([
            name,
            with_ci(s["pearson"].get("estimate"), *(s["pearson"].get("ci") or (None, None))),
            with_ci(s["spearman"].get("estimate"), *(s["spearman"].get("ci") or (None, None))),
            fmt(s["scale_ratio"], 2),
            fmt(s["sign_agreement"], 2),
            fmt(noise.get("seed_agreement_pearson"), 2),
            fmt(len(noise.get("seeds") or [])) if noise.get("seeds") else "–",
        ])
    title = f"m = {report['m']} samples, n_train = {report['n_train']}, target `{report.get('target', '–')}`"
    header = ["setting", "Pearson [95 % CI]", "Spearman [95 % CI]", "scale ratio", "sign agreement",
              "seed agreement (Pearson)", "seeds"]
    return title + "\n\n" + markdown(header, rows)


def estimators_table(results: Path) -> str:
    import pandas as pd

    path = results / TABLES["estimators"][0]
    table = pd.read_csv(path)
    need = ["estimator", "method", "curvature", "params", "n_params", "pearson", "spearman", "topk_overlap", "topk",
            "scale_ratio", "relative_residual", "hvp_full_equivalents", "seconds", "refused"]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ReportError(f"{path}: lacks column(s) {', '.join(missing)}")
    cell = lambda row, key: None if pd.isna(row.get(key)) else row.get(key)  # noqa: E731
    ks = {int(k) for k in table["topk"].dropna()}
    rows = []
    for _, row in table.iterrows():
        r = row.to_dict()
        what = f"`{r['estimator']}` — {r['method']}, {r['curvature']}, {r['params']} ({fmt(cell(r, 'n_params'))})"
        if cell(r, "refused") is not None:
            rows.append([what, f"refused: {r['refused']}", "", "", "", "", "", ""])
            continue
        rows.append([
            what,
            with_ci(cell(r, "pearson"), cell(r, "pearson_ci_low"), cell(r, "pearson_ci_high")),
            with_ci(cell(r, "spearman"), cell(r, "spearman_ci_low"), cell(r, "spearman_ci_high")),
            with_ci(cell(r, "topk_overlap"), cell(r, "topk_ci_low"), cell(r, "topk_ci_high"), 2),
            fmt(cell(r, "scale_ratio"), 2),
            fmt(cell(r, "relative_residual"), 2),
            fmt(cell(r, "hvp_full_equivalents")),
            fmt(cell(r, "seconds"), 2),
        ])
    k = f"top-{ks.pop()}" if len(ks) == 1 else "top-k"
    header = ["estimator (parameters)", "Pearson [95 % CI]", "Spearman [95 % CI]", f"{k} overlap [CI]", "scale ratio",
              "relative residual", "full-split products", "seconds"]
    return markdown(header, rows)


def as_written(name: str) -> Callable[[Path], str]:
    """A table the pipeline already wrote as markdown (``TABLES[name]``), printed as it is."""
    return lambda results: (results / TABLES[name][0]).read_text(encoding="utf-8").rstrip()


def _verdict_columns(source: str, path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """Columns of the selectors table from a verdict table (the audit's or the bed's: one row per mode, k and arm)."""
    import pandas as pd

    table = pd.read_csv(path)
    missing = [c for c in ("mode", "k", "arm", "clean_share", "clean_quarter", "delta", "p", "judged") if c not in table.columns]
    if missing:
        raise ReportError(f"{path}: lacks column(s) {', '.join(missing)}")
    headers, cells = [], {}
    for mode, by_mode in table.groupby("mode", sort=False):
        headers.append(f"{source} {mode}: clean share of top quarter (AUROC)")
        first = by_mode[by_mode.k == by_mode.k.iloc[0]]
        for _, row in first[first.arm != "random"].iterrows():
            auroc = "" if pd.isna(row.get("auroc")) else f" ({row.auroc:.2f})"
            cells.setdefault(row.arm, {})[headers[-1]] = f"{row.clean_quarter:.0%}{auroc}"
        for k, part in by_mode.groupby("k", sort=True):
            oracle = part[part.arm == "oracle"]
            judged = bool(oracle["judged"].iloc[0]) if len(oracle) else False
            headers.append(f"{source} {mode} k={k}: clean@k; ΔMSE vs random (p)" + ("" if judged else " — CANNOT JUDGE"))
            for _, row in part[part.arm != "random"].iterrows():
                cells.setdefault(row.arm, {})[headers[-1]] = f"{row.clean_share:.0%}; {row.delta:+.4f} ({fmt(row.p, 2)})"
    return headers, cells


def _group_columns(source: str, path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """Columns of the selectors table from a group-validation table (the pipeline's or the bed's, with ``mode``)."""
    import pandas as pd

    table = pd.read_csv(path)
    missing = [c for c in ("selector", "k", "spearman", "spearman_lo", "spearman_hi", "ceiling") if c not in table.columns]
    if missing:
        raise ReportError(f"{path}: lacks column(s) {', '.join(missing)}")
    if "mode" not in table.columns:
        table = table.assign(mode="")
    headers, cells = [], {}
    for mode, part in table.groupby("mode", sort=False):
        overall = part[part.k.astype(str) == "all"]
        part = overall if len(overall) else part[part.k == part.k.max()]
        header = f"{source} group effects {mode} k={part.k.iloc[0]}: Spearman [95 % CI] (ceiling {fmt(part.ceiling.iloc[0], 2)})"
        headers.append(header.replace("  ", " "))
        for _, row in part.iterrows():
            cells.setdefault(row.selector, {})[headers[-1]] = with_ci(row.spearman, row.spearman_lo, row.spearman_hi, 2)
    return headers, cells


def selectors_table(results: Path, bed: Path | None = None) -> str:
    """Every selector side by side: the audit, the group validation and (``bed``) the test bed."""
    sources = [_verdict_columns("audit", results / TABLES["selectors"][0])]
    groups = results / "groups" / "group_validation.csv"
    if groups.is_file():
        sources.append(_group_columns("run", groups))
    if bed is not None:
        if not Path(bed).is_file():
            raise ReportError(f"{bed}: no such bed table (benchmarks/selection.py --csv writes it)")
        sources.append(_verdict_columns("bed", Path(bed)))
        bed_groups = Path(bed).with_suffix(".groups.csv")
        if bed_groups.is_file():
            sources.append(_group_columns("bed", bed_groups))
    headers = [h for hs, _ in sources for h in hs]
    names: list[str] = []
    for _, cells in sources:
        names += [n for n in cells if n not in names]
    names.sort(key=lambda n: (n != "oracle", n))
    rows = [[f"`{n}`", *(next((c[n][h] for _, c in sources if n in c and h in c[n]), "–") for h in headers)]
            for n in names]
    return markdown(["selector", *headers], rows)


BUILDERS: dict[str, Callable[[Path], str]] = {
    "run": run_table, "validation": validation_table, "estimators": estimators_table, "metrics": as_written("metrics"),
    "groups": as_written("groups"), "audit": as_written("audit"), "selectors": selectors_table,
}
TITLES = {
    "run": "Base model and IHVP",
    "validation": "Influence validation",
    "estimators": "Estimators compared",
    "metrics": "Fine-tuning table",
    "groups": "Group validation",
    "audit": "Planted-label audit",
    "selectors": "Selectors side by side",
}


def report(results: str | Path, tables: Sequence[str] | None = None, *, warn: Callable[[str], None] | None = None,
           bed: str | Path | None = None) -> str:
    """The markdown of ``tables`` (default: every table whose files exist under ``results``); ``bed``: the test bed's
    table for the ``selectors`` table."""
    results = Path(results)
    if not results.is_dir():
        raise ReportError(f"{results}: no such results folder (the pipeline writes <workdir>/results/)")
    asked = list(tables) if tables else list(TABLES)
    parts = []
    for name in asked:
        if name not in TABLES:
            raise ReportError(f"unknown table {name!r}; one of {', '.join(TABLES)}")
        absent = [p for p in TABLES[name] if not (results / p).is_file()]
        if absent:
            message = f"{name}: {', '.join(str(results / p) for p in absent)} not found"
            if tables:
                raise ReportError(message)
            if warn is not None:
                warn(f"skipped table {message}")
            continue
        text = selectors_table(results, Path(bed) if bed else None) if name == "selectors" else BUILDERS[name](results)
        parts.append(f"### {TITLES[name]} (`{' + '.join(TABLES[name])}`)\n\n{text}")
    if not parts:
        raise ReportError(f"{results}: none of the files of the tables ({', '.join(TABLES)}) found")
    return "\n\n".join(parts) + "\n"


def copy_figures(results: str | Path, out: str | Path) -> list[Path]:
    """Copy every figure of :data:`FIGURES` that exists under ``results`` into ``out`` (file name: the path with ``/``
    as ``_``, e.g. ``groups_group_validation.png``); returns the copies. An error when none exists."""
    import shutil

    results, out = Path(results), Path(out)
    found = [results / f for f in FIGURES if (results / f).is_file()]
    if not found:
        raise ReportError(f"{results}: none of the figures {', '.join(FIGURES)} found")
    out.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in found:
        target = out / str(path.relative_to(results)).replace("/", "_")
        shutil.copyfile(path, target)
        copies.append(target)
    return copies


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="a finished run's results folder (e.g. results/)")
    parser.add_argument("--table", action="append", choices=list(TABLES), help="only this table (repeatable)")
    parser.add_argument("--figures", metavar="DIR", help="also copy the README's figures that exist into DIR")
    parser.add_argument("--bed", metavar="CSV", help="the test bed's table (benchmarks/selection.py --csv) for --table selectors")
    args = parser.parse_args(argv)
    try:
        text = report(args.results, args.table, warn=lambda m: print(m, file=sys.stderr), bed=args.bed)
        if args.figures:
            for path in copy_figures(args.results, args.figures):
                print(f"copied {path}", file=sys.stderr)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
