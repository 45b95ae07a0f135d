"""Speed of the training loop and influence engine on whatever device is present, and the projected wall time of
config.yaml's whole DAG from those figures (issue 10). All ratios are measured in the same run.

    python benchmarks/gpu.py [--size xl|narrow|demo] [--data CSV] [--device auto|cpu|cuda[:N]] [--quick] [--threads N] [--no-ihvp]
                            [--concurrent N]

``--size xl``: MoLFormer-XL's dimensions (hidden 768, 12 layers, 12 heads, intermediate 768, 32 random features,
vocabulary 2362, max 202 tokens) with random weights (42.6 M parameters); ``narrow``: 12 layers of width 96 (the CPU
comparison); ``demo``: examples/demo.yaml's tiny model. Data: ``<repo>/../shared/data/lipophilicity.csv`` (or
``--data``) split 72/8/20 like config.yaml (3,024 training molecules), else synthetic SMILES of realistic lengths
(said so in the output); the external pool is ``External-Dataset_for_Task2.csv`` beside it, else 294 held-out rows.
``--quick`` caps the training split at 768 molecules and times fewer steps.

Prints one table: the project's training step (``molinfluence.training.train_step``) at batch 16 and 64 in fp32 and
bf16; ops launched per step (torch.profiler: leaf aten ops, and CUDA kernels on a GPU) for the project's step and a bare
PyTorch step; one epoch through ``train_regressor`` against a bare PyTorch loop on the same batches (and against the
same bare loop with every batch padded to the split's longest, as the loop did before issue 10); the fixed cost of a
fine-tune job (a subprocess doing imports, device initialisation and model loading); the default curvature's product
on a mini-batch and on the full training split; the default config's IHVP run through ``compute_ihvp`` (seconds, and
``hvp_full_equivalents`` against the pre-issue-11 default's 82.2, computed from its step counts in benchmarks/costs.py;
``--no-ihvp`` prints an upper bound instead); scoring the external pool; peak memory; the throughput of several training processes sharing the device (one epoch each, ``--concurrent N``, default
config.yaml's ``finetune.concurrent_seeds``) against one; each selector of ``molinfluence.selectors`` as rule rank_pool
runs it (a fresh ``PoolContext`` given the precomputed IHVP, ``selectors.ranking`` of ``ranking_length`` rows), in
seconds and as a ratio to the IHVP + scoring measured in this run (issue 17's budget: the recommended selector at most
2x), after the quantities several selectors share (tokenising, predictions, head features, influence scores), each on
one fresh context; with ``--quick`` or ``--no-ihvp`` adaptive_greedy runs one round and its further rounds are
projected from the IHVP and scoring rows; and the projected wall time of config.yaml's DAG, with one fine-tune job per
seed, with one per condition (all its seeds in one process), and with its seeds N at a time.
"""

from __future__ import annotations

import argparse
import copy
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from molinfluence.config import validate_config  # noqa: E402
from molinfluence.grid import grid  # noqa: E402
from costs import previous_defaults_cost  # noqa: E402  (benchmarks/, the script's own folder)
from molinfluence.loss import squared_error  # noqa: E402
from molinfluence.molformer import MolformerConfig, MolformerModel  # noqa: E402
from molinfluence.batch import Batch  # noqa: E402
from molinfluence.grid import MODEL_RANKED  # noqa: E402
from molinfluence.regressor import MolformerRegressor, RegressorSpec, pick_device, save_regressor  # noqa: E402
from molinfluence.selectors import SELECTORS, PoolContext, SelectorOptions, knn_score, ranking, ranking_length  # noqa: E402
from molinfluence.tokenizer import build_smiles_tokenizer, encode_smiles  # noqa: E402
from molinfluence.training import (  # noqa: E402
    FeatureDraws,
    TrainConfig,
    length_batches,
    make_optimizer,
    train_regressor,
    train_step,
)

SIZES = {
    "xl": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=768, num_random_features=32),
    "narrow": dict(hidden_size=96, num_hidden_layers=12, num_attention_heads=12, intermediate_size=96, num_random_features=32),
    "demo": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_random_features=16),
}
XL_VOCAB = 2362
EXTERNAL_POOL = 294
ATOMS = ["C", "C", "C", "c", "c", "c", "N", "O", "(", ")", "=", "1", "2", "F", "Cl", "n", "S", "[nH]", "Br"]


