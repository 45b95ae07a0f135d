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
