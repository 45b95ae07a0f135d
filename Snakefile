# MolInfluence: fine-tune MoLFormer on Lipophilicity, score an external set with influence functions (LiSSA IHVPs),
# add the most helpful samples, fine-tune again over seeds, and report whether it helped against matched controls.
#
#   snakemake --cores 1 --resources gpu=1                          # the real experiment (config.yaml)
#   snakemake --cores 2 --configfile examples/demo.yaml            # the offline CPU demo
#   snakemake -s <checkout>/Snakefile --directory <dir> --configfile <file>   # an experiment in its own folder
#
# Layout: config validation here, one workflow/rules/<stage>.smk per stage, thin scripts/<stage>.py CLIs over the
# importable molinfluence package.

from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

ROOT = Path(workflow.basedir)

# The real experiment is config.yaml next to this Snakefile, unless --configfile names another one. (A configfile:
# directive would merge both, so a demo config would silently inherit keys of the real one.)
if not workflow.overwrite_configfiles:
    configfile: str(ROOT / "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/influence.smk"
include: "workflow/rules/selection.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/validate.smk"
include: "workflow/rules/groups.smk"
include: "workflow/rules/audit.smk"


rule all:
    input:
        all_targets(),
    default_target: True