def influence_api() -> dict[str, Any]:
    """The influence engine's entry points used here, in one place (the package layout may change)."""
    from molinfluence.influence import Batch, IHVPResult, InfluenceArgs, SubsetObjective, compute_ihvp, curvature_product
    from molinfluence.influence import score_samples

    return dict(Batch=Batch, IHVPResult=IHVPResult, InfluenceArgs=InfluenceArgs, SubsetObjective=SubsetObjective,
                curvature_product=curvature_product, compute_ihvp=compute_ihvp, score_samples=score_samples)


# The IHVP before issue 11 (LiSSA on H) at Lipophilicity's 3,024 training molecules, in full-split product
# equivalents: computed from its step counts (benchmarks/costs.py), not measured.
OLD_IHVP_EQUIVALENTS = previous_defaults_cost(3024)


# --------------------------------------------------------------------------------------------------------------------
# Data and model


def synthetic_smiles(n: int, rng: np.random.Generator) -> list[str]:
    """Token strings with Lipophilicity's length profile (mean ~47 tokens, long tail); not chemistry, only lengths."""
    lengths = np.clip(rng.lognormal(mean=np.log(44), sigma=0.32, size=n), 8, 200).astype(int)
    return ["".join(rng.choice(ATOMS, size=k)) for k in lengths]


def load_tables(data: Path, quick: bool) -> tuple[dict[str, pd.DataFrame], str]:
    rng = np.random.default_rng(0)
    if data.is_file():
        raw = pd.read_csv(data)
        cols = {c.lower(): c for c in raw.columns}
        frame = raw[[cols["smiles"], cols["label"]]].set_axis(["smiles", "label"], axis=1)
        source = f"{data} ({len(frame)} molecules)"
    else:
        frame = pd.DataFrame({"smiles": synthetic_smiles(4200, rng), "label": rng.normal(2.2, 1.2, 4200)})
        source = f"{data} not found: 4200 synthetic SMILES of Lipophilicity-like token lengths"
    frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    n_test = round(0.2 * len(frame))
    n_val = round(0.1 * (len(frame) - n_test))
    tables = {
        "test": frame.iloc[:n_test],
        "validation": frame.iloc[n_test : n_test + n_val],
        "train": frame.iloc[n_test + n_val :],
    }
    external = data.parent / "External-Dataset_for_Task2.csv"
    if external.is_file():
        raw = pd.read_csv(external)
        cols = {c.lower(): c for c in raw.columns}
        tables["external"] = raw[[cols["smiles"], cols["label"]]].set_axis(["smiles", "label"], axis=1)
    else:
        tables["external"] = tables["test"].iloc[:EXTERNAL_POOL]
    if quick:
        tables["train"] = tables["train"].iloc[:768]
        tables["validation"] = tables["validation"].iloc[:128]
    return {k: v.reset_index(drop=True) for k, v in tables.items()}, source


def build_model(size: str, tokenizer: Any, seed: int = 0) -> MolformerRegressor:
    torch.manual_seed(seed)
    vocab = max(len(tokenizer), XL_VOCAB if size == "xl" else 0)
    config = MolformerConfig(vocab_size=vocab, deterministic_eval=True, **SIZES[size])
    return MolformerRegressor(MolformerModel(config), RegressorSpec()).eval()


# --------------------------------------------------------------------------------------------------------------------
# Timing helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], Any], device: torch.device, repeats: int = 1) -> float:
    """Fastest of ``repeats`` wall-clock timings of ``fn`` (device work included)."""
    best = math.inf
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (torch.cuda.max_memory_allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process peak RSS)"


