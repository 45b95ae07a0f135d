"""Cost formulas shared by the benchmarks: computed from the algorithm's step counts, not measured.

The previous defaults (before issue 11) are no longer in the package, so their cost cannot be timed; both benchmarks
print this one formula and label it as computed.
"""

from __future__ import annotations


def previous_defaults_cost(n_train: int, top_iters: int = 30) -> float:
    """Full-split product equivalents of the previous defaults (LiSSA on H), computed: power iteration on H (up to
    ``top_iters`` = 30 iterations for λ_max, the shifted run for λ_min always 30), LiSSA 2 repeats × 1000 steps on
    mini-batches of 32 of ``n_train`` rows, and one full-split residual. At Lipophilicity's 3,024 training rows:
    30 + 30 + 21.2 + 1 = 82.2."""
    return top_iters + 30 + 2 * 1000 * 32 / n_train + 1


__all__ = ["previous_defaults_cost"]
