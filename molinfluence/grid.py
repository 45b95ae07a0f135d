"""The fine-tuning grid: what a condition is, where its files live, and the one list of strategies and inits.

A :class:`Condition` is one cell of the grid, ``(init, strategy, k)``, optionally narrowed to one ``seed`` (one run).
The workflow rules (``common.smk``, ``finetune.smk``, ``selection.smk``), the training script, the metrics table and the
figures all name runs through it: :meth:`Condition.path` writes a run directory, :meth:`Condition.parse` reads one
back, :meth:`Condition.record` / :meth:`Condition.from_record` are what a run's ``metrics.json`` says about itself.

``k`` is the number of external samples selected; ``None`` for the strategies that take the whole pool (``all``,
``weighted``: ``kall`` in paths), and 0 for the no-data control ``none``.

This module imports only the standard library: the Snakefile imports it when it parses the rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Iterable, Mapping

INITS: tuple[str, ...] = ("continue", "fresh")
#: Selection strategies a config may list (``selection.strategies``), in the order the grid is built.
STRATEGIES: tuple[str, ...] = ("most_negative", "most_positive", "both_ends", "random", "all", "weighted", "residual",
                               "knn_agreement", "consensus", "believable_helpful", "knn_influence", "clipped_influence",
                               "adaptive_greedy", "tracin")
#: Strategies ranked by a selector of :mod:`molinfluence.selectors` with the base model (rule rank_pool writes the
#: ranking ``selection/ranking/{strategy}.csv``; the selection takes its first k rows).
MODEL_RANKED: tuple[str, ...] = ("residual", "knn_agreement", "consensus", "believable_helpful", "knn_influence",
                                 "clipped_influence", "adaptive_greedy", "tracin")
#: Model-ranked selectors that read the base model's IHVP (the others need only the model and the splits).
NEEDS_IHVP: tuple[str, ...] = ("believable_helpful", "knn_influence", "clipped_influence", "adaptive_greedy")
#: Selectors that read the base model's IHVP when scripts/rank_pool.py ranks a pool with them (the planted-label audit
#: ranks with every selector): those above and ``most_negative``, which in the grid reads the influence stage's scores.
READS_IHVP: tuple[str, ...] = ("most_negative", *NEEDS_IHVP)
#: Strategies ``selection.default`` may name: the recommended molecules (``selection/recommended.csv``).
RECOMMENDABLE: tuple[str, ...] = ("most_negative", *MODEL_RANKED)
#: Strategies that pick the top of the score ranking (hard selections; marked on the score histogram).
RANKED: tuple[str, ...] = ("most_negative", "most_positive", "both_ends")
#: Strategies that read the influence scores (everything else reads only the external split).
SCORED: tuple[str, ...] = (*RANKED, "weighted")
SCORE_FREE: frozenset[str] = frozenset(STRATEGIES) - frozenset(SCORED) - frozenset(MODEL_RANKED)
#: Strategies that take the whole pool: their k is not a config value (``kall`` in paths).
WHOLE_POOL: tuple[str, ...] = ("all", "weighted")
#: Strategies with one selection per fine-tuning seed (the random control's spread includes the luck of the draw).
PER_SEED: tuple[str, ...] = ("random",)
#: The no-data control every init gets (k = 0): the same extra training without external samples.
NO_DATA = "none"
#: Every strategy a grid condition can have.
CONDITION_STRATEGIES: tuple[str, ...] = (NO_DATA, *STRATEGIES)
#: Selections that read only the external split and are the same for every seed (select_control).
CONTROLS: tuple[str, ...] = tuple(
    s for s in CONDITION_STRATEGIES if s not in SCORED and s not in PER_SEED and s not in MODEL_RANKED
)

_RUN = "finetune/{init}/{strategy}/k{k}"
_SELECTION = "selection/{strategy}_k{k}.csv"
_SEED_SELECTION = "selection/{strategy}_k{k}_seed{seed}.csv"
_RANKING = "selection/ranking/{strategy}.csv"
RECOMMENDED = "selection/recommended.csv"
_PARSE = re.compile(r"(?:^|/)finetune/(?P<init>[^/]+)/(?P<strategy>[^/]+)/k(?P<k>\d+|all)(?:/seed(?P<seed>\d+))?(?:/|$)")


#: Selectors whose ranking covers only their first picks (no score for every pool row).
PARTIAL_RANKING: tuple[str, ...] = ("adaptive_greedy",)


def score_files(results: str, strategies: Iterable[str], default: str) -> dict[str, str]:
    """Every selector's per-molecule score table the config makes, selector -> path: the influence scores (the
    ``most_negative`` score) and the ranking of each model-ranked selector in ``strategies`` or ``default`` that scores
    every pool row (not :data:`PARTIAL_RANKING`). What group validation correlates with measured group effects."""
    named = {*strategies, default}
    files = {RANKED[0]: f"{results}/influence/scores.csv"}
    for strategy in MODEL_RANKED:
        if strategy in named and strategy not in PARTIAL_RANKING:
            files[strategy] = ranking_pattern(results).format(strategy=strategy)
    return files


def choice(names: Iterable[str]) -> str:
    """A wildcard constraint (regular expression) that matches exactly these names."""
    return "|".join(re.escape(n) for n in names)


#: Snakemake wildcard constraints of the grid's path patterns.
WILDCARDS: dict[str, str] = {"init": choice(INITS), "strategy": choice(CONDITION_STRATEGIES), "k": r"\d+|all", "seed": r"\d+"}


def run_pattern(results: str, seed: int | str | None = None) -> str:
    """``{results}/finetune/{init}/{strategy}/k{k}[/seed{seed}]`` with the condition left as Snakemake wildcards."""
    return f"{results}/{_RUN}" + ("" if seed is None else f"/seed{seed}")


def selection_pattern(results: str, *, per_seed: bool) -> str:
    """Where a selection is written, ``{strategy}``, ``{k}`` (and ``{seed}``) left as wildcards."""
    return f"{results}/{_SEED_SELECTION if per_seed else _SELECTION}"


def ranking_pattern(results: str) -> str:
    """Where a model-ranked selector's ranking of the pool is written, ``{strategy}`` left as a wildcard."""
    return f"{results}/{_RANKING}"


