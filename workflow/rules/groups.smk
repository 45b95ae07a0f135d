# Group validation (optional, groups.enabled): the linear datamodeling score for additions. groups.subsets seeded random
# subsets of the external pool at each size of groups.k are each added to the training split and fine-tuned through
# the grid's own run (continue from the base model, the finetune recipe) at every seed of groups.seeds, against the
# same fine-tune without additions; every selector's prediction (its score summed over the subset) is correlated with
# the measured change of the target loss, with bootstrap intervals and the seeds' noise ceiling
# (molinfluence.validation.groups). One fine-tune job per subset size, one for the baselines.

GRP = config["groups"]
GROUP_DIR = f"{R}/groups"
GROUP_PARTS = ["baseline", *(f"k{k}" for k in sorted(GRP["k"]))]


localrules:
    group_subsets,
    group_summary,


rule group_subsets:
    input:
        external=rules.prepare_data.output.external,
    output:
        f"{GROUP_DIR}/subsets.csv",
    params:
        **job("group_subsets"),
        k=" ".join(str(k) for k in sorted(GRP["k"])),
        subsets=GRP["subsets"],
        seed=GRP["seed"],
    conda:
        ENV
    log:
        stage_log("groups", "subsets"),
    benchmark:
        stage_benchmark("groups", "subsets")
    shell:
        "{params.py:q} {params.script:q} --external {input.external:q} --k {params.k} --subsets {params.subsets}"
        " --seed {params.seed} --out {output:q} > {log:q} 2>&1"


rule group_finetune:
    input:
        start=rules.train_base.output.model,
        subsets=rules.group_subsets.output[0],
        train=rules.prepare_data.output.train,
        validation=rules.prepare_data.output.validation,
        test=rules.prepare_data.output.test,
        external=rules.prepare_data.output.external,
        target=f"{R}/data/{TARGET_SPLIT}.csv",
    output:
        f"{GROUP_DIR}/runs/{{part}}.csv",
    wildcard_constraints:
        part=r"baseline|k\d+",
    params:
        **job("group_finetune"),
        seeds=" ".join(str(s) for s in GRP["seeds"]),
        args=train_args(FT["epochs"], None),
        spec=jarg({k: config["model"][k] for k in ("pooling", "head_dropout", "max_length")}),
    threads: 1
    resources:
        gpu=1,
    conda:
        ENV
    log:
        stage_log("groups", "finetune_{part}"),
    benchmark:
        stage_benchmark("groups", "finetune_{part}")
    shell:
        "{params.py:q} {params.script:q} --part {wildcards.part} --subsets {input.subsets:q} --seeds {params.seeds}"
        " --args {params.args:q} --spec {params.spec:q} --start {input.start:q} --train {input.train:q}"
        " --validation {input.validation:q} --test {input.test:q} --external {input.external:q}"
        " --target {input.target:q} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule group_summary:
    input:
        subsets=rules.group_subsets.output[0],
        runs=expand(f"{GROUP_DIR}/runs/{{part}}.csv", part=GROUP_PARTS),
        scores=list(group_score_files().values()),
    output:
        table=report(f"{GROUP_DIR}/group_validation.csv", category="4. Group validation",
                     caption=str(REPORT / "group_validation.rst")),
        markdown=f"{GROUP_DIR}/group_validation.md",
        subsets=f"{GROUP_DIR}/effects.csv",
        plot=report(f"{GROUP_DIR}/group_validation.png", category="4. Group validation",
                    caption=str(REPORT / "group_validation.rst")),
    params:
        **job("group_summary"),
        scores=[f"{name}={path}" for name, path in group_score_files().items()],
        bootstrap=GRP["bootstrap"],
        seed=GRP["seed"],
        target=TARGET_SPLIT,
    conda:
        ENV
    log:
        stage_log("groups", "summary"),
    benchmark:
        stage_benchmark("groups", "summary")
    shell:
        "{params.py:q} {params.script:q} --subsets {input.subsets:q} --runs {input.runs:q} --scores {params.scores:q}"
        " --bootstrap {params.bootstrap} --seed {params.seed} --target-name {params.target}"
        " --out-table {output.table:q} --out-markdown {output.markdown:q} --out-subsets {output.subsets:q}"
        " --out-plot {output.plot:q} > {log:q} 2>&1"