class Steps:
    """Runs the project's step or a bare PyTorch step over a fixed list of batches on one model copy."""

    def __init__(self, base: MolformerRegressor, split: Batch, batches: list[torch.Tensor], cfg: TrainConfig,
                 device: torch.device, bare: bool = False, pad_to: int | None = None) -> None:
        self.model = copy.deepcopy(base).to(device).train()
        self.split, self.cfg, self.device, self.bare = split, cfg, device, bare
        self.batches = batches
        self.widths = [pad_to or max(split.token_counts()[i] for i in b.tolist()) for b in batches]
        self.host_ids = split.input_ids.cpu()
        self.host_mask = split.attention_mask.cpu()
        self.host_y = split.labels.cpu()
        if bare:  # what a plain loop does: default AdamW, the model's own per-layer redraws, batches copied per step
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            self.optimizer = make_optimizer(self.model, cfg, device)
            self.draws = FeatureDraws(self.model, cfg.seed, 1, device)
            self.order = torch.cat(batches).to(device)
            self.starts = np.cumsum([0] + [b.numel() for b in batches]).tolist()
        self.i = 0

    def step(self) -> None:
        b = self.i % len(self.batches)
        self.i += 1
        if self.bare:
            idx, w = self.batches[b], self.widths[b]
            ids = self.host_ids[idx, :w].to(self.device)
            mask = self.host_mask[idx, :w].to(self.device)
            y = self.host_y[idx].to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"):
                pred = self.model(ids, mask)
            loss = squared_error(pred.float(), y).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        else:
            idx = self.order[self.starts[b] : self.starts[b + 1]]
            ids, mask = self.split.gather(idx, self.widths[b])
            train_step(self.model, self.optimizer, ids, mask, self.split.labels.index_select(0, idx), None,
                       self.draws.next(), self.cfg, self.device)

    def epoch(self) -> None:
        for _ in self.batches:
            self.step()

    def close(self) -> None:
        if not self.bare:
            self.draws.close()


METADATA_OPS = {
    "aten::view", "aten::as_strided", "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::resolve_conj",
    "aten::resolve_neg", "aten::_unsafe_view", "aten::_reshape_alias", "aten::reshape", "aten::t", "aten::transpose",
    "aten::expand", "aten::slice", "aten::select", "aten::unsqueeze", "aten::squeeze", "aten::permute", "aten::detach",
    "aten::alias", "aten::split", "aten::chunk", "aten::unbind", "aten::lift_fresh", "aten::resize_", "aten::result_type",
    "aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::numpy_T", "aten::split_with_sizes",
}
"""Ops that only make or reshape tensor metadata (no kernel on a GPU)."""


def ops_per_step(steps: Steps, n: int = 3) -> tuple[float, float]:
    """(dispatched compute ops, CUDA kernels) per step over ``n`` profiled steps, after one warm-up step.

    A dispatched op is an aten op not called from inside another aten op (``aten::linear``, not the ``addmm`` it
    calls; ``_foreach_lerp_``, not the per-tensor ``lerp_`` of its CPU fallback), minus metadata-only ops: about one
    kernel launch each on a GPU, so the count compares launch overhead between step variants on a CPU too."""
    from torch.profiler import ProfilerActivity, profile

    steps.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if steps.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(n):
            steps.step()
        sync(steps.device)
    events = prof.events()

    def dispatched(e) -> bool:
        parent = e.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return False
            parent = parent.cpu_parent
        return True

    cpu = torch.autograd.DeviceType.CPU
    ops = sum(1 for e in events if e.device_type == cpu and e.name.startswith("aten::")
              and e.name not in METADATA_OPS and dispatched(e))
    kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return ops / n, kernels / n


def bare_eval(model: torch.nn.Module, split: Batch, device: torch.device, batch_size: int = 64) -> None:
    model.eval()
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            w = max(split.token_counts()[start : start + batch_size])
            model(split.input_ids[start : start + batch_size, :w], split.attention_mask[start : start + batch_size, :w])
    model.train()


# --------------------------------------------------------------------------------------------------------------------
# Fixed cost of a job


JOB_CODE = """
import sys, time
t0 = time.perf_counter()
sys.path.insert(0, {repo!r})
import torch
from molinfluence.regressor import load_regressor, pick_device
from molinfluence.training import train_regressor, evaluate
device = pick_device({device!r})
torch.zeros(1, device=device).sum().item()
model, tok = load_regressor({model!r}, device=device)
"""


def job_fixed_cost(model: MolformerRegressor, tokenizer: Any, device: torch.device, repeats: int) -> float:
    """Wall time of a fresh interpreter that imports the package, initialises the device and loads the model."""
    with tempfile.TemporaryDirectory() as tmp:
        save_regressor(copy.deepcopy(model).cpu(), tokenizer, Path(tmp) / "model")
        code = JOB_CODE.format(repo=str(REPO), device=str(device), model=str(Path(tmp) / "model"))
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            best = min(best, time.perf_counter() - t0)
    return best