def _match(path: str | Any) -> tuple[str, re.Match[str]]:
    text = PurePosixPath(str(path).replace("\\", "/")).as_posix()
    match = _PARSE.search(text)
    if match is None:
        raise ValueError(f"{path}: not a fine-tuning run path (expected .../{_RUN}/seed{{seed}}/...)")
    return text, match


@dataclass(frozen=True, order=True)
class Condition:
    """One grid condition ``(init, strategy, k)``, or one run of it when ``seed`` is set."""

    init: str
    strategy: str
    k: int | None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"finetune.inits: unknown init {self.init!r}; allowed: {', '.join(map(repr, INITS))}")
        if self.strategy not in CONDITION_STRATEGIES:
            raise ValueError(
                f"selection.strategies: unknown strategy {self.strategy!r}; allowed: {', '.join(map(repr, STRATEGIES))}"
            )
        if self.strategy == NO_DATA:
            if self.k != 0:
                raise ValueError(f"strategy {NO_DATA!r} is the no-data control: k must be 0, got {self.k!r}")
        elif self.strategy in WHOLE_POOL:
            if self.k is not None:
                raise ValueError(f"strategy {self.strategy!r} takes the whole pool: k must be None ('all'), got {self.k!r}")
        elif isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"selection.k: strategy {self.strategy!r} needs a k >= 1, got {self.k!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"finetune.seeds: a seed must be an integer >= 0, got {self.seed!r}")

    # -- names ---------------------------------------------------------------------------------------------------------
    @property
    def k_label(self) -> str:
        """k as it appears in paths and wildcards: a number, or ``all`` for the whole pool."""
        return "all" if self.k is None else str(self.k)

    def with_seed(self, seed: int | None) -> "Condition":
        return Condition(self.init, self.strategy, self.k, seed)

    def runs(self, seeds: Iterable[int]) -> list["Condition"]:
        return [self.with_seed(int(s)) for s in seeds]

    def path(self, results: str) -> str:
        """The run directory (with a seed) or the condition's directory (without): ``results/finetune/...``.

        The same layout below another root keeps per-run state: ``path(f"{results}/.resume")``.
        """
        return run_pattern(results, self.seed).format(init=self.init, strategy=self.strategy, k=self.k_label)

    def selection_path(self, results: str) -> str:
        """The selection file this run trains on (``random`` has one per seed)."""
        per_seed = self.strategy in PER_SEED
        if per_seed and self.seed is None:
            raise ValueError(f"{self}: strategy {self.strategy!r} has one selection per seed; give the seed")
        fields = dict(strategy=self.strategy, k=self.k_label, seed=self.seed)
        return selection_pattern(results, per_seed=per_seed).format(**fields)

    def __str__(self) -> str:
        seed = "" if self.seed is None else f" seed {self.seed}"
        return f"{self.init}/{self.strategy}/k={self.k_label}{seed}"

    # -- reading back --------------------------------------------------------------------------------------------------
    @classmethod
    def make(cls, init: str, strategy: str, k: Any, seed: Any = None) -> "Condition":
        """From loose values: a wildcard, a path part, a table row (where the whole pool's k is its size) or JSON."""
        if strategy in WHOLE_POOL:
            k = None
        elif isinstance(k, str):
            if not k.isdigit():
                raise ValueError(f"k must be a number or 'all' (whole-pool strategies only), got {k!r}")
            k = int(k)
        elif k is not None and not isinstance(k, bool) and float(k).is_integer():
            k = int(k)
        if isinstance(seed, str) and seed.isdigit():
            seed = int(seed)
        elif seed is not None and not isinstance(seed, bool) and float(seed).is_integer():
            seed = int(seed)
        return cls(str(init), str(strategy), k, seed)

    @classmethod
    def parse(cls, path: str | Any) -> "Condition":
        """The condition (and seed, when present) named by a path like ``.../finetune/fresh/random/k20/seed3/x.json``."""
        return cls.make(**_match(path)[1].groupdict())

    @staticmethod
    def results_of(path: str | Any) -> str:
        """The results folder a run path lies in (what :meth:`path` was given): ``r`` for ``r/finetune/...``."""
        text, match = _match(path)
        return text[: match.start()] or "."

    @classmethod
    def from_wildcards(cls, wildcards: Any) -> "Condition":
        """From a Snakemake job's wildcards (``init``, ``strategy``, ``k`` and, in per-seed rules, ``seed``)."""
        return cls.make(wildcards.init, wildcards.strategy, wildcards.k, getattr(wildcards, "seed", None))

    def record(self) -> dict[str, Any]:
        """What a run's metrics.json records about its condition (k is ``"all"`` for the whole pool)."""
        return {"init": self.init, "strategy": self.strategy, "k": "all" if self.k is None else self.k, "seed": self.seed}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], source: str = "metrics") -> "Condition":
        missing = [key for key in ("init", "strategy", "k", "seed") if key not in record]
        if missing:
            raise ValueError(f"{source}: does not record the run's condition (missing {missing}); rerun its fine-tune job")
        try:
            return cls.make(record["init"], record["strategy"], record["k"], record["seed"])
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None


def grid(inits: Iterable[str], strategies: Iterable[str], ks: Iterable[int]) -> list[Condition]:
    """Every condition of a config (seedless): per init the no-data control, then each strategy at each k."""
    ks = sorted(int(k) for k in ks)
    strategies = list(strategies)
    rows = []
    for init in inits:
        rows.append(Condition(init, NO_DATA, 0))
        for strategy in strategies:
            if strategy in WHOLE_POOL:
                rows.append(Condition(init, strategy, None))
            else:
                rows.extend(Condition(init, strategy, k) for k in ks)
    return rows
