# Shared by every rule: config validation, where things live, and the code fingerprints that make an edit to a
# package module rerun exactly the rules that import it.

import json
import shlex
import sys

sys.path.insert(0, str(ROOT))  # the checkout's package, whatever is installed

from snakemake.exceptions import WorkflowError

from molinfluence.config import ConfigError, validate_config
from molinfluence.files import code_hash
from molinfluence.grid import CONTROLS, PER_SEED, RANKED, SCORED, WILDCARDS, Condition, choice, run_pattern, selection_pattern
from molinfluence.grid import MODEL_RANKED, NEEDS_IHVP, READS_IHVP, RECOMMENDED, ranking_pattern, score_files
from molinfluence.grid import grid as grid_of
from molinfluence.rule_keys import influence_options

try:
    validate_config(config)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

_external = config["data"]["external"].get("path")
if _external and not _external.startswith("pkg:") and not Path(_external).exists():
    raise WorkflowError(
        f"config key `data.external.path`: {_external} does not exist (relative paths are relative to the working "
        f"directory {Path.cwd()}). Put the external labelled CSV (columns {config['data']['external']['smiles_column']},"
        f" {config['data']['external']['label_column']}) there, or point to it: --config data='{{...}}' or your own --configfile."
    )

R = config["results"]
ENV = str(ROOT / "workflow" / "envs" / "molinfluence.yaml")
# With --sw-deployment-method conda a job runs inside the rule's environment: use its python. Otherwise the interpreter
# that runs snakemake (its environment has the package's dependencies).
PY = "python" if "conda" in {str(m).lower() for m in workflow.deployment_settings.deployment_method} else sys.executable


def script(name):
    return str(ROOT / "scripts" / f"{name}.py")


def code(script_name):
    """Content hash of a rule's script and every package module it imports, directly or through other modules (read
    from its imports: molinfluence.files.imported_modules), as a rule param.

    Snakemake's `code` trigger only sees a script's own mtime; a param that changes when an imported module changes
    makes an edit rerun exactly the rules whose script imports the edited module (and, through their outputs,
    everything downstream), without hand-kept module lists.
    """
    return code_hash(script(script_name), root=ROOT)[:16]


def job(script_name):
    """The params of every job that runs a script (spread in with **): the interpreter (py), the script and its code
    hash (code); the command then starts with {params.py:q} {params.script:q}."""
    return {"py": PY, "script": script(script_name), "code": code(script_name)}


def stage_log(stage, name):
    """The log file of a job, results/logs/<stage>/<name>.log (name may hold wildcards)."""
    return f"{R}/logs/{stage}/{name}.log"


def stage_benchmark(stage, name):
    """The benchmark file of a job, results/benchmarks/<stage>/<name>.tsv (name may hold wildcards)."""
    return f"{R}/benchmarks/{stage}/{name}.tsv"


def jarg(obj):
    """A config section as a canonical JSON argument (sorted keys: the same config always gives the same param)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


INF = config["influence"]
SEL = config["selection"]
FT = config["finetune"]
TARGET_SPLIT = INF["target"]
if TARGET_SPLIT == "test":
    print(
        "WARNING: influence.target is 'test': scores are computed against the test split, which the final metrics "
        "are also computed on. This reproduces the original report but leaks the test set into the selection.",
        file=sys.stderr,
    )

TRUNCATION = "" if config["model"]["truncation"] else "--no-truncation"


def grid():
    """Every fine-tuning condition (init, strategy, k) of the config, as molinfluence.grid.Condition (no seed)."""
    return grid_of(FT["inits"], SEL["strategies"], SEL["k"])


def finetune_runs():
    """Every run directory of the grid: each condition at each of finetune.seeds."""
    return [run.path(R) for condition in grid() for run in condition.runs(FT["seeds"])]


def all_targets():
    return [
        f"{R}/data/data_report.json",
        f"{R}/base/metrics.json",
        f"{R}/influence/hessian_inverse_fast.pt",
        f"{R}/influence/external_influence_scores.pt",
        f"{R}/metrics.csv",
        f"{R}/metrics.md",
        f"{R}/metrics_per_run.csv",
        f"{R}/{RECOMMENDED}",
        *figure_files(),
        *validation_files(),
        *group_files(),
        *audit_files(),
    ]


def validation_files():
    """The influence validation stage's summary outputs, in rule all only with validation.enabled (it retrains)."""
    if not config["validation"]["enabled"]:
        return []
    names = ("influence_validation.json", "influence_validation.png", "influence_validation_convex.png", "estimators.csv",
             "estimators.png")
    return [f"{R}/validation/{name}" for name in names]


def group_files():
    """The group validation's outputs, in rule all only with groups.enabled (it fine-tunes once per subset and seed)."""
    if not config["groups"]["enabled"]:
        return []
    return [f"{R}/groups/{name}" for name in ("group_validation.csv", "group_validation.md", "group_validation.png")]


def group_score_files():
    """What group validation correlates, selector -> its score table (molinfluence.grid.score_files)."""
    return score_files(R, SEL["strategies"], SEL["default"])


def audit_files():
    """The planted-label audit's outputs, in rule all only with audit.enabled (it trains a base model and fine-tunes)."""
    if not config["audit"]["enabled"]:
        return []
    return [f"{R}/audit/{name}" for name in ("audit.csv", "audit.md", "audit.png")]


# Input functions and helpers of the stage files (kept here: Snakemake's linter wants rules and functions apart).