CONCURRENT_CODE = """
import os, sys, time
sys.path.insert(0, {repo!r})
import torch
torch.set_num_threads({threads})
import pandas as pd
from molinfluence.regressor import load_regressor, pick_device
from molinfluence.training import TrainConfig, train_regressor
device = pick_device({device!r})
model, tok = load_regressor({model!r}, device=device)
train, validation = pd.read_csv({train!r}), pd.read_csv({validation!r})
open({ready!r}, "w").close()
while not os.path.exists({go!r}):
    time.sleep(0.002)
cfg = TrainConfig(epochs=1, batch_size=16, device=str(device), seed={seed})
train_regressor(model, tok, train, validation, cfg, progress=False, log=lambda _: None)
if device.type == "cuda":
    torch.cuda.synchronize()
print(time.time())
"""


def concurrent_epochs(model: MolformerRegressor, tokenizer: Any, tables: dict[str, pd.DataFrame], device: torch.device,
                      n: int, threads: int) -> float:
    """Wall seconds for ``n`` processes (seeds 0..n-1) to each train one epoch through ``train_regressor`` on this
    device, started together once all have loaded (what ``finetune.concurrent_seeds: n`` does inside a condition job;
    imports and loading are the job's fixed cost, measured separately)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_regressor(copy.deepcopy(model).cpu(), tokenizer, root / "model")
        for name in ("train", "validation"):
            tables[name][["smiles", "label"]].to_csv(root / f"{name}.csv", index=False)
        procs = []
        for seed in range(n):
            code = CONCURRENT_CODE.format(repo=str(REPO), threads=threads, device=str(device), model=str(root / "model"),
                                          train=str(root / "train.csv"), validation=str(root / "validation.csv"),
                                          ready=str(root / f"ready{seed}"), go=str(root / "go"), seed=seed)
            procs.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True))
        while not all((root / f"ready{seed}").exists() for seed in range(n)):
            if any(proc.poll() not in (None, 0) for proc in procs):
                sys.exit("a concurrent training process failed (its stderr is above)")
            time.sleep(0.01)
        t0 = time.time()
        (root / "go").touch()
        ends = []
        for proc in procs:
            out, _ = proc.communicate()
            if proc.returncode != 0:
                sys.exit("a concurrent training process failed (its stderr is above)")
            ends.append(float(out.strip().splitlines()[-1]))
    return max(ends) - t0


# --------------------------------------------------------------------------------------------------------------------
# Selectors (issue 17 item 3)


def selector_context(model: MolformerRegressor, tokenizer: Any, tables: dict[str, pd.DataFrame], inf_args: Any,
                     ihvp: Any, config: dict[str, Any], device: torch.device, **options: Any) -> PoolContext:
    """A fresh context as rule rank_pool builds one (scripts/rank_pool.py): the base model, the training split, the
    validation split as target, the external pool, config.yaml's influence options and ``selection.selectors`` (with
    ``options`` overriding), tracin's fine-tune recipe (``train`` with ``tracin_epochs`` epochs) and the precomputed
    IHVP (the pipeline's ``hessian_inverse_fast.pt``). Nothing is cached yet: a selector timed on it pays for
    everything it needs (tokenising, forward passes, scoring) except the IHVP, as a rank_pool job does."""
    sel = config["selection"]
    recipe = TrainConfig.from_dict({**config["train"], "epochs": sel["selectors"]["tracin_epochs"], "seed": sel["seed"],
                                    "max_length": config["model"]["max_length"],
                                    "truncation": config["model"]["truncation"], "device": str(device)})
    return PoolContext(model, tokenizer, tables["train"], tables["validation"], tables["external"], inf_args,
                       finetune=recipe, seed=sel["seed"], device=str(device), ihvp=ihvp,
                       options=SelectorOptions(**{**sel["selectors"], **options}))


def shared_quantities(make_ctx: Callable[..., PoolContext], device: torch.device) -> list[tuple[str, float]]:
    """Seconds of each quantity a context caches and several selectors read, timed one after another on one fresh
    context (each row pays only for itself: what it builds on is cached by the rows above)."""
    ctx = make_ctx()
    steps = [
        ("tokenise train + target + pool (ctx.rows)", lambda: [ctx.rows(n) for n in ("train", "target", "pool")]),
        ("base model's predictions on target + pool (every ranking's prediction column; the residual selectors)",
         lambda: [ctx.predictions(n) for n in ("target", "pool")]),
        ("features (head inputs) of the training split (knn_agreement, consensus)", lambda: ctx.features("train")),
        ("features (head inputs) of the pool (knn_agreement, consensus)", lambda: ctx.features("pool")),
        (f"nearest-neighbour search, pool x train cosine, knn={ctx.options.knn} (features cached)",
         lambda: knn_score(ctx)),
        ("influence scores of the pool, IHVP given (most_negative, believable_helpful, clipped_influence)",
         lambda: ctx.influence_scores()),
    ]
    return [(what, seconds(fn, device)) for what, fn in steps]


# --------------------------------------------------------------------------------------------------------------------
# DAG projection


def finetune_conditions(config: dict[str, Any], n_external: int) -> list[int]:
    """Molecules added by each fine-tune condition of the workflow's grid (:func:`molinfluence.grid.grid`): k, or the
    whole pool for the strategies whose k is None. Each condition trains ``finetune.seeds`` runs."""
    conditions = grid(config["finetune"]["inits"], config["selection"]["strategies"], config["selection"]["k"])
    return [n_external if c.k is None else c.k for c in conditions]


# --------------------------------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="xl")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "lipophilicity.csv")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="768 training molecules, fewer timed steps")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-ihvp", action="store_true", help="do not run the default IHVP; print its upper-bound cost")
    p.add_argument("--concurrent", type=int, default=None,
                   help="training processes sharing the device (default: config.yaml's finetune.concurrent_seeds)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    reps = 2 if args.quick else 3
    timed_steps = 5 if args.quick else 20
    rows: list[tuple[str, str, str]] = []

    def row(what: str, value: str, kind: str = "measured") -> None:
        """One line of the table; ``kind`` says whether this run timed it (measured) or derived it (computed from
        step counts, projected from the measured rows)."""
        rows.append((what, value, kind))
        print(f"  {what}: {value} [{kind}]", file=sys.stderr, flush=True)

    tables, source = load_tables(args.data, args.quick)
    tokenizer = build_smiles_tokenizer(pd.concat([t["smiles"] for t in tables.values()]))
    base = build_model(args.size, tokenizer)
    enc = {k: encode_smiles(tokenizer, t["smiles"].tolist(), max_length=202) for k, t in tables.items()}
    labels = {k: torch.tensor(t["label"].to_numpy(np.float32)) for k, t in tables.items()}
    train_split = Batch(enc["train"].input_ids, enc["train"].attention_mask, labels["train"], name="train").to(device)
    val_split = Batch(enc["validation"].input_ids, enc["validation"].attention_mask, labels["validation"],
                      name="validation").to(device)
    n_train = len(train_split)
    lengths = np.array(train_split.token_counts())
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device_name}; torch {torch.__version__}; model: --size {args.size}, {sum(p.numel() for p in base.parameters()) / 1e6:.2f} M "
          f"parameters; data: {source}; training split {n_train} molecules, tokens mean {lengths.mean():.0f}, "
          f"95th percentile {np.percentile(lengths, 95):.0f}, max {lengths.max()}", flush=True)

    # 1. The project's step at batch 16/64, fp32/bf16.
    step_ms: dict[tuple[int, str], float] = {}
    for bs in (16, 64):
        batches = length_batches(train_split.token_counts(), bs, torch.Generator().manual_seed(1))
        for precision in ("fp32", "bf16"):
            steps = Steps(base, train_split, batches, TrainConfig(batch_size=bs, precision=precision), device)
            for _ in range(3):
                steps.step()
            k = min(timed_steps, len(batches))
            ms = 1e3 * seconds(lambda: [steps.step() for _ in range(k)], device, reps) / k
            steps.close()
            step_ms[bs, precision] = ms
            row(f"training step, batch {bs}, {precision} (project's train_step, batches padded to their longest)",
                f"{ms:.1f} ms ({bs / ms * 1e3:.0f} molecules/s)")

    # 2. Ops per step: project vs bare.
    batches16 = length_batches(train_split.token_counts(), 16, torch.Generator().manual_seed(1))
    cfg16 = TrainConfig(batch_size=16)
    for label, bare in (("project's step", False), ("bare PyTorch step", True)):
        steps = Steps(base, train_split, batches16, cfg16, device, bare=bare)
        leaf, kernels = ops_per_step(steps)
        steps.close()
        row(f"ops per step, batch 16, {label}",
            f"{leaf:.0f} dispatched compute ops" + (f", {kernels:.0f} CUDA kernels" if device.type == "cuda" else ""))

    # 3. One epoch: train_regressor vs a bare loop on the same batches (both with a validation pass).
    cfg = TrainConfig(epochs=1, batch_size=16, device=str(device), seed=0)
    epoch_batches = length_batches(train_split.token_counts(), 16, torch.Generator().manual_seed(cfg.seed * 100_003 + 1))
    ours_s = call_s = bare_s = wide_s = math.inf
    for _ in range(reps):  # alternate, best of each: neither side gets the warm caches alone
        model = copy.deepcopy(base)
        t0 = time.perf_counter()
        result = train_regressor(model, tokenizer, tables["train"], tables["validation"], cfg, progress=False,
                                 log=lambda _: None)
        call_s = min(call_s, time.perf_counter() - t0)
        ours_s = min(ours_s, float(result.history.seconds.iloc[0]))
        bare = Steps(base, train_split, epoch_batches, cfg, device, bare=True)
        bare_s = min(bare_s, seconds(lambda: (bare.epoch(), bare_eval(bare.model, val_split, device)), device))
    wide = Steps(base, train_split, epoch_batches, cfg, device, bare=True, pad_to=train_split.input_ids.shape[1])
    wide_s = seconds(lambda: (wide.epoch(), bare_eval(wide.model, val_split, device)), device)
    row("epoch through train_regressor (steps + validation), batch 16 fp32",
        f"{ours_s:.2f} s ({n_train / ours_s:.0f} molecules/s); whole call incl. tokenising {call_s:.2f} s")
    row("same epoch, bare PyTorch loop on the same batches", f"{bare_s:.2f} s ({n_train / bare_s:.0f} molecules/s)")
    row("  ratio train_regressor / bare", f"{ours_s / bare_s:.2f}")
    row(f"same bare loop, every batch padded to the split's longest ({train_split.input_ids.shape[1]}; the pre-issue-10 loop)",
        f"{wide_s:.2f} s; ratio to train_regressor {wide_s / ours_s:.2f}x")
    mol_per_s = n_train / ours_s

    # 4. Fixed cost of a fine-tune job.
    fixed_s = job_fixed_cost(base, tokenizer, device, 1 if args.quick else 2)
    row("fixed cost of a fine-tune job (new process: imports, device init, model load)", f"{fixed_s:.2f} s")

    # 4b. Several seeds training at once on this device (finetune.concurrent_seeds).
    config = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    n_concurrent = args.concurrent or config["finetune"]["concurrent_seeds"]
    speedup = 1.0
    if n_concurrent > 1:
        threads = torch.get_num_threads()
        one_s = concurrent_epochs(base, tokenizer, tables, device, 1, threads)
        many_s = concurrent_epochs(base, tokenizer, tables, device, n_concurrent, threads)
        speedup = n_concurrent * one_s / many_s
        row(f"{n_concurrent} seeds training at once (separate processes, one epoch each, {threads} thread(s) each)",
            f"{many_s:.2f} s vs {one_s:.2f} s for one: throughput {speedup:.2f}x one seed at a time")

    # 5. Influence: HVPs, IHVP projection, scoring.
    api = influence_api()
    inf_args = api["InfluenceArgs"].from_dict(config["influence"])
    trained = copy.deepcopy(model).to(device).eval()
    batch = {k: api["Batch"](enc[k].input_ids, enc[k].attention_mask, labels[k], name=k)
             for k in ("train", "validation", "external")}
    obj = api["SubsetObjective"](trained, inf_args.params, inf_args.torch_dtype)
    vec = torch.randn(obj.numel, generator=torch.Generator().manual_seed(0)).to(obj.device, obj.dtype)
    mini = batch["train"].subset(torch.randperm(n_train, generator=torch.Generator().manual_seed(0))[: inf_args.lissa.batch_size])

    def product(rows):
        return api["curvature_product"](obj, rows, vec, inf_args.curvature, inf_args.hvp_mode, inf_args.chunk_size)

    mini_s = seconds(lambda: product(mini), device, reps + 2)
    full_s = seconds(lambda: product(batch["train"]), device)
    what = f"{inf_args.curvature} product, params={inf_args.params}, chunks of {inf_args.chunk_size}"
    row(f"curvature-vector product on a mini-batch of {inf_args.lissa.batch_size} ({what})", f"{mini_s * 1e3:.0f} ms")
    row(f"curvature-vector product over the whole training split ({n_train} molecules)", f"{full_s:.2f} s")
    n_full = 3024 if args.quick else n_train  # project to the real split size
    scale = n_full / n_train
    if args.no_ihvp:
        # Upper bound of the default (CG): Lanczos on the subsample, every CG iteration, the gradient.
        ihvp_equiv = inf_args.spectrum.iters * min(inf_args.spectrum.samples, n_full) / n_full + inf_args.cg.iters + 1
        ihvp_s = ihvp_equiv * full_s * scale
        row("IHVP of config.yaml (upper bound, not run: --no-ihvp)",
            f"{ihvp_equiv:.1f} full-split product equivalents = {ihvp_s / 60:.1f} min", "projected")
    else:
        result = api["compute_ihvp"](trained, batch["train"], batch["validation"], inf_args, progress=False)
        st = result.stats
        ihvp_equiv = st["hvp_full_equivalents"] + st["other_full_equivalents"]
        ihvp_s = st["seconds"] * scale
        row(f"IHVP of config.yaml, run ({st['method']} on {st['curvature']}, {st['n_params']:,} parameters)",
            f"{st['seconds']:.1f} s on {n_train} molecules (projected {ihvp_s / 60:.1f} min at {n_full}); "
            f"hvp_full_equivalents {st['hvp_full_equivalents']:.1f} + {st['other_full_equivalents']:.1f} other; "
            f"relative residual {st.get('relative_residual', float('nan')):.2g}")
    row("  IHVP cost vs the pre-issue-11 default (LiSSA on H; its cost computed from step counts, not measured)",
        f"{ihvp_equiv:.1f} / {OLD_IHVP_EQUIVALENTS:.1f} full-split equivalents = {ihvp_equiv / OLD_IHVP_EQUIVALENTS:.2f}", "computed")
    ihvp = api["IHVPResult"](ihvp={n: torch.randn(s, generator=torch.Generator().manual_seed(1)).cpu()
                                   for n, s in zip(obj.names, obj.shapes)}, stats={}, args={})
    score_s = seconds(lambda: api["score_samples"](trained, ihvp, batch["external"], inf_args.scoring.batch_size), device, reps)
    row(f"scoring the external pool ({len(batch['external'])} molecules, batches of {inf_args.scoring.batch_size})", f"{score_s:.2f} s")

    # 5b. Each selector as rule rank_pool runs it: a fresh context, the precomputed IHVP given (issue 17 item 3).
    sel = config["selection"]
    given = ihvp if args.no_ihvp else result  # a random IHVP scores as fast as the real one
    ihvp_n_s = ihvp_equiv * full_s if args.no_ihvp else st["seconds"]  # the IHVP at this run's training split
    budget_s = ihvp_n_s + score_s
    budget_kind = "projected" if args.no_ihvp else "measured"
    n_pool = len(tables["external"])
    row(f"IHVP + scoring at this run's sizes ({n_train} training, {n_pool} pool molecules): the selectors' yardstick",
        f"{budget_s:.2f} s = {ihvp_n_s:.2f} s IHVP{' (its upper bound: --no-ihvp)' if args.no_ihvp else ''} + "
        f"{score_s:.2f} s scoring", budget_kind)

    def make_ctx(**options: Any) -> PoolContext:
        return selector_context(trained, tokenizer, tables, inf_args, given, config, device, **options)

    for what, part_s in shared_quantities(make_ctx, device):
        row(f"  shared: {what}", f"{part_s:.2f} s")
    rounds, tracin_epochs = sel["selectors"]["rounds"], sel["selectors"]["tracin_epochs"]
    selector_s: dict[str, float] = {}
    for name in SELECTORS:
        n_ranked = ranking_length(name, max(sel["k"]), n_pool)
        how, kind = "", "measured"
        if name == "adaptive_greedy" and rounds > 1 and (args.quick or args.no_ihvp):
            ctx = make_ctx(rounds=1)
            one_s = seconds(lambda: ranking(ctx, name, n_ranked), device)
            # Each further round: a Newton step and an IHVP on train + chosen (at most n_train + k rows), a re-scoring.
            grown = (n_train + n_ranked) / n_train
            selector_s[name] = one_s + (rounds - 1) * (2 * ihvp_n_s * grown + score_s)
            how, kind = (f"; 1 round measured ({one_s:.2f} s) + {rounds - 1} x (2 IHVPs on <= {n_train + n_ranked} rows "
                         f"+ a scoring) from the rows above"), "projected"
        else:
            ctx = make_ctx()
            selector_s[name] = seconds(lambda: ranking(ctx, name, n_ranked), device)
            if name == "tracin":
                how = (f"; its {tracin_epochs - 1} fine-tune epoch(s) are about {(tracin_epochs - 1) * call_s:.2f} s of it "
                       f"(the epoch row above), then {tracin_epochs} checkpoint(s) scored")
            elif name == "adaptive_greedy":
                how = f"; {rounds} rounds: {rounds - 1} Newton steps and {rounds - 1} IHVPs on train + chosen"
        ratio = selector_s[name] / budget_s
        row(f"selector {name}{' (selection.default)' if name == sel['default'] else ''}: ranks {n_ranked} pool rows, "
            f"fresh context, IHVP given",
            f"{selector_s[name]:.2f} s = {ratio:.2f}x IHVP + scoring: {'within' if ratio <= 2 else 'OVER'} the 2x budget"
            + how, "measured" if kind == budget_kind == "measured" else "projected")
    default_ratio = selector_s[sel["default"]] / budget_s
    row(f"recommended selector (selection.default: {sel['default']}) against the budget of 2x IHVP + scoring",
        f"{default_ratio:.2f}x: {'within' if default_ratio <= 2 else 'OVER'}", budget_kind)
    row("peak memory", peak_memory(device))

    # 6. Projection of config.yaml's DAG.
    n_ext = len(tables["external"])
    real_train = 3024 if args.quick else n_train

    def train_job(n: int, epochs: int) -> float:
        return fixed_s + epochs * n / mol_per_s

    base_s = train_job(real_train, config["train"]["epochs"])
    conditions = finetune_conditions(config, n_ext)
    seeds, ft_epochs = len(config["finetune"]["seeds"]), config["finetune"]["epochs"]
    epochs_s = seeds * sum(ft_epochs * (real_train + added) / mol_per_s for added in conditions)
    per_seed_jobs = epochs_s + len(conditions) * seeds * fixed_s
    per_condition_jobs = epochs_s + len(conditions) * fixed_s
    # n seeds at once: waves of n seeds, each wave taking n / speedup times one seed's time.
    workers = min(n_concurrent, seeds)
    concurrent_jobs = epochs_s / seeds * math.ceil(seeds / workers) * workers / speedup + len(conditions) * fixed_s
    ranked_jobs = [s for s in MODEL_RANKED if s in sel["strategies"] or s == sel["default"]]
    rank_s = sum(fixed_s + selector_s[s] * scale for s in ranked_jobs)  # scaled with the training split: an upper bound
    rest = base_s + ihvp_s + score_s + 2 * fixed_s + rank_s
    row("train_base (no early stop)", f"{base_s:.0f} s", "projected")
    row(f"rank_pool jobs of config.yaml ({', '.join(ranked_jobs) or 'none'}), at {real_train} training molecules",
        f"{rank_s:.0f} s", "projected")
    row(f"fine-tune grid: {len(conditions)} conditions x {seeds} seeds x {ft_epochs} epochs (no early stop)",
        f"{epochs_s / 60:.1f} min of epochs; + job starts: {per_seed_jobs / 60:.1f} min with one job per seed, "
        f"{per_condition_jobs / 60:.1f} min with one job per condition"
        + (f", {concurrent_jobs / 60:.1f} min with {workers} seeds at a time" if workers > 1 else ""), "projected")
    row("config.yaml DAG (train_base + IHVP + scoring + rank_pool + fine-tunes, one job at a time on this device)",
        f"{(rest + per_seed_jobs) / 60:.1f} min (job per seed), {(rest + per_condition_jobs) / 60:.1f} min (job per condition)"
        + (f", {(rest + concurrent_jobs) / 60:.1f} min (job per condition, {workers} seeds at a time)" if workers > 1 else ""),
        "projected")

    width = max(len(w) for w, _, _ in rows)
    print(f"\n{'what'.ljust(width)} | {'kind'.ljust(9)} | value")
    print(f"{'-' * width}-|-{'-' * 9}-|-{'-' * 40}")
    for what, value, kind in rows:
        print(f"{what.ljust(width)} | {kind.ljust(9)} | {value}")
    print("measured: timed in this run; computed: from step counts; projected: measured rows scaled to config.yaml")


if __name__ == "__main__":
    main()
