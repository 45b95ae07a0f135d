# Selections of external samples. Score-based strategies read the influence scores; the controls (random, all, and
# the empty k = 0 selection) read only the external split, so changing influence settings never reruns them.

SELECT_CODE = code("select_samples")


rule select_scored:
    input:
        pool=f"{R}/influence/scores.csv",
    output:
        selection_pattern(R, per_seed=False),
    wildcard_constraints:
        strategy=choice(SCORED),
    params:
        py=PY,
        script=script("select_samples"),
        code=SELECT_CODE,
    conda:
        ENV
    log:
        f"{R}/logs/selection/{{strategy}}_k{{k}}.log",
    benchmark:
        f"{R}/benchmarks/selection/{{strategy}}_k{{k}}.tsv"
    shell:
        "{params.py:q} {params.script:q} --strategy {wildcards.strategy} --k {wildcards.k} --pool {input.pool:q}"
        " --out {output:q} > {log:q} 2>&1"


rule select_control:
    input:
        pool=rules.prepare_data.output.external,
    output:
        selection_pattern(R, per_seed=False),
    wildcard_constraints:
        strategy=choice(CONTROLS),
    params:
        py=PY,
        script=script("select_samples"),
        code=SELECT_CODE,
    conda:
        ENV
    log:
        f"{R}/logs/selection/{{strategy}}_k{{k}}.log",
    benchmark:
        f"{R}/benchmarks/selection/{{strategy}}_k{{k}}.tsv"
    shell:
        "{params.py:q} {params.script:q} --strategy {wildcards.strategy} --k {wildcards.k} --pool {input.pool:q}"
        " --out {output:q} > {log:q} 2>&1"


rule select_random:
    input:
        pool=rules.prepare_data.output.external,
    output:
        selection_pattern(R, per_seed=True),
    wildcard_constraints:
        strategy=choice(PER_SEED),
    params:
        py=PY,
        # one random subset per fine-tuning seed: the control's spread includes the luck of the draw
        seed=lambda w: 1000 * SEL["seed"] + int(w.seed),
        script=script("select_samples"),
        code=SELECT_CODE,
    conda:
        ENV
    log:
        f"{R}/logs/selection/{{strategy}}_k{{k}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/selection/{{strategy}}_k{{k}}_seed{{seed}}.tsv"
    shell:
        "{params.py:q} {params.script:q} --strategy {wildcards.strategy} --k {wildcards.k} --seed {params.seed} --pool {input.pool:q}"
        " --out {output:q} > {log:q} 2>&1"


# Model-ranked selectors (molinfluence.selectors): the base model ranks the pool once per selector; each selection is
# a prefix of that ranking. Only the selectors that score by influence read the IHVP, so an influence setting never
# reruns residual, knn_agreement or consensus.
RANK_CODE = code("rank_pool")


rule rank_pool:
    input:
        unpack(ranking_inputs),
        model=rules.train_base.output.model,
        train=rules.prepare_data.output.train,
        target=f"{R}/data/{TARGET_SPLIT}.csv",
        external=rules.prepare_data.output.external,
    output:
        ranking_pattern(R),
    wildcard_constraints:
        strategy=choice(MODEL_RANKED),
    params:
        py=PY,
        k=max(SEL["k"]),
        args=ranking_args,
        device=config["train"]["device"],
        script=script("rank_pool"),
        code=RANK_CODE,
    threads: 1
    resources:
        gpu=1,
    conda:
        ENV
    log:
        f"{R}/logs/selection/rank_{{strategy}}.log",
    benchmark:
        f"{R}/benchmarks/selection/rank_{{strategy}}.tsv"
    shell:
        "{params.py:q} {params.script:q} --selector {wildcards.strategy} --k {params.k} --model {input.model:q}"
        " --train {input.train:q} --target {input.target:q} --external {input.external:q} {params.args:q}"
        " --device {params.device:q} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule select_ranked:
    input:
        pool=ranking_pattern(R),
    output:
        selection_pattern(R, per_seed=False),
    wildcard_constraints:
        strategy=choice(MODEL_RANKED),
    params:
        py=PY,
        script=script("select_samples"),
        code=SELECT_CODE,
    conda:
        ENV
    log:
        f"{R}/logs/selection/{{strategy}}_k{{k}}.log",
    benchmark:
        f"{R}/benchmarks/selection/{{strategy}}_k{{k}}.tsv"
    shell:
        "{params.py:q} {params.script:q} --strategy {wildcards.strategy} --k {wildcards.k} --pool {input.pool:q}"
        " --out {output:q} > {log:q} 2>&1"


rule recommend:
    input:
        pool=recommended_pool(),
    output:
        f"{R}/{RECOMMENDED}",
    params:
        py=PY,
        strategy=SEL["default"],
        k=" ".join(str(k) for k in sorted(SEL["k"])),
        script=script("recommend"),
        code=code("recommend"),
    conda:
        ENV
    log:
        f"{R}/logs/selection/recommend.log",
    benchmark:
        f"{R}/benchmarks/selection/recommend.tsv"
    shell:
        "{params.py:q} {params.script:q} --strategy {params.strategy} --k {params.k} --pool {input.pool:q}"
        " --out {output:q} > {log:q} 2>&1"
