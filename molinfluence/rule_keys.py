"""Which ``influence:`` config keys each Snakemake rule hashes (its ``params``): one home instead of a hand-written
key filter per rule.

A rule reruns when one of its params changes, so it must hash exactly the options that can change its outputs. The
workflow's ``influence.target`` is never hashed as an option: it selects the target split, which reaches a rule as an
input file and a ``--target-name`` argument (:data:`WORKFLOW_KEYS`).

This module imports only the standard library: ``workflow/rules/common.smk`` imports it when it parses the rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

WORKFLOW_KEYS = ("target",)
"""Keys of the ``influence:`` section that belong to the workflow, not to the computation: ``target`` names the split
that gives v (its rows are an input of ``compute_ihvp``, not an option)."""

LEFT_OUT: dict[str, tuple[str, ...]] = {
    # The solve never scores the pool: influence_scores takes score_batch_size itself (memory only).
    "influence_ihvp": ("score_batch_size",),
    # The convex reference solves the head's problem whatever influence.params says (validation.convex_reference).
    "validate_convex": ("params",),
    # Each estimator of the comparison starts from every option (its spec overrides some).
    "validate_estimators": (),
    # A model-ranked selector that reads influence (molinfluence.selectors) solves and scores with every option.
    "rank_pool": (),
}
"""Per rule, the influence options (besides :data:`WORKFLOW_KEYS`) that cannot change its outputs."""


def influence_options(rule: str, section: Mapping[str, Any]) -> dict[str, Any]:
    """The options of the ``influence:`` config ``section`` that ``rule`` hashes (and passes to its script)."""
    if rule not in LEFT_OUT:
        raise KeyError(f"no influence options are defined for rule {rule!r}; known rules: {', '.join(LEFT_OUT)}")
    skip = set(WORKFLOW_KEYS) | set(LEFT_OUT[rule])
    return {k: v for k, v in section.items() if k not in skip}