def pretrained_inputs(wildcards):
    if config["model"]["source"] == "random":
        return [rules.prepare_data.output[s] for s in ("train", "validation", "test", "external")]
    return []


def train_args(epochs, seed):
    """The training recipe: config `train` with the model's token limit, these epochs and this seed (None: without
    a seed, for the fine-tuning jobs that set each run's seed themselves)."""
    model = config["model"]
    recipe = {**config["train"], "epochs": epochs, "seed": seed, "max_length": model["max_length"], "truncation": model["truncation"]}
    if seed is None:
        del recipe["seed"]
    return jarg(recipe)


def finetune_outputs():
    """A condition job's outputs: each seed's run files (and model directory with finetune.keep_models)."""
    files = {"metrics": "metrics.json", "predictions": "predictions.csv", "log": "train_log.csv"}
    outputs = {name: [f"{run_pattern(R, seed)}/{file}" for seed in FT["seeds"]] for name, file in files.items()}
    if FT["keep_models"]:
        outputs["model"] = [directory(f"{run_pattern(R, seed)}/model") for seed in FT["seeds"]]
    return outputs


def finetune_selections(w):
    """The selection files of a condition's seeds (one per seed for random, else one shared file)."""
    runs = Condition.from_wildcards(w).runs(FT["seeds"])
    return sorted({run.selection_path(R) for run in runs})


def finetune_start(w):
    return rules.train_base.output.model if w.init == "continue" else rules.pretrained_encoder.output[0]


def ranking_inputs(w):
    """The base model's IHVP, for the model-ranked selectors that score by influence."""
    return {"ihvp": f"{R}/influence/hessian_inverse_fast.pt"} if w.strategy in NEEDS_IHVP else {}


def ranking_args(w):
    """A selector's arguments, as a list the shell command quotes ({params.args:q}): only the config sections it reads
    (so an unrelated setting never reruns it)."""
    return selector_args(w.strategy, f"{R}/influence/hessian_inverse_fast.pt", NEEDS_IHVP)


def selector_args(strategy, ihvp, needs_ihvp):
    """rank_pool.py's arguments for one selector (ranking_args, and the audit's rank jobs): the selector options and
    seed; the IHVP file ``ihvp`` and the influence options for the selectors in ``needs_ihvp``; tracin's recipe."""
    args = ["--options", jarg(SEL["selectors"]), "--seed", str(SEL["seed"])]
    if strategy in needs_ihvp:
        args += ["--ihvp", ihvp]
    if strategy in needs_ihvp or strategy == "tracin":
        args += ["--influence", jarg(influence_options("rank_pool", INF))]
    if strategy == "tracin":
        args += ["--finetune", train_args(SEL["selectors"]["tracin_epochs"], SEL["seed"])]
    return args


def recommended_pool():
    """What selection.default ranks: its ranking (model-ranked selectors) or the influence scores."""
    if SEL["default"] in MODEL_RANKED:
        return ranking_pattern(R).format(strategy=SEL["default"])
    return f"{R}/influence/scores.csv"


def histogram_selections():
    """The score-ranked selections at the largest k, marked on the influence histogram."""
    pattern = selection_pattern(R, per_seed=False)
    return [pattern.format(strategy=s, k=max(SEL["k"])) for s in RANKED if s in SEL["strategies"]]


def validation_inputs(chosen=True):
    """The inputs of a validation job that starts from the base model (spread in with **): the model, the training
    split, the target split and (with chosen) the chosen samples."""
    inputs = {"model": rules.train_base.output.model, "train": rules.prepare_data.output.train,
              "target": f"{R}/data/{TARGET_SPLIT}.csv"}
    if chosen:
        inputs["chosen"] = rules.validate_choose.output[0]
    return inputs


def base_args(wildcards, input):
    """The arguments of a script that starts from the base model (molinfluence.cli.add_base_inputs), quoted: model,
    training and target splits, target name, device and truncation; the command adds --threads {threads}."""
    args = ["--model", input.model, "--train", input.train, "--target", input.target, "--target-name", TARGET_SPLIT,
            "--device", config["train"]["device"]]
    return shlex.join(args) + ("" if config["model"]["truncation"] else " --no-truncation")


def figure_files():
    return [f"{R}/figures/{name}.png" for name in ("rmse_vs_k", "training_curves", "influence_histogram", "pred_vs_true")]


wildcard_constraints:
    **WILDCARDS,


# -- the planted-label audit (audit.smk) -------------------------------------------------------------------------------

AUD = config["audit"]
AUD_DIR = f"{R}/audit"
AUD_ARMS = ("random", "oracle", *AUD["selectors"])


def audit_rank_inputs(w):
    """The audit base's IHVP, for the selectors that score by influence."""
    return {"ihvp": f"{AUD_DIR}/influence/hessian_inverse_fast.pt"} if w.selector in READS_IHVP else {}


def audit_rank_args(w):
    return selector_args(w.selector, f"{AUD_DIR}/influence/hessian_inverse_fast.pt", READS_IHVP)


def audit_arm_inputs(w):
    """A selector arm's ranking (random and oracle draw from the pool)."""
    return {"ranking": f"{AUD_DIR}/ranking/{w.arm}.csv"} if w.arm in AUD["selectors"] else {}


def audit_arm_args(w, input):
    return shlex.join(["--ranking", input.ranking]) if w.arm in AUD["selectors"] else ""


def audit_runs():
    return [f"{AUD_DIR}/finetune/{arm}_k{k}.csv" for arm in AUD_ARMS for k in sorted(AUD["k"])]
