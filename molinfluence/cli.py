"""Shared plumbing for the thin ``scripts/*.py`` command-line entry points.

Expected failures (bad input, an unreachable model, a diverging solver) end the process with exit status 1 and a
one-paragraph message on stderr, no traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable


def expected_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the user must change something".

    ValueError covers the package's input errors (DataError, ConfigError, ModelLoadError derive from it). The two
    numerical failures are RuntimeErrors; they are looked up only if their module was imported, so that a light script
    does not import torch just to name them.
    """
    errors: list[type[BaseException]] = [ValueError, FileNotFoundError]
    for module, name in (
        ("molinfluence.training", "TrainingDivergence"),
        ("molinfluence.influence", "InfluenceDivergence"),
    ):
        mod = sys.modules.get(module)
        if mod is not None and hasattr(mod, name):
            errors.append(getattr(mod, name))
    return tuple(errors)


def run(main: Callable[[], None]) -> None:
    """Run ``main`` and turn expected errors into ``error: <message>`` and exit status 1."""
    if not sys.stderr.isatty():
        # Progress bars still show in log files, but as a line every 30 s instead of thousands of redraws.
        os.environ.setdefault("TQDM_MININTERVAL", "30")
    try:
        main()
    except Exception as exc:  # noqa: BLE001 - filtered below
        if isinstance(exc, expected_errors()) and not os.environ.get("MOLINFLUENCE_TRACEBACK"):
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
        raise


def json_arg(text: str) -> dict[str, Any]:
    """argparse type for ``--args '<json object>'`` (how the workflow passes a config section to a script)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def set_threads(n: int | None) -> None:
    """Match torch's intra-op threads to the cores Snakemake gave this job (avoids oversubscribing 2-core machines)."""
    if n:
        import torch

        torch.set_num_threads(int(n))


def add_summary_inputs(p: Any) -> None:
    """The arguments both validation summaries read (``validate_summary.py``, ``validate_estimator_table.py``): the
    bootstrap, the chosen samples, the training split (its row count is n), the target's name, the influence stage's
    stats and the full-model retraining runs."""
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chosen", required=True)
    p.add_argument("--train", required=True, help="the training split (its row count is n)")
    p.add_argument("--target-name", choices=("validation", "test"), default="validation")
    p.add_argument("--influence-stats", required=True, help="ihvp_stats.json of the influence stage")
    p.add_argument("--full", nargs="+", required=True)


def add_base_inputs(p: Any, *, splits: bool = True, chosen: bool = False, influence: bool = False) -> None:
    """The arguments of a job that starts from the base model and its splits (read by :func:`load_base_inputs`):
    ``--model``, ``--device``, ``--threads``, ``--no-truncation``; with ``splits`` the training and target splits
    (``--train``, ``--target``, ``--target-name``); ``chosen``: the validation stage's ``--chosen``; ``influence``: the
    config's influence section as ``--influence``."""
    if influence:
        p.add_argument("--influence", type=json_arg, required=True, help="the config's influence section as JSON")
    p.add_argument("--model", required=True)
    if splits:
        p.add_argument("--train", required=True)
        p.add_argument("--target", required=True)
        p.add_argument("--target-name", choices=("validation", "test"), default="validation")
    if chosen:
        p.add_argument("--chosen", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--no-truncation", action="store_true")


def load_base_inputs(args: argparse.Namespace, **tables: Any) -> tuple[Any, Any, dict[str, Any]]:
    """The base model, its tokenizer and the splits of :func:`add_base_inputs` as batches
    (:func:`molinfluence.regressor.load_base`): ``train`` and ``target`` (named by ``--target-name``) when given, plus
    ``tables`` (CSV paths or DataFrames) under their keyword."""
    from .regressor import load_base

    given: dict[str, Any] = {}
    if getattr(args, "train", None):
        given["train"] = args.train
    if getattr(args, "target", None):
        given["target"] = args.target
    given.update(tables)
    return load_base(args.model, given, device=args.device, truncation=not args.no_truncation,
                     names={"target": getattr(args, "target_name", "target")})
