# Influence: s = (C + λI)⁻¹ v with C the Gauss–Newton matrix (influence.curvature; or the Hessian) of the mean training
# loss at the base model and v the gradient of the target-split loss (validation by default), then I(z) = -sᵀ∇L(z) for
# every external sample (batched JVPs).

INF_CODE = code("influence_ihvp")
SCORE_CODE = code("influence_scores")


rule influence_ihvp:
    input:
        model=rules.train_base.output.model,
        train=rules.prepare_data.output.train,
        target=f"{R}/data/{TARGET_SPLIT}.csv",
    output:
        ihvp=f"{R}/influence/hessian_inverse_fast.pt",
        stats=f"{R}/influence/ihvp_stats.json",
    params:
        py=PY,
        args=jarg(influence_options("influence_ihvp", INF)),
        target=TARGET_SPLIT,
        device=config["train"]["device"],
        truncation=TRUNCATION,
        script=script("influence_ihvp"),
        code=INF_CODE,
    threads: 1
    resources:
        gpu=1,
    conda:
        ENV
    log:
        f"{R}/logs/influence_ihvp.log",
    benchmark:
        f"{R}/benchmarks/influence_ihvp.tsv"
    shell:
        "{params.py:q} {params.script:q} --args {params.args:q} --model {input.model:q} --train {input.train:q}"
        " --target {input.target:q} --target-name {params.target} --device {params.device:q} --threads {threads} {params.truncation}"
        " --out {output.ihvp:q} --out-stats {output.stats:q} > {log:q} 2>&1"


rule influence_scores:
    input:
        ihvp=rules.influence_ihvp.output.ihvp,
        model=rules.train_base.output.model,
        external=rules.prepare_data.output.external,
    output:
        scores=f"{R}/influence/external_influence_scores.pt",
        table=f"{R}/influence/scores.csv",
        top=f"{R}/influence/top_influence.txt",
    params:
        py=PY,
        batch_size=INF["score_batch_size"],
        device=config["train"]["device"],
        truncation=TRUNCATION,
        script=script("influence_scores"),
        code=SCORE_CODE,
    threads: 1
    resources:
        gpu=1,
    conda:
        ENV
    log:
        f"{R}/logs/influence_scores.log",
    benchmark:
        f"{R}/benchmarks/influence_scores.tsv"
    shell:
        "{params.py:q} {params.script:q} --ihvp {input.ihvp:q} --model {input.model:q} --external {input.external:q}"
        " --batch-size {params.batch_size} --device {params.device:q} --threads {threads} {params.truncation}"
        " --out {output.scores:q} --out-table {output.table:q} --out-top {output.top:q} > {log:q} 2>&1"
